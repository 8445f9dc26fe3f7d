"""The LoRA caption adapters a run captions with: named on the command line, resolved to folders with a hash.

A user names an adapter by folder, as `demo` (the demo checkpoint's) or as `none` (the base model
alone); `resolve_adapters` turns those references into `Adapter` values, checked, each with the hash
of its weights, so a retrained adapter in the same folder is another version of the captions.
Everything downstream (plan, engine, records) speaks `Adapter`, never a bare path or string.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from captioner.config import DEMO, Settings
from captioner.errors import ConfigError


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter a run captions with, or the base model (all fields None: `BASE`)."""

    path: Path | None = None
    name: str | None = None
    sha: str | None = None  # of the weights: a retrained adapter in the same folder is another version

    @property
    def is_base(self) -> bool:
        """True for the base model alone (no adapter)."""
        return self.path is None


BASE = Adapter()


def resolve_adapters(settings: Settings) -> tuple[Adapter, ...]:
    """`settings.adapter` then `settings.compare_adapters`, each checked; the same folder twice is refused."""
    adapters = tuple(resolve_adapter(ref, settings) for ref in [settings.adapter, *settings.compare_adapters])
    folders = [a.path for a in adapters]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"an adapter is named twice: {', '.join(str(f or 'none') for f in folders)}")
    return adapters


def resolve_adapter(ref: str | None, settings: Settings) -> Adapter:
    """The adapter a reference names (`none`/empty: the base model; `demo`: the demo checkpoint's)."""
    if ref is None or ref.strip().lower() in ("", "none"):
        return BASE
    if ref == DEMO:
        path, name = settings.demo_dir / "adapter", DEMO
    else:
        path = Path(ref).expanduser()
        name = path.resolve().name
    if not path.is_dir():
        raise ConfigError(f"{path}: adapter folder does not exist")
    weights = sorted(path.glob("adapter_model.*"))
    if not (path / "adapter_config.json").is_file() or not weights:
        raise ConfigError(f"{path}: not a PEFT LoRA adapter (needs adapter_config.json and adapter_model.*)")
    digest = hashlib.sha256()
    for weight in weights:
        with weight.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return Adapter(path.resolve(), name, digest.hexdigest()[:12])
