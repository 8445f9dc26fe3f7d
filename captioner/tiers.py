"""Engine settings per hardware tier, kept as data.

Every tier is one `TierProfile`; `resolve_profile` picks one (or detects it) and applies
overrides. Nothing else in the code branches on the tier name.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TierName = Literal["cpu", "t4", "l4", "a100-40", "a100-80", "h100"]


class TierProfile(BaseModel):
    """vLLM and pipeline settings for one kind of machine. Every field can be overridden.

    `max_num_seqs` and `batch_size` are left unset here: `captioner.sizing` derives them from the KV
    cache the device's memory (or `kv_cache_gib`) holds for clips of the model and frames in use,
    up to `max_clips`. Setting them (`--set max_num_seqs=N`) overrides the arithmetic.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    device: Literal["cpu", "cuda"]
    dtype: Literal["auto", "bfloat16", "half", "float16", "float32"]
    quantization: Literal["awq"] | None = Field(
        None, description="Expected checkpoint quantization; the checkpoint must already be quantized."
    )
    gpu_memory_utilization: float = Field(
        gt=0, le=1, description="On CPU: fraction of NUMA node 0 memory reserved for the KV cache."
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV cache size in GiB; when set, it replaces gpu_memory_utilization's sizing."
    )
    memory_gib: float | None = Field(
        None,
        gt=0,
        description="Device memory (GiB, as torch reports it) of the tier's card: what the sizing "
        "assumes where no such device is present; a present CUDA device's own memory wins unless this is overridden.",
    )
    overhead_gib: float = Field(
        1.0,
        ge=0,
        description="Device memory outside weights, activations and KV cache: CUDA context, cuBLAS "
        "workspaces, CUDA graphs, the vision tower's profiling pass.",
    )
    max_clips: int = Field(
        gt=0, description="Most clips in flight the sizing derives, however many the KV cache would hold."
    )
    max_num_seqs: int | None = Field(
        None, gt=0, description="Sequences vLLM runs concurrently; unset: the clips that fit (captioner.sizing)."
    )
    max_num_batched_tokens: int = Field(gt=0, description="Tokens per scheduler step; >= one video.")
    enable_chunked_prefill: bool
    max_model_len: int = Field(gt=0)
    frames: int = Field(gt=0, description="Frames sampled per clip.")
    batch_size: int | None = Field(None, gt=0, description="Clips handed to one generate() call; unset: max_num_seqs.")
    enforce_eager: bool = False
    block_size: int | None = Field(
        None, gt=0, description="KV cache block size; None = vLLM's default. Only whole blocks are prefix-cached."
    )
    decode_workers: int = Field(gt=0, description="Frame-decoding processes feeding the engine.")
    wait_for_full_batch: bool = Field(
        False,
        description="Engine waits for a full batch while clips are still decoding (else takes what is ready).",
    )
    note: str = ""


# Real-model arithmetic behind these numbers: LLaVA-NeXT-Video-7B turns a 336 px frame into
# 24x24 patches pooled by 2 -> 144 tokens, so N frames cost 144*N prompt tokens; its context
# is 8192. max_num_batched_tokens must hold one whole video, or vLLM's encoder cache refuses it.
# Clips in flight are not listed: captioner.sizing derives them from memory (README "Tier profiles").
# memory_gib: each card's total memory as torch reports it (the figure in its out-of-memory messages).
# Speculative decoding is off everywhere: recent vLLM refuses draft-model speculation for
# multimodal models, and n-gram speculation gains little on captions that do not copy the prompt.
# GPU tiers cap clips in flight at 64: memory bounds them well below that at the tiers' frames,
# and the pipeline keeps two batches of decoded frames in host memory (64 clips of 32 frames at
# 336 px: 0.7 GB a batch).
PROFILES: dict[str, TierProfile] = {
    "cpu": TierProfile(
        name="cpu",
        device="cpu",
        dtype="bfloat16",
        gpu_memory_utilization=0.3,  # the default 0.92 fails at start on CPU
        # On CPU vLLM sizes the cache as the fraction of NUMA node 0's memory minus the process's own
        # RSS: on a machine with a small node 0 a fraction can come out negative, a size cannot.
        # The demo model holds about 4,000 clips in 2 GiB; 2 GiB also fits a few clips of a small real model.
        kv_cache_gib=2.0,
        # Not memory but the CPU bounds the demo model: 1 engine thread, 16 videos per call gave
        # 2.3 videos/s, 8 gave 1.7, 32 gave 2.4.
        max_clips=16,
        max_num_batched_tokens=4096,
        enable_chunked_prefill=True,
        max_model_len=4096,
        frames=8,
        enforce_eager=True,  # no CUDA graphs on CPU; compilation costs more than it saves here
        overhead_gib=0.0,
        # vLLM's CPU default is 128-token blocks: coarser than the shared system prompt, which then
        # never fills a cacheable block. The CPU backend wants multiples of 32.
        block_size=32,
        # Decoding 8 frames of 8 Mbps 1080p H.264 takes seconds per clip on one core, while the demo
        # engine (one thread) captions over 2 clips/s: decoding is the bottleneck, so both cores decode.
        decode_workers=2,
        # The engine shares the cores with decoding, and a batch of 1 costs it nearly as much as a
        # batch of 16 (per-step overhead dominates a small model): small batches steal decoding time.
        wait_for_full_batch=True,
        note="Development only: the demo checkpoint on a CPU.",
    ),
    "t4": TierProfile(
        name="t4",
        device="cuda",
        dtype="half",  # T4 (Turing) has no bf16
        quantization="awq",  # 7B in fp16 leaves too little of 16 GB for the KV cache
        gpu_memory_utilization=0.85,
        memory_gib=14.75,
        max_clips=64,
        max_num_batched_tokens=8192,
        enable_chunked_prefill=False,
        max_model_len=8192,
        frames=8,
        decode_workers=2,
        note="16 GB: AWQ 4-bit weights, fp16 activations, 8 frames per clip.",
    ),
    "l4": TierProfile(
        name="l4",
        device="cuda",
        dtype="bfloat16",
        quantization="awq",
        gpu_memory_utilization=0.90,
        memory_gib=22.17,
        max_clips=64,
        max_num_batched_tokens=8192,
        enable_chunked_prefill=False,
        max_model_len=8192,
        frames=16,
        decode_workers=4,
        note="24 GB: AWQ 4-bit weights, 16 frames per clip.",
    ),
    "a100-40": TierProfile(
        name="a100-40",
        device="cuda",
        dtype="bfloat16",
        gpu_memory_utilization=0.90,
        memory_gib=39.39,
        max_clips=64,
        max_num_batched_tokens=16384,
        enable_chunked_prefill=True,
        max_model_len=8192,
        frames=32,  # the model was trained on 32 uniformly sampled frames
        decode_workers=8,
        note="A100 40 GB: bf16 weights, chunked prefill, 32 frames per clip.",
    ),
    "a100-80": TierProfile(
        name="a100-80",
        device="cuda",
        dtype="bfloat16",
        gpu_memory_utilization=0.90,
        memory_gib=79.15,
        max_clips=64,
        max_num_batched_tokens=16384,
        enable_chunked_prefill=True,
        max_model_len=8192,
        frames=32,
        decode_workers=8,
        note="A100 80 GB: bf16 weights, chunked prefill, 32 frames per clip.",
    ),
    "h100": TierProfile(
        name="h100",
        device="cuda",
        dtype="bfloat16",
        gpu_memory_utilization=0.90,
        memory_gib=79.11,
        max_clips=64,
        max_num_batched_tokens=32768,
        enable_chunked_prefill=True,
        max_model_len=8192,
        frames=32,
        decode_workers=12,
        note="H100 80 GB, and larger unknown cards (H200, B200: sized by their own memory): bf16 weights, "
        "chunked prefill, 32 frames per clip.",
    ),
}

# Names that torch.cuda.get_device_name() contains -> tier, checked in order. Whole words only:
# an L40S is not an L4. An A100 is told apart by its memory (40 or 80 GB).
_DEVICE_NAMES: list[tuple[str, str]] = [
    (r"\bH100\b", "h100"),
    (r"\bA100\b", "a100"),
    (r"\bL4\b", "l4"),
    (r"\bT4\b", "t4"),
]
_A100_80_FLOOR_GIB = 60.0
# Unknown GPUs (H200, B200, L40S, A10G, RTX cards...): the largest tier whose memory (GiB) the device
# has. Every such tier is then sized by the device's own memory, so a 141 GB H200 gets more clips in
# flight than an H100, not the same.
_MEMORY_FLOORS: list[tuple[float, str]] = [(75, "h100"), (38, "a100-40"), (20, "l4"), (0, "t4")]
# Names of earlier versions, refused with a pointer to their successors.
RENAMED_TIERS = {"a100": "a100-40 or a100-80 (the A100 40 GB and 80 GB now have their own profiles)"}


def tier_for_device(name: str, memory_gib: float) -> str:
    """The tier for a CUDA device of this name and memory: by name, else by memory."""
    for pattern, tier in _DEVICE_NAMES:
        if re.search(pattern, name):
            if tier == "a100":
                return "a100-80" if memory_gib >= _A100_80_FLOOR_GIB else "a100-40"
            return tier
    return next(tier for floor, tier in _MEMORY_FLOORS if memory_gib >= floor)


def cuda_device() -> tuple[str, float] | None:
    """Name and memory (GiB) of the first CUDA device, or None when there is none."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory / 2**30


def detect_tier() -> str:
    """Pick a tier from the first CUDA device's name and memory; `cpu` when there is none."""
    device = cuda_device()
    return "cpu" if device is None else tier_for_device(*device)


def resolve_profile(tier: str = "auto", overrides: dict[str, Any] | None = None) -> TierProfile:
    """Return the profile for `tier` (or the detected one) with `overrides` applied and validated."""
    name = detect_tier() if tier == "auto" else tier
    if name in RENAMED_TIERS:
        raise ValueError(f"tier {name!r} is now {RENAMED_TIERS[name]}")
    if name not in PROFILES:
        raise ValueError(f"unknown tier {tier!r}; choose auto or one of {', '.join(PROFILES)}")
    base = PROFILES[name]
    if not overrides:
        return base
    unknown = set(overrides) - set(TierProfile.model_fields)
    if unknown:
        raise ValueError(
            f"unknown profile field(s) {', '.join(sorted(unknown))}; fields: {', '.join(TierProfile.model_fields)}"
        )
    return TierProfile.model_validate({**base.model_dump(), **overrides})
