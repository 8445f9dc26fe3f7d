"""The engine seam: what the pipeline and the worker ask of an engine, and what it answers.

`CaptionEngine` (vLLM) implements `Engine`; so do the worker's `SharedEngine` (one engine fed by
several chunk threads) and the scale benchmark's `StandInEngine`. The pipeline and the worker are
typed against `Engine` alone.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

from captioner.errors import CaptionerError

if TYPE_CHECKING:
    import numpy as np

    from captioner.adapters import Adapter
    from captioner.config import Sampling
    from captioner.prompts import RenderedPrompt
    from captioner.sizing import EngineKV
    from captioner.tiers import TierProfile


class EngineError(CaptionerError):
    """The engine could not be built; the message says why."""


@dataclass
class Generation:
    """What the engine produced for one clip."""

    text: str
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    finish_reason: str | None
    error: str | None = None


@runtime_checkable
class Engine(Protocol):
    """A loaded captioning engine: one per process, serving one model with its adapters."""

    model: str
    profile: TierProfile
    adapters: list[Path]  # the adapter folders it serves, in the order it was built with
    kv: EngineKV | None  # the engine's own KV cache figures (None: it reports none)
    load_s: float

    def warm_prefix(self, prompt: RenderedPrompt, with_adapter: bool = True) -> None:
        """Compute the prompt's shared prefix once per adapter served (the base model's with `with_adapter=False`)."""
        ...

    def caption(
        self,
        videos: list[np.ndarray],
        prompt: RenderedPrompt,
        sampling: Sampling,
        adapters: Sequence[Adapter] | None = None,
    ) -> list[Generation]:
        """One generation per clip, each clip with its adapter (default: the engine's first; `BASE`: none)."""
        ...

    def shareable_prefix_tokens(self, prompt: RenderedPrompt) -> int:
        """Prefix tokens the cache can serve (whole KV blocks)."""
        ...


def engine_dead(exc: BaseException) -> bool:
    """True for vLLM's EngineDeadError: the engine must be rebuilt, retrying on it is useless."""
    # Without importing vLLM: if it was never imported, this cannot be its EngineDeadError.
    module = sys.modules.get("vllm.v1.engine.exceptions")
    return module is not None and isinstance(exc, module.EngineDeadError)
