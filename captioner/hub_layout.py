"""The key layout of the hub's LLaVA-NeXT-Video checkpoints, which vLLM reads.

transformers 5 names the CLIP tower's weights "model.vision_tower.embeddings..."; the hub
checkpoints (and vLLM) use "model.vision_tower.vision_model.embeddings...". The checkpoints this
project writes (the demo base, the quantized checkpoint) keep the hub's names.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["hub_key", "uses_hub_layout"]

VISION_PREFIX = "model.vision_tower."
HUB_VISION_PREFIX = VISION_PREFIX + "vision_model."


def hub_key(key: str) -> str:
    """`key` of a transformers 5 state dict, as the hub checkpoints name it."""
    if key.startswith(VISION_PREFIX) and not key.startswith(HUB_VISION_PREFIX):
        return HUB_VISION_PREFIX + key[len(VISION_PREFIX) :]
    return key


def uses_hub_layout(keys: Iterable[str]) -> bool:
    """Whether the tensor names `keys` of a checkpoint name the vision tower as the hub does."""
    return any(key.startswith(HUB_VISION_PREFIX) for key in keys)
