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


@pytest.mark.parametrize("ref", ["../../x", "/abs/x", "a/b", "..", "x@../1", "x..y", "x/../../y@1", "-x", "x@", "x@v"])
def test_prompt_references_are_names_not_paths(ref):
    with pytest.raises(PromptError, match=r"is not a prompt name: .*optionally followed by @N or @vN") as caught:
        load_prompt(ref)
    assert repr(ref) in str(caught.value)


@pytest.mark.parametrize("ref", ["korean-detailed", "name@2", "name@v2", "site_ko.v1"])
def test_prompt_names_pass_the_name_rule(ref, tmp_path):
    name = ref.partition("@")[0]
    (tmp_path / name).mkdir()
    for version in (1, 2):
        (tmp_path / name / f"v{version}.toml").write_text(
            f'version = {version}\nsystem = "s{version}"\ninstruction = "i"\n', encoding="utf-8"
        )
    spec = load_prompt(ref, tmp_path)
    assert (spec.name, spec.version, spec.system) == (name, 2, "s2")


def _write_prompt(folder, name, version, system):
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / f"v{version}.toml").write_text(
        f'version = {version}\nsystem = "{system}"\ninstruction = "묘사해주세요."\n', encoding="utf-8"
    )


def test_site_prompts_come_first_then_the_bundled_ones(tmp_path):
    site = tmp_path / "site"
    _write_prompt(site, "site-ko", 1, "현장 프롬프트")
    assert load_prompt("site-ko", site).source == site / "site-ko" / "v1.toml"
    bundled = load_prompt("detailed-ko", site)  # not in the site folder: the bundled one
    assert bundled.source.parent == DEFAULT_PROMPTS_DIR / "detailed-ko"
    assert bundled.identity() == load_prompt("detailed-ko").identity()
    # A site folder of the same name replaces the bundled prompt, all its versions.
    _write_prompt(site, "detailed-ko", 7, "현장판")
    assert (load_prompt("detailed-ko", site).version, load_prompt("detailed-ko", site).system) == (7, "현장판")
    with pytest.raises(PromptError, match=r"no version '1' \(versions: \[7\]"):
        load_prompt("detailed-ko@1", site)
    with pytest.raises(PromptError) as missing:
        load_prompt("nope", site)
    assert str(missing.value) == (
        f"prompt 'nope' not found in the site prompts {site} (available: detailed-ko, site-ko) "
        f"nor in the bundled prompts {DEFAULT_PROMPTS_DIR} (available: detailed-ko)"
    )
    with pytest.raises(PromptError, match=r"site prompts .*/absent \(no such folder\) nor in the bundled prompts"):
        load_prompt("nope", tmp_path / "absent")


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
