"""What a training run is given and what it reports: the configuration, the resolved job, the result, the error."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.frames import FrameSpec
from captioner.prompts import RenderedPrompt
from captioner.training.examples import DecodedSet, Pairing
from captioner.training.lora import Device

FRAMES_DIR = ".frames"  # decoded frames, inside the output folder while training


class TrainError(CaptionerError):
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
class TrainJob:
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
    started: float  # `time.perf_counter()` when `train` was called

    @property
    def validates(self) -> bool:
        """True when there are validation clips to score (else the last step's adapter is kept)."""
        return self.val_decoded is not None and bool(self.val_decoded.pairs)
