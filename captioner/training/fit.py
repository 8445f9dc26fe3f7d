"""The training loop: optimizer steps, validation at an epoch's end, checkpoints, the adapter, `training.json`."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable

from captioner.records import write_atomic
from captioner.training.checkpoints import CHECKPOINT_DIR, FitState, load_checkpoint, save_checkpoint, write_run
from captioner.training.document import TRAINING_FILE, training_document
from captioner.training.examples import Encoder, collate
from captioner.training.job import FRAMES_DIR, TrainError, TrainJob, TrainResult
from captioner.training.lora import add_lora, load_base, save_adapter
from captioner.training.validation import validate

log = logging.getLogger(__name__)


@dataclass
class _Loop:
    """The model being trained with its optimizer and schedule, and the shape of the run in steps."""

    model: Any
    optimizer: Any
    schedule: Any
    scaler: Any  # a gradient scaler for fp16, else None
    encoder: Encoder
    pad_id: int
    examples: list[tuple[int, str]]  # (clip index, reference)
    per_epoch: int  # steps
    total: int  # steps
    grad_ckpt: bool


def fit(job: TrainJob, resume: bool, on_step: Callable[[int, int, float], None] | None) -> TrainResult:
    """Train `job` from the start or its checkpoint to the last step; keep the adapter, write `training.json`."""
    loop = _prepare(job)
    state = _start(job, loop, resume)
    resumed_at = state.step
    clock = time.perf_counter()
    loop.model.train()
    while state.step < loop.total:
        loss = _step(job, loop, state.step)
        state.step += 1
        state.losses.append(round(loss, 5))
        if on_step:
            on_step(state.step, loop.total, state.losses[-1])
        epoch_end = state.step % loop.per_epoch == 0 or state.step == loop.total
        if epoch_end and job.validates and _validation_due(job, loop, state.step):
            _validate(job, loop, state)
        if state.step % job.config.save_every == 0 or epoch_end:
            state.seconds += time.perf_counter() - clock
            clock = time.perf_counter()
            save_checkpoint(job.out, loop.model, loop.optimizer, loop.schedule, state)
    state.seconds += time.perf_counter() - clock
    return _finish(job, loop, state, resumed_at)


def _prepare(job: TrainJob) -> _Loop:
    """The base model with a fresh LoRA, the optimizer and the warm-up + cosine schedule over every step."""
    import torch
    from transformers import AutoProcessor, get_cosine_schedule_with_warmup

    config, device = job.config, job.device
    processor = AutoProcessor.from_pretrained(job.model_dir)
    grad_ckpt = config.gradient_checkpointing if config.gradient_checkpointing is not None else device.name == "cuda"
    try:
        model = add_lora(load_base(job.model_dir, device, grad_ckpt), config.rank, config.alpha, config.dropout)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    per_clip = None if config.all_references else 1
    examples = [(i, ref) for i, pair in enumerate(job.decoded.pairs) for ref in pair.references[:per_clip]]
    per_epoch = math.ceil(len(examples) / config.batch)
    total = config.steps or per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(config.warmup * total), total)
    scaler = torch.amp.GradScaler("cuda") if device.autocast_fp16 else None
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    return _Loop(model, optimizer, schedule, scaler, Encoder(processor, job.prompt), pad_id, examples, per_epoch,
                 total, grad_ckpt)  # fmt: skip


def _start(job: TrainJob, loop: _Loop, resume: bool) -> FitState:
    """The checkpoint's state on a resume; else a fresh one, after writing what a resume must match."""
    if resume:
        state = load_checkpoint(job.out, loop.model, loop.optimizer, loop.schedule)
        log.info("resuming %s at step %d of %d", job.out, state.step, loop.total)
        return state
    write_run(job.out, job.config, job.model_dir, job.prompt.spec.identity(), job.digest, job.spec.num_frames)
    return FitState()


def _step(job: TrainJob, loop: _Loop, step: int) -> float:
    """One optimizer step on batch `step` (the data order is reshuffled per epoch from the seed); its loss."""
    import torch

    config, device = job.config, job.device
    epoch, position = divmod(step, loop.per_epoch)
    order = list(range(len(loop.examples)))
    random.Random(config.seed + epoch).shuffle(order)
    ids = order[position * config.batch : (position + 1) * config.batch]
    examples = [loop.encoder.example(job.decoded.frames(loop.examples[k][0]), loop.examples[k][1]) for k in ids]
    batch = {k: v.to(device.name) for k, v in collate(examples, loop.pad_id).items()}
    if device.name != "cpu" or device.dtype != "float32":
        batch["pixel_values_videos"] = batch["pixel_values_videos"].to(getattr(torch, device.dtype))
    with torch.autocast("cuda", dtype=torch.float16, enabled=device.autocast_fp16):
        loss = loop.model(**batch).loss
    if loop.scaler:
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
    else:
        loss.backward()
        loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.schedule.step()
    return float(loss.detach())


def _validation_due(job: TrainJob, loop: _Loop, step: int) -> bool:
    """After the last step, and every `validate_every` epochs (0: only after the last step)."""
    every = job.config.validate_every * loop.per_epoch
    return step == loop.total or (every > 0 and step % every == 0)


def _validate(job: TrainJob, loop: _Loop, state: FitState) -> None:
    """Score the validation clips; the adapter with the best METEOR so far is the one kept in the output."""
    assert job.val_decoded is not None
    score = validate(loop.model, loop.encoder, job.val_decoded, job.device)
    state.validation.append({"step": state.step, "epoch": math.ceil(state.step / loop.per_epoch), **score})
    log.info("step %d: validation METEOR %.4f", state.step, score["meteor"])
    if state.best_meteor is None or score["meteor"] > state.best_meteor:
        state.best_meteor = score["meteor"]
        save_adapter(loop.model, job.out, job.model_dir)
    loop.model.train()


def _finish(job: TrainJob, loop: _Loop, state: FitState, resumed_at: int) -> TrainResult:
    """Keep the last step's adapter when nothing was validated, write `training.json`, drop the working files."""
    out = job.out
    if not job.validates:
        save_adapter(loop.model, out, job.model_dir)
    document = training_document(job, loop.grad_ckpt, loop.per_epoch, state, resumed_at)
    write_atomic(out / TRAINING_FILE, json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    shutil.rmtree(out / FRAMES_DIR, ignore_errors=True)
    return TrainResult(
        out=out,
        steps=state.step,
        final_loss=state.losses[-1] if state.losses else None,
        best_meteor=state.best_meteor,
        seconds=document["seconds"]["total"],
        document=document,
    )
