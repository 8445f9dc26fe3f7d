"""How many clips fit in flight: the KV cache arithmetic behind a tier's concurrency.

Pure functions of a model's `config.json` (as a dict), a tier profile and the request shape;
nothing here loads weights, imports vLLM or touches a device.

A clip is one request of `frames x tokens_per_frame + text` prompt tokens plus up to `max_tokens`
caption tokens, and vLLM keeps its KV cache, in whole blocks of `block_size` tokens, until the
caption ends. Every token costs `2 (K and V) x layers x kv_heads x head_dim x dtype bytes` in every
layer's cache (LLaVA-NeXT-Video-7B: 2 x 32 x 32 x 128 x 2 = 0.5 MiB). The cache is

- `kv_cache_gib` when the profile sets it (the CPU tier: vLLM then allocates exactly that), or
- `memory x gpu_memory_utilization - weights - activations - overhead` on a GPU, which is how vLLM
  sizes it: it profiles one forward pass of `max_num_batched_tokens` tokens and gives the KV cache
  what is left of its share of the device.

Clips that fit = cache blocks // blocks per clip. More clips in flight than that make vLLM
preempt requests and recompute their prefill, so `max_num_seqs` and the batch are derived from it
(capped by the tier's `max_clips`), unless a profile or an override sets them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from captioner.errors import CaptionerError
from captioner.prompts import frame_tokens
from captioner.tiers import TierProfile

GIB = 2**30
# Bytes per element of the dtypes a profile may name ("auto": the checkpoint's).
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "half": 2, "float16": 2}
# vLLM's block size when the profile leaves it unset (CUDA attention backends: 16; CPU: 128).
DEFAULT_BLOCK_SIZE = {"cuda": 16, "cpu": 128}
# What `captioner quantize` writes (README "Quantizing for T4/L4"), assumed when a profile expects
# AWQ but the config at hand is not quantized (planning a tier from the unquantized config).
AWQ_BITS, AWQ_GROUP = 4, 128
# The reported and the computed concurrency count as agreeing within this share of the computed one.
AGREE_WITHIN = 0.2


class SizingError(CaptionerError, ValueError):
    """The config lacks what the arithmetic needs; the message says what."""


@dataclass(frozen=True)
class ModelShape:
    """What the sizing reads from a LLaVA-NeXT-Video config: the language model, vision tower, frame cost."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    vision_layers: int
    vision_hidden: int
    vision_intermediate: int
    image_size: int
    patch_size: int
    frame_tokens: int
    dtype: str  # of the checkpoint: what dtype "auto" means
    quant_method: str | None = None
    quant_bits: int | None = None
    quant_group: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read a LLaVA-NeXT-Video `config.json` dict (also `PretrainedConfig.to_dict()`)."""
        text, vision = config.get("text_config"), config.get("vision_config")
        if not isinstance(text, Mapping) or not isinstance(vision, Mapping):
            raise SizingError("the config has no text_config and vision_config (not a LLaVA-NeXT-Video config)")
        try:
            hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
            quant = config.get("quantization_config") or text.get("quantization_config") or {}
            return cls(
                layers=int(text["num_hidden_layers"]),
                hidden=hidden,
                heads=heads,
                kv_heads=int(text.get("num_key_value_heads") or heads),  # None/absent: no grouped-query attention
                head_dim=int(text.get("head_dim") or hidden // heads),
                intermediate=int(text["intermediate_size"]),
                vocab=int(text["vocab_size"]),
                tied_embeddings=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
                vision_layers=int(vision["num_hidden_layers"]),
                vision_hidden=int(vision["hidden_size"]),
                vision_intermediate=int(vision["intermediate_size"]),
                image_size=int(vision["image_size"]),
                patch_size=int(vision["patch_size"]),
                frame_tokens=frame_tokens(
                    int(vision["image_size"]), int(vision["patch_size"]), int(config.get("spatial_pool_stride", 2))
                ),
                dtype=str(
                    config.get("dtype") or config.get("torch_dtype") or text.get("dtype")
                    or text.get("torch_dtype") or "float32"
                ).removeprefix("torch."),
                quant_method=quant.get("quant_method"),
                quant_bits=quant.get("bits") or quant.get("w_bit"),
                quant_group=quant.get("group_size") or quant.get("q_group_size"),
            )  # fmt: skip
        except KeyError as exc:
            raise SizingError(f"the config lacks {exc.args[0]}, which the KV cache arithmetic needs") from None


def dtype_bytes(dtype: str, shape: ModelShape) -> int:
    """Bytes per element of a profile's dtype; "auto" is the checkpoint's."""
    name = shape.dtype if dtype == "auto" else dtype
    if name not in DTYPE_BYTES:
        raise SizingError(f"unknown dtype {name!r} (known: {', '.join(DTYPE_BYTES)})")
    return DTYPE_BYTES[name]


def kv_bytes_per_token(shape: ModelShape, element_bytes: int) -> int:
    """KV cache bytes one token holds across all layers: K and V, every KV head."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * element_bytes


def language_linear_params(shape: ModelShape) -> int:
    """Parameters of the language model's linear layers (attention and MLP): what AWQ quantizes."""
    attention = shape.hidden * shape.head_dim * (2 * shape.heads + 2 * shape.kv_heads)  # q, o; k, v
    mlp = 3 * shape.hidden * shape.intermediate  # gate, up, down
    return shape.layers * (attention + mlp)


def other_params(shape: ModelShape) -> int:
    """Everything else, kept in the activation dtype: embeddings, lm_head, norms, CLIP tower, projector."""
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)
    norms = (2 * shape.layers + 1) * shape.hidden
    vh, vi = shape.vision_hidden, shape.vision_intermediate
    patches = (shape.image_size // shape.patch_size) ** 2
    vision_embed = 3 * shape.patch_size**2 * vh + (patches + 2) * vh  # patch conv, positions + class token
    vision_layer = 4 * (vh * vh + vh) + (vh * vi + vi) + (vi * vh + vh) + 4 * vh  # attention, MLP, 2 layer norms
    vision = vision_embed + shape.vision_layers * vision_layer + 4 * vh  # pre and post layer norms
    projector = (vh * shape.hidden + shape.hidden) + (shape.hidden * shape.hidden + shape.hidden) + shape.hidden
    return embeddings + norms + vision + projector


def weight_bytes(shape: ModelShape, element_bytes: int, quantization: str | None) -> int:
    """Bytes of the weights vLLM loads: all in the activation dtype, or AWQ's packed linear layers.

    AWQ stores `bits` per weight plus, per group of `group_size` weights, a 16-bit scale and a
    `bits`-wide zero point; embeddings, lm_head, norms, vision tower and projector stay unquantized.
    """
    linear, rest = language_linear_params(shape), other_params(shape)
    if quantization is None:
        return (linear + rest) * element_bytes
    if quantization != "awq":
        raise SizingError(f"no weight arithmetic for quantization {quantization!r}")
    bits = shape.quant_bits or AWQ_BITS
    group = shape.quant_group or AWQ_GROUP
    return math.ceil(linear * (bits + (16 + bits) / group) / 8) + rest * element_bytes


def activation_bytes(shape: ModelShape, batched_tokens: int, element_bytes: int) -> int:
    """Peak activations of one forward pass over `batched_tokens` (vLLM's profiling run), estimated.

    The MLP's gate and up projections (2 x intermediate) and about four hidden-sized tensors
    (residual, normed input, attention output, QKV) per token are alive at once.
    """
    return batched_tokens * (2 * shape.intermediate + 4 * shape.hidden) * element_bytes


def clip_tokens(frames: int, tokens_per_frame: int, text_tokens: int, max_tokens: int) -> int:
    """Tokens one clip's request holds at most: the video, the prompt text and the whole caption budget."""
    return frames * tokens_per_frame + text_tokens + max_tokens


def clips_fit(kv_blocks: int, tokens_per_clip: int, block_size: int) -> int:
    """Clips whose whole requests fit in `kv_blocks` blocks at once (vLLM allocates whole blocks)."""
    return kv_blocks // math.ceil(tokens_per_clip / block_size)


def disagreement(computed: float, reported: float) -> float:
    """How far `reported` lies from `computed`, as a share of `computed`."""
    return abs(reported - computed) / computed if computed else math.inf


@dataclass(frozen=True)
class Sizing:
    """The KV cache arithmetic for one tier, model, frame count and request shape, and what it sets."""

    frames: int
    tokens_per_clip: int
    block_size: int
    kv_bytes_per_token: int
    kv_source: Literal["kv_cache_gib", "memory", "unknown"]
    memory_gib: float | None  # the device memory the arithmetic assumed (None: kv_cache_gib, or unknown)
    memory_source: str | None  # "device", "tier" (the profile's memory_gib), "override"
    weights_gib: float
    activations_gib: float
    overhead_gib: float
    kv_cache_gib: float | None
    kv_tokens: int | None
    clips_fit: int | None
    max_num_seqs: int
    batch_size: int
    limited_by: Literal["memory", "max_clips", "profile"]
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures, GiB rounded to 0.01."""
        data = asdict(self)
        for key in ("memory_gib", "weights_gib", "activations_gib", "overhead_gib", "kv_cache_gib"):
            if data[key] is not None:
                data[key] = round(data[key], 2)
        data["warnings"] = list(self.warnings)
        return data


def clips_in_flight(
    profile: TierProfile, fit: int | None
) -> tuple[int, Literal["memory", "max_clips", "profile"]]:
    """`max_num_seqs` and what limits it: the profile's own value, the clips that fit in memory, or `max_clips`."""
    if profile.max_num_seqs is not None:
        return profile.max_num_seqs, "profile"
    if fit is not None and fit < profile.max_clips:
        return max(fit, 1), "memory"
    return profile.max_clips, "max_clips"


def size(
    shape: ModelShape,
    profile: TierProfile,
    frames: int,
    text_tokens: int,
    max_tokens: int,
    memory_gib: float | None = None,
    memory_source: str = "device",
) -> Sizing:
    """Size the KV cache of `profile` for clips of `frames` frames, and derive `max_num_seqs` and the batch.

    `memory_gib` is the device's memory, with where it came from (`memory_source`); None: the
    profile's `memory_gib` (source "tier"). Memory is not used when the profile sets `kv_cache_gib`.
    The profile's own `max_num_seqs` / `batch_size`, when set (an override), win; a warning says
    when they exceed the clips that fit.
    """
    element = dtype_bytes(profile.dtype, shape)
    per_token = kv_bytes_per_token(shape, element)
    block = profile.block_size or DEFAULT_BLOCK_SIZE[profile.device]
    tokens = clip_tokens(frames, shape.frame_tokens, text_tokens, max_tokens)
    quantization = profile.quantization or shape.quant_method
    weights = weight_bytes(shape, element, quantization)
    activations = activation_bytes(shape, profile.max_num_batched_tokens, element)
    overhead = profile.overhead_gib * GIB
    if memory_gib is None:
        memory_gib, memory_source = profile.memory_gib, "tier"
    used_memory: float | None = None
    if profile.kv_cache_gib is not None:
        kv_bytes: int | None = int(profile.kv_cache_gib * GIB)
        source: Literal["kv_cache_gib", "memory", "unknown"] = "kv_cache_gib"
    elif memory_gib is not None:
        used_memory = memory_gib
        kv_bytes = max(0, int(memory_gib * GIB * profile.gpu_memory_utilization - weights - activations - overhead))
        source = "memory"
    else:
        kv_bytes, source = None, "unknown"

    warnings: list[str] = []
    if kv_bytes is None:
        kv_tokens = fit = None
        warnings.append(
            f"the {profile.name} profile names neither kv_cache_gib nor memory_gib: clips in flight are not sized "
            f"from memory (max_clips {profile.max_clips})"
        )
    else:
        blocks = kv_bytes // (per_token * block)
        kv_tokens, fit = blocks * block, clips_fit(blocks, tokens, block)

    max_num_seqs, limited_by = clips_in_flight(profile, fit)
    batch = profile.batch_size or max_num_seqs
    for name, value in (("max_num_seqs", profile.max_num_seqs), ("batch_size", profile.batch_size)):
        if value is not None and fit is not None and value > fit:
            warnings.append(
                f"{name} {value} is more than the {fit} clips of {tokens:,} tokens the KV cache holds "
                f"({kv_tokens:,} tokens): vLLM will queue or preempt the rest and recompute their prefill"
            )
    return Sizing(
        frames=frames,
        tokens_per_clip=tokens,
        block_size=block,
        kv_bytes_per_token=per_token,
        kv_source=source,
        memory_gib=used_memory,
        memory_source=memory_source if used_memory is not None else None,
        weights_gib=weights / GIB,
        activations_gib=activations / GIB,
        overhead_gib=profile.overhead_gib,
        kv_cache_gib=None if kv_bytes is None else kv_bytes / GIB,
        kv_tokens=kv_tokens,
        clips_fit=fit,
        max_num_seqs=max_num_seqs,
        batch_size=batch,
        limited_by=limited_by,
        warnings=tuple(warnings),
    )


def neighbour_frames(frames: int) -> list[int]:
    """The frame counts shown beside `frames`: half, three quarters, itself, one and a half, double."""
    return sorted({max(1, frames // 2), max(1, frames * 3 // 4), frames, frames * 3 // 2, frames * 2})


def tradeoff(
    shape: ModelShape,
    profile: TierProfile,
    frames: int,
    text_tokens: int,
    max_tokens: int,
    memory_gib: float | None = None,
    memory_source: str = "device",
) -> list[Sizing]:
    """`size` at `frames` and its neighbours (`neighbour_frames`) that fit the context: frames vs clips in flight."""
    return [
        size(shape, profile, n, text_tokens, max_tokens, memory_gib, memory_source)
        for n in neighbour_frames(frames)
        if clip_tokens(n, shape.frame_tokens, text_tokens, max_tokens) <= profile.max_model_len
    ]


@dataclass(frozen=True)
class EngineKV:
    """vLLM's own figures after the engine loaded (from its cache config; see `engine.kv_capacity`)."""

    kv_tokens: int  # vLLM's "KV cache size: N tokens"
    max_concurrency: float  # vLLM's "Maximum concurrency for max_model_len tokens per request"
    max_model_len: int
    num_blocks: int
    block_size: int

    def clips_fit(self, tokens_per_clip: int) -> int:
        """vLLM's blocks expressed as clips of `tokens_per_clip` tokens (its own concurrency, for our request)."""
        return clips_fit(self.num_blocks, tokens_per_clip, self.block_size)


def concurrency(sizing: Sizing, engine: EngineKV | None) -> dict[str, Any]:
    """The computed and the vLLM-reported concurrency side by side, as summaries and metrics record them.

    `agree` is None when either side is unknown, else whether vLLM's clips that fit lie within
    `AGREE_WITHIN` of the computed ones.
    """
    record: dict[str, Any] = {
        "frames": sizing.frames,
        "tokens_per_clip": sizing.tokens_per_clip,
        "computed_kv_tokens": sizing.kv_tokens,
        "computed_clips_fit": sizing.clips_fit,
        "kv_source": sizing.kv_source,
        "vllm_kv_tokens": None,
        "vllm_max_concurrency": None,
        "vllm_max_model_len": None,
        "vllm_clips_fit": None,
        "max_num_seqs": sizing.max_num_seqs,
        "batch_size": sizing.batch_size,
        "limited_by": sizing.limited_by,
        "disagreement": None,
        "agree": None,
    }
    if engine is not None:
        record.update(
            vllm_kv_tokens=engine.kv_tokens,
            vllm_max_concurrency=round(engine.max_concurrency, 2),
            vllm_max_model_len=engine.max_model_len,
            vllm_clips_fit=engine.clips_fit(sizing.tokens_per_clip),
        )
        if sizing.clips_fit:
            off = disagreement(sizing.clips_fit, record["vllm_clips_fit"])
            record.update(disagreement=round(off, 3), agree=off <= AGREE_WITHIN)
    return record


def disagreement_warning(record: Mapping[str, Any]) -> str | None:
    """The warning for a `concurrency` record whose two figures disagree by more than `AGREE_WITHIN`, else None."""
    if record.get("agree") is not False:
        return None
    return (
        f"vLLM's KV cache holds {record['vllm_clips_fit']} clips of {record['tokens_per_clip']:,} tokens "
        f"({record['vllm_kv_tokens']:,} tokens), the sizing computed {record['computed_clips_fit']} "
        f"({record['computed_kv_tokens']:,} tokens): off by {record['disagreement']:.0%}; the batch is "
        f"{record['batch_size']}, max_num_seqs {record['max_num_seqs']} (check memory_gib, overhead_gib, "
        "or set max_num_seqs)"
    )
