"""`captioner train`: fit a LoRA caption adapter on labelled clips, resumable, with validation METEOR.

Layout of the output folder:

- `adapter_config.json`, `adapter_model.safetensors`: the adapter (`captioner run --adapter OUT`);
  with validation data, the epoch with the best METEOR, else the last step's;
- `training.json`: what made it (base model, data, prompt, frames, hyper-parameters, losses, scores,
  library versions, seconds);
- while training: `checkpoint/` (adapter, optimizer and schedule, replaced atomically) and `.frames/`
  (decoded frames); both are removed when training ends.

Here the inputs are checked and resolved and the clips decoded; `fit` runs the loop.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from captioner.config import Settings
from captioner.errors import ConfigError
from captioner.evaluation.references import InputError, load_references
from captioner.frames import FrameSpec
from captioner.prompts import RenderedPrompt
from captioner.sources import discover
from captioner.training.checkpoints import CHECKPOINT_DIR, check_same_run, has_checkpoint, saved_config
from captioner.training.document import TRAINING_FILE
from captioner.training.examples import DecodedSet, Pairing, data_hash, decode_pairs, pair_videos
from captioner.training.fit import fit
from captioner.training.job import FRAMES_DIR, TrainConfig, TrainError, TrainJob, TrainResult
from captioner.training.lora import pick_device

log = logging.getLogger(__name__)


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse an output folder training must not write into (`TrainError`, nothing written)."""
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out}: --out is a file, not a folder")
    if resume:
        if not has_checkpoint(out):
            finished = (out / TRAINING_FILE).is_file()
            raise TrainError(
                f"{out}: nothing to resume: " + ("its training finished" if finished else f"no {CHECKPOINT_DIR}/ in it")
            )
        return
    if has_checkpoint(out):
        raise TrainError(f"{out}: holds an unfinished training run ({CHECKPOINT_DIR}/); pass --resume to continue it")
    if (out / TRAINING_FILE).is_file():
        raise TrainError(f"{out}: holds a trained adapter ({TRAINING_FILE}); choose another --out")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
            raise TrainError(f"{out}: folder holds other files ({shown}); training writes into a new or empty folder")


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
    started = time.perf_counter()
    out = Path(config.out)
    check_out_dir(out, resume)
    if resume:
        config = saved_config(out)
    model_dir, prompt, spec = _model_inputs(settings)
    pairing, val_pairing = _pairings(config)
    digest = data_hash(pairing.pairs)
    if resume:
        check_same_run(out, {"data_hash": digest, "model": model_dir, "prompt": prompt.spec.identity(),
                             "frames": spec.num_frames})  # fmt: skip
    decoded, val_decoded = _decode(out, config, settings, spec, pairing, val_pairing)
    job = TrainJob(config, settings, out, model_dir, prompt, spec, pairing, val_pairing, digest, decoded, val_decoded,
                   pick_device(config.device), started)  # fmt: skip
    return _fit_on_every_core(job, resume, on_step)


def _model_inputs(settings: Settings) -> tuple[str, RenderedPrompt, FrameSpec]:
    """The base model's folder, the rendered prompt and the frames it trains on, as `captioner run` would use them."""
    from captioner.planning import frame_spec_for, model_facts
    from captioner.tiers import resolve_profile

    try:
        model_dir, hf_config, prompt, _ = model_facts(settings)
    except ConfigError as exc:
        raise TrainError(str(exc)) from None
    if getattr(hf_config, "model_type", None) != "llava_next_video":
        raise TrainError(f"{model_dir}: not a LLaVA-NeXT-Video checkpoint (model_type {hf_config.model_type!r})")
    frames = settings.frames or resolve_profile(settings.tier, settings.profile).frames
    return model_dir, prompt, frame_spec_for(settings, frames, hf_config.vision_config.image_size)


def _pairings(config: TrainConfig) -> tuple[Pairing, Pairing | None]:
    """The training pairs and the validation pairs (None without validation references), unmatched ones warned of."""
    pairing = _pairing(config.refs, config.videos, "training")
    val_pairing = None
    if config.val_refs is not None:
        val_pairing = _pairing(config.val_refs, config.val_videos or config.videos, "validation")
    for label, p in (("training", pairing), ("validation", val_pairing)):
        if p is not None and (p.videos_without_refs or p.refs_without_videos):
            log.warning("%s data: %s", label, p.describe())
    return pairing, val_pairing


def _pairing(refs_path: Path, folders: list[Path], what: str) -> Pairing:
    """References and videos of one data set, matched; `TrainError` when nothing can be trained on."""
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


def _decode(
    out: Path, config: TrainConfig, settings: Settings, spec: FrameSpec, pairing: Pairing, val_pairing: Pairing | None
) -> tuple[DecodedSet, DecodedSet | None]:
    """Decode the clips once into the output folder's `.frames/`; `TrainError` (and no new folder) when none decode."""
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
    return decoded, val_decoded


def _fit_on_every_core(job: TrainJob, resume: bool, on_step: Callable[[int, int, float], None] | None) -> TrainResult:
    """`fit` with the seed set and, on the CPU, torch on every core (restored afterwards)."""
    import torch

    torch.manual_seed(job.config.seed)
    threads = torch.get_num_threads()
    if job.device.name == "cpu":
        # compat.apply() sets 1 thread for in-process vLLM serving; training wants every core.
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        return fit(job, resume, on_step)
    finally:
        torch.set_num_threads(threads)
