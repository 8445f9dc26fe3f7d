"""The checkpoint of an unfinished training run: what a resume must match, and the state it goes on from.

`checkpoint/run.json` is written before the first step (configuration, model, prompt, data hash,
frames); `checkpoint/state.pt` holds the adapter, optimizer, schedule and counters, replaced
atomically every `save_every` steps and at every epoch's end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from captioner.records import write_atomic
from captioner.training.job import TrainConfig, TrainError
from captioner.training.lora import load_lora_state, lora_state

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
RUN_FILE = "run.json"


@dataclass
class FitState:
    """What a checkpoint restores besides the adapter weights."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    best_meteor: float | None = None
    seconds: float = 0.0


def has_checkpoint(out: Path) -> bool:
    """True when `out` holds an unfinished run that `--resume` can continue."""
    return (out / CHECKPOINT_DIR / STATE_FILE).is_file()


def write_run(out: Path, config: TrainConfig, model_dir: str, prompt: dict[str, Any], digest: str, frames: int) -> None:
    """What a resume must match (and reuse), written before the first step."""
    run = {"config": config.to_json(), "model": model_dir, "prompt": prompt, "data_hash": digest, "frames": frames}
    write_atomic(out / CHECKPOINT_DIR / RUN_FILE, json.dumps(run, ensure_ascii=False, indent=2) + "\n")


def _saved_run(out: Path) -> dict[str, Any]:
    return json.loads((out / CHECKPOINT_DIR / RUN_FILE).read_text())


def saved_config(out: Path) -> TrainConfig:
    """The configuration a checkpoint was started with: a resumed run goes on as it began."""
    saved = _saved_run(out)["config"]
    for key in ("refs", "out", "val_refs"):
        saved[key] = Path(saved[key]) if saved[key] is not None else None
    saved["videos"] = [Path(p) for p in saved["videos"]]
    saved["val_videos"] = [Path(p) for p in saved["val_videos"]]
    saved["out"] = out
    return TrainConfig(**saved)


def check_same_run(out: Path, now: dict[str, Any]) -> None:
    """Refuse to resume when the data hash, model, prompt or frames (`now`) differ from the checkpoint's."""
    saved = _saved_run(out)
    changed = [key for key, value in now.items() if saved.get(key) != value]
    if changed:
        raise TrainError(f"{out}: the checkpoint was made with another {', '.join(changed)}; start a new --out")


def save_checkpoint(out: Path, model: Any, optimizer: Any, schedule: Any, state: FitState) -> None:
    """Adapter, optimizer, schedule and counters in one file, replaced atomically."""
    import torch

    payload = {
        "adapter": lora_state(model),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "state": asdict(state),
        "torch_rng": torch.get_rng_state(),
    }
    write_atomic(out / CHECKPOINT_DIR / STATE_FILE, lambda f: torch.save(payload, f))


def load_checkpoint(out: Path, model: Any, optimizer: Any, schedule: Any) -> FitState:
    """Restore the adapter, optimizer, schedule and random state of the checkpoint; return its counters."""
    import torch

    payload = torch.load(out / CHECKPOINT_DIR / STATE_FILE, weights_only=False)
    load_lora_state(model, payload["adapter"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    torch.set_rng_state(payload["torch_rng"])
    return FitState(**payload["state"])
