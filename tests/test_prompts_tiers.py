"""Prompts under prompts/, tier profiles as data, token budget arithmetic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from captioner.prompts import DEFAULT_PROMPTS_DIR, PromptError, check_budget, load_prompt, tokens_per_frame
from captioner.tiers import PROFILES, resolve_profile


def test_shipped_prompt_is_the_korean_system_prompt():
    spec = load_prompt("detailed-ko")
    assert spec.version >= 1 and spec.source.parent == DEFAULT_PROMPTS_DIR / "detailed-ko"
    assert spec.system.startswith("당신은 한국의 배경영상을 상세히 묘사하는 AI 입니다.")
    assert load_prompt("detailed-ko@1").digest == load_prompt("detailed-ko@v1").digest


def test_prompt_errors_name_the_problem(tmp_path):
    with pytest.raises(PromptError, match="'nope' not found.*available: detailed-ko"):
        load_prompt("nope")
    with pytest.raises(PromptError, match="no version '9'"):
        load_prompt("detailed-ko@9")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "v1.toml").write_text('version = 2\nsystem = "a"\ninstruction = "b"\n', encoding="utf-8")
    with pytest.raises(PromptError, match="says version 2 but is named v1.toml"):
        load_prompt("x", tmp_path)


def test_tokens_per_frame_matches_the_real_model():
    real = SimpleNamespace(vision_config=SimpleNamespace(image_size=336, patch_size=14), spatial_pool_stride=2)
    assert tokens_per_frame(real) == 144
    demo = SimpleNamespace(vision_config=SimpleNamespace(image_size=64, patch_size=8), spatial_pool_stride=2)
    assert tokens_per_frame(demo) == 16


def test_budget_refuses_too_many_frames_with_the_limit():
    rendered = SimpleNamespace(text_tokens=100)
    assert check_budget(rendered, 32, 144, 256, 8192, 16384) == 100 + 32 * 144
    with pytest.raises(PromptError, match="use at most 54 frames"):
        check_budget(rendered, 64, 144, 256, 8192, 16384)
    with pytest.raises(PromptError, match="max_num_batched_tokens is 4096"):
        check_budget(rendered, 32, 144, 256, 8192, 4096)


def test_profiles_are_data_and_overridable():
    t4 = PROFILES["t4"]
    assert t4.dtype == "half" and t4.quantization == "awq"  # no bf16 on Turing
    assert PROFILES["h100"].enable_chunked_prefill and PROFILES["h100"].max_clips == 64
    # Clips in flight are derived from memory (captioner.sizing), not listed.
    assert all(p.max_num_seqs is None and p.batch_size is None for p in PROFILES.values())
    assert PROFILES["a100-40"].memory_gib < 40 < 79 < PROFILES["a100-80"].memory_gib
    changed = resolve_profile("t4", {"max_num_seqs": 4, "quantization": None})
    assert changed.max_num_seqs == 4 and changed.quantization is None and changed.dtype == "half"
    with pytest.raises(ValueError, match="unknown profile field"):
        resolve_profile("cpu", {"max_num_seq": 4})
    with pytest.raises(ValueError):
        resolve_profile("cpu", {"gpu_memory_utilization": 1.5})
    assert resolve_profile("auto").name == "cpu"  # no GPU on this machine
    for profile in PROFILES.values():  # a whole video at the tier's frames fits one scheduler step
        assert profile.frames * 144 <= profile.max_num_batched_tokens
