"""The KV cache arithmetic (captioner/sizing.py) against the real 7B model's figures; no weights, no engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.config import Settings
from captioner.errors import ConfigError
from captioner.planning import check_fits
from captioner.sizing import (
    GIB,
    EngineKV,
    ModelShape,
    concurrency,
    disagreement_warning,
    kv_bytes_per_token,
    neighbour_frames,
    size,
    tradeoff,
    weight_bytes,
)
from captioner.tiers import PROFILES, resolve_profile, tier_for_device

# llava-hf/LLaVA-NeXT-Video-7B-hf as issue 14 works it on paper: Vicuna-7B (32 layers, hidden 4096,
# 32 KV heads: no grouped-query attention), CLIP ViT-L/14 at 336 px pooled by 2 (144 tokens a frame).
LLAVA_NEXT_VIDEO_7B = {
    "model_type": "llava_next_video",
    "torch_dtype": "bfloat16",
    "spatial_pool_stride": 2,
    "text_config": {
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 32064,
    },
    "vision_config": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "image_size": 336, "patch_size": 14,
    },
}  # fmt: skip
SHAPE = ModelShape.from_config(LLAVA_NEXT_VIDEO_7B)
TEXT_TOKENS, OUTPUT_TOKENS = 200, 256  # the issue's "about 200 prompt tokens and up to 256 output tokens"
# The issue's paper estimate of clips in flight per tier (at each tier's frames).
ISSUE_CLIPS = {"t4": 9, "l4": 10, "a100-40": 7, "a100-80": 21, "h100": 21}


def sized(tier: str, frames: int | None = None, **overrides):
    profile = resolve_profile(tier, overrides)
    return size(SHAPE, profile, frames or profile.frames, TEXT_TOKENS, OUTPUT_TOKENS)


def test_the_7b_config_costs_half_a_mebibyte_per_token_and_14_gb_of_weights():
    assert SHAPE.frame_tokens == 144 and SHAPE.kv_heads == SHAPE.heads == 32 and SHAPE.head_dim == 128
    assert kv_bytes_per_token(SHAPE, 2) == 2**19  # 0.5 MiB in bf16/fp16
    assert weight_bytes(SHAPE, 2, None) / 1e9 == pytest.approx(14.1, abs=0.2)  # "about 14 GB of bf16 weights"
    assert weight_bytes(SHAPE, 2, "awq") / 1e9 == pytest.approx(4.5, abs=0.2)  # "about 4.5 GB as AWQ"
    shipped = Path(__file__).parents[1] / "captioner" / "data" / "llava-next-video-7b-config.json"
    assert ModelShape.from_config(json.loads(shipped.read_text(encoding="utf-8"))) == SHAPE  # what `plan` sizes


@pytest.mark.parametrize("tier", sorted(ISSUE_CLIPS))
def test_each_gpu_tier_lands_near_the_paper_estimate(tier):
    sizing = sized(tier)
    assert sizing.kv_source == "memory" and sizing.memory_source == "tier"
    assert sizing.tokens_per_clip == sizing.frames * 144 + TEXT_TOKENS + OUTPUT_TOKENS
    # The KV tokens are the memory left after weights, activations and overhead, in whole 16-token blocks.
    left = sizing.memory_gib * PROFILES[tier].gpu_memory_utilization - sizing.weights_gib - sizing.activations_gib
    assert sizing.kv_tokens == pytest.approx((left - sizing.overhead_gib) * GIB / 2**19, abs=16)
    assert sizing.kv_tokens % 16 == 0
    assert abs(sizing.clips_fit - ISSUE_CLIPS[tier]) <= 1, (tier, sizing.clips_fit)
    assert sizing.max_num_seqs == sizing.batch_size == sizing.clips_fit and sizing.limited_by == "memory"
    assert not sizing.warnings


def test_a100_40_and_80_are_sized_apart():
    small, large = sized("a100-40"), sized("a100-80")
    assert small.frames == large.frames == 32
    assert large.clips_fit >= 2.5 * small.clips_fit  # 56 GiB of KV cache against 20


def test_frames_trade_against_clips_in_flight():
    rows = tradeoff(SHAPE, PROFILES["l4"], 16, TEXT_TOKENS, OUTPUT_TOKENS)
    assert [r.frames for r in rows] == neighbour_frames(16) == [8, 12, 16, 24, 32]
    fits = [r.clips_fit for r in rows]
    assert fits == sorted(fits, reverse=True) and fits[0] > fits[2] > fits[-1] >= 1
    # 64 frames (9,672 tokens) exceed the 8,192-token context: not offered.
    assert [r.frames for r in tradeoff(SHAPE, PROFILES["a100-40"], 32, TEXT_TOKENS, OUTPUT_TOKENS)] == [16, 24, 32, 48]


def test_an_override_wins_and_is_warned_about_when_it_overpromises():
    fit = sized("a100-40").clips_fit
    over = sized("a100-40", max_num_seqs=32)
    assert over.max_num_seqs == over.batch_size == 32 and over.limited_by == "profile"
    assert len(over.warnings) == 1 and f"max_num_seqs 32 is more than the {fit} clips" in over.warnings[0]
    batch = sized("a100-40", batch_size=4)  # within what fits: no warning
    assert batch.batch_size == 4 and batch.max_num_seqs == fit and not batch.warnings


def test_bigger_cards_get_more_clips_up_to_the_ceiling():
    h100 = sized("h100")
    h200 = size(SHAPE, PROFILES["h100"], 32, TEXT_TOKENS, OUTPUT_TOKENS, memory_gib=139.8)
    assert h200.memory_source == "device" and h200.clips_fit > 1.8 * h100.clips_fit
    few_frames = size(SHAPE, PROFILES["h100"], 4, TEXT_TOKENS, OUTPUT_TOKENS, memory_gib=178.4)  # B200, 4 frames
    assert few_frames.clips_fit > 64 and few_frames.max_num_seqs == 64 and few_frames.limited_by == "max_clips"


def test_cpu_tier_sizes_the_kv_cache_from_kv_cache_gib():
    demo = {
        "spatial_pool_stride": 2,
        "text_config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 3008, "dtype": "bfloat16"},
        "vision_config": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "image_size": 64,
                          "patch_size": 8},
    }  # fmt: skip
    shape = ModelShape.from_config(demo)
    sizing = size(shape, PROFILES["cpu"], 8, 150, 256, memory_gib=500.0)  # memory plays no part
    assert sizing.kv_source == "kv_cache_gib" and sizing.memory_gib is None
    assert sizing.kv_bytes_per_token == 2 * 2 * 2 * 64 * 2 == 1024
    assert sizing.kv_tokens == 2 * GIB // 1024  # 2,097,152 tokens in 32-token blocks
    assert sizing.tokens_per_clip == 8 * 16 + 150 + 256 == 534
    assert sizing.clips_fit == (2 * GIB // (1024 * 32)) // 17  # 17 blocks a clip
    assert sizing.max_num_seqs == sizing.batch_size == 16 and sizing.limited_by == "max_clips"


def test_recorded_concurrency_compares_with_vllms_figure():
    sizing = sized("l4")  # 10 clips of 2,760 tokens (173 blocks)
    same = EngineKV(kv_tokens=sizing.kv_tokens, max_concurrency=3.5, max_model_len=8192,
                    num_blocks=sizing.kv_tokens // 16, block_size=16)  # fmt: skip
    record = concurrency(sizing, same)
    assert record["vllm_clips_fit"] == record["computed_clips_fit"] == 10 and record["agree"] is True
    assert disagreement_warning(record) is None
    fewer = EngineKV(kv_tokens=173 * 16 * 7, max_concurrency=2.4, max_model_len=8192, num_blocks=173 * 7, block_size=16)
    record = concurrency(sizing, fewer)
    assert record["vllm_clips_fit"] == 7 and record["disagreement"] == 0.3 and record["agree"] is False
    assert "off by 30%" in disagreement_warning(record)
    unknown = concurrency(sizing, None)
    assert unknown["vllm_clips_fit"] is None and unknown["agree"] is None


def test_a_plan_that_holds_no_clip_is_refused_with_the_figures():
    sizing = sized("t4", gpu_memory_utilization=0.4)  # 5.9 GiB: weights and reserve leave no room
    assert sizing.clips_fit == 0
    with pytest.raises(ConfigError, match=r"one clip of 8 frames needs 1,608 tokens .* fewer frames"):
        check_fits(sizing, resolve_profile("t4", {"gpu_memory_utilization": 0.4}))


@pytest.mark.parametrize(
    "name,memory,tier",
    [
        ("Tesla T4", 14.75, "t4"),
        ("NVIDIA L4", 22.17, "l4"),
        ("NVIDIA L40S", 44.4, "a100-40"),  # not an L4: by memory
        ("NVIDIA A100-SXM4-40GB", 39.39, "a100-40"),
        ("NVIDIA A100 80GB PCIe", 79.15, "a100-80"),
        ("NVIDIA H100 80GB HBM3", 79.11, "h100"),
        ("NVIDIA H200", 139.8, "h100"),
        ("NVIDIA B200", 178.4, "h100"),
        ("NVIDIA GeForce RTX 4090", 23.6, "l4"),
        ("NVIDIA A10G", 22.0, "l4"),
        ("Quadro P4000", 7.9, "t4"),
    ],
)
def test_device_detection_by_name_then_memory(name, memory, tier):
    assert tier_for_device(name, memory) == tier


def test_the_old_a100_tier_name_points_to_its_successors():
    with pytest.raises(ValueError, match="a100-40 or a100-80"):
        Settings(tier="a100")
    with pytest.raises(ValueError, match="a100-40 or a100-80"):
        resolve_profile("a100")
