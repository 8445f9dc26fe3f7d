"""`captioner train`, `demo-model`, `quantize`: making and preparing the model and its adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from captioner.cli.common import app, echo_json, fail, settings_from, setup_logging, show

if TYPE_CHECKING:
    from captioner.training import TrainResult


@app.command("train")
def train_(
    video_dirs: list[Path] = typer.Argument(..., help="Folders of the training clips (searched recursively)."),
    refs: Path = typer.Option(..., help="References: JSONL, CSV or a folder of AI-Hub labels (as `captioner eval`)."),
    out: Path = typer.Option(..., "--out", "-o", help="New (or empty) folder for the adapter and training.json."),
    model: Optional[str] = typer.Option(None, help="Base model folder or hub id; 'demo' = built-in demo checkpoint."),
    prompt: Optional[str] = typer.Option(None, help="Prompt name (or name@version) the adapter will serve with."),
    tier: Optional[str] = typer.Option(None, help="Tier whose frames per clip to train with (auto|cpu|t4|...)."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the tier's)."),
    rank: int = typer.Option(16, help="LoRA rank."),
    alpha: float = typer.Option(32.0, help="LoRA alpha (scale = alpha / rank)."),
    dropout: float = typer.Option(0.05, help="LoRA dropout."),
    lr: float = typer.Option(2e-4, help="Peak learning rate (cosine schedule with warm-up)."),
    epochs: int = typer.Option(3, help="Passes over the data (ignored with --steps)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps in all (overrides --epochs)."),
    batch: int = typer.Option(1, help="Clips per optimizer step."),
    all_references: bool = typer.Option(False, help="One example per reference (default: each clip's first)."),
    val_refs: Optional[Path] = typer.Option(None, help="Validation references: METEOR after every epoch."),
    val_videos: Optional[list[Path]] = typer.Option(None, help="Folder of the validation clips (default: VIDEO_DIRS)."),
    save_every: int = typer.Option(50, help="Steps between checkpoints (and at every epoch's end)."),
    validate_every: int = typer.Option(1, help="Epochs between validations (0: only after the last step)."),
    seed: int = typer.Option(0, help="Seed of the LoRA initialisation and the data order."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    gradient_checkpointing: Optional[bool] = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Default: on for CUDA."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out from its checkpoint."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress."),
) -> None:
    """Train the LoRA caption adapter on labelled clips with the frames, prompt and tokens `captioner run` uses.

    Exit status: 0 trained, 2 bad input (nothing written). stdout carries a summary JSON.
    """
    from captioner.training import TrainConfig, TrainError, train

    setup_logging(verbose)
    settings = settings_from(model=model, prompt=prompt, tier=tier, frames=frames)
    config = TrainConfig(
        refs=refs, videos=video_dirs, out=out, val_refs=val_refs, val_videos=val_videos or [], rank=rank,
        alpha=alpha, dropout=dropout, lr=lr, epochs=epochs, steps=steps, batch=batch, all_references=all_references,
        save_every=save_every, validate_every=validate_every, seed=seed, device=device,
        gradient_checkpointing=gradient_checkpointing,
    )  # fmt: skip
    bar, on_step = _progress_bar()
    try:
        result = train(config, settings, resume=resume, on_step=on_step)
    except TrainError as exc:
        bar.close()
        fail(str(exc))
    bar.close()
    echo_json(_train_summary(result), indent=2)


def _progress_bar() -> tuple[Any, Callable[[int, int, float], None]]:
    """A tqdm bar on stderr and the `on_step(step, total, loss)` that moves it."""
    from tqdm import tqdm

    # Redirected to a file, a line every 30 s rather than a redraw every step.
    bar = tqdm(desc="training", unit="step", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.2 if sys.stderr.isatty() else 30)

    def on_step(step: int, total: int, loss: float) -> None:
        bar.total = total
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(step - bar.n)

    return bar, on_step


def _train_summary(result: TrainResult) -> dict[str, Any]:
    """What `captioner train` prints on stdout: where the adapter is, its losses, METEOR, clips and seconds."""
    doc = result.document
    return {
        "adapter": str(result.out), "steps": result.steps, "loss_first": doc["loss"]["first"],
        "loss_last": doc["loss"]["last"], "best_validation_meteor": result.best_meteor,
        "clips": doc["data"]["clips"], "skipped": len(doc["data"]["skipped"]), "seconds": result.seconds,
    }  # fmt: skip


@app.command("demo-model")
def demo_model(
    directory: Path = typer.Argument(..., help="Folder to write base/ and adapter/ into."),
    seed: int = typer.Option(0, help="Seed of the random weights and of the adapter's training."),
    train_adapter: bool = typer.Option(
        True, "--train/--no-train", help="Train the adapter on synthetic scenes (default), or write a random one."
    ),
) -> None:
    """Build the demo checkpoint: a small random-weight LLaVA-NeXT-Video and a LoRA adapter trained to caption
    synthetic scenes (about two minutes on 2 CPU cores)."""
    from captioner.demo import DEMO_STAMP, build_demo_model

    setup_logging(False)
    base, adapter = build_demo_model(directory, seed=seed, train_adapter=train_adapter)
    built = json.loads((Path(directory) / DEMO_STAMP).read_text())
    typer.echo(f"base model: {show(base)}\nadapter:    {show(adapter)} ({show(built['adapter'])})")
    if built.get("heldout_meteor") is not None:
        typer.echo(f"held-out METEOR {built['heldout_meteor']:.4f}, trained in {built['train_seconds']:.0f} s")


@app.command("quantize")
def quantize_(
    model: str = typer.Option(..., help="Unquantized LLaVA-NeXT-Video checkpoint folder; 'demo' = the demo one."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the AWQ checkpoint (new, or empty)."),
    adapter: Optional[str] = typer.Option(None, help="LoRA adapter folder merged first; 'demo' = the demo adapter."),
    calibration: Optional[list[Path]] = typer.Option(
        None,
        "--calibration",
        help="More calibration text: captions.jsonl or an output folder, or references (JSONL, CSV, AI-Hub folder).",
    ),
    prompt: str = typer.Option("detailed-ko", help="Prompt the calibration captions follow, as when captioning."),
    dtype: str = typer.Option("auto", help="Working precision: auto (float16 on GPU, float32 on CPU), bfloat16..."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress."),
) -> None:
    """Merge the LoRA adapter and quantize the language model to 4-bit AWQ (the t4/l4 tiers' checkpoint).

    Prints the figures as JSON: layers quantized, sizes before/after, reconstruction error, calibration used.
    """
    from captioner.config import DEMO
    from captioner.quantize import QuantizeError, quantize as quantize_checkpoint

    setup_logging(verbose)
    if DEMO in (model, adapter):
        from captioner.demo import ensure_demo_model

        demo_base, demo_adapter = ensure_demo_model(settings_from().demo_dir)
    try:
        result = quantize_checkpoint(
            demo_base if model == DEMO else Path(model),
            out,
            adapter=None if adapter is None else demo_adapter if adapter == DEMO else Path(adapter),
            calibration=calibration or [],
            prompt=prompt,
            dtype=dtype,
        )
    except QuantizeError as exc:
        fail(str(exc))
    echo_json(result.to_dict(), indent=2)


# --- the service: worker, submit, status, cancel, beat (README "Running as a service") ---------------
