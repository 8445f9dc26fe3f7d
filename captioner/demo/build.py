"""The demo model folder: the random-weight base and its adapter, and the stamp saying what was built."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from captioner.demo.adapter import DEFAULT_TRAINING, DemoTraining, train_demo_adapter

__all__ = ["DEMO_STAMP", "DEMO_VERSION", "build_demo_model", "ensure_demo_model"]

log = logging.getLogger(__name__)

DEMO_STAMP = "demo.json"  # what was built: the version of this recipe, and whether the adapter was trained
DEMO_VERSION = 2  # 2: the adapter is trained on synthetic scenes (1: random adapter)


def ensure_demo_model(out_dir: Path) -> tuple[Path, Path]:
    """`build_demo_model(out_dir)` unless this version was built there already; returns ``(base_dir, adapter_dir)``.

    A folder built by an older recipe (or interrupted) is built again.
    """
    out_dir = Path(out_dir)
    stamp = out_dir / DEMO_STAMP
    built = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if built.get("version") != DEMO_VERSION or not (out_dir / "base" / "config.json").exists():
        log.warning("building the demo checkpoint and training its adapter in %s", out_dir)
        return build_demo_model(out_dir)
    return out_dir / "base", out_dir / "adapter"


def build_demo_model(
    out_dir: Path, seed: int = 0, train_adapter: bool = True, training: DemoTraining = DEFAULT_TRAINING
) -> tuple[Path, Path]:
    """Write a tiny LLaVA-NeXT-Video checkpoint and a LoRA adapter for it.

    ``out_dir/"base"`` holds the random-weight checkpoint (`checkpoint.write_base`: config,
    weights in the hub key layout vLLM loads, the BPE tokenizer and chat template, the processor).

    ``out_dir/"adapter"`` holds the demo's PEFT LoRA adapter: trained by `captioner train`'s code on
    synthetic clips (`train_demo_adapter`), so the demo captions what it sees; with
    ``train_adapter=False`` a random one (r=8, q_proj/v_proj, random non-zero B) that only changes
    outputs, which is what tests that need no meaningful caption use. Returns ``(base_dir, adapter_dir)``.
    """
    # Imported here: torch and transformers take seconds to import, and the processes that only
    # draw clips (`captioner.demo.scenes`, e.g. `_draw`'s workers) import this package too.
    from captioner.demo.checkpoint import write_base, write_random_adapter

    out_dir = Path(out_dir)
    base_dir, adapter_dir = out_dir / "base", out_dir / "adapter"
    (out_dir / DEMO_STAMP).unlink(missing_ok=True)
    base_dir.mkdir(parents=True, exist_ok=True)
    model, generator = write_base(base_dir, seed)
    stamp: dict[str, object] = {"version": DEMO_VERSION, "seed": seed}
    if train_adapter:
        result = train_demo_adapter(base_dir, adapter_dir, training, seed=seed)
        stamp.update(adapter="trained", heldout_meteor=result.best_meteor, train_seconds=result.seconds)
    else:
        shutil.rmtree(adapter_dir, ignore_errors=True)
        adapter_dir.mkdir(parents=True)
        write_random_adapter(model, adapter_dir, base_dir, generator)
        stamp["adapter"] = "random"
    (out_dir / DEMO_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return base_dir, adapter_dir
