"""The whole pipeline on the real vLLM engine (demo checkpoint, LoRA adapter, prefix cache)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from captioner.adapters import BASE
from captioner.captioning import caption_folders as run
from captioner.errors import ConfigError
from captioner.frames import sample_frames
from captioner.planning import check_engine, make_plan
from captioner.records import read_records
from captioner.sources import record_path, video_id
from tests.badfiles import write_bad_files

BAD_REASONS = {
    "empty.mp4": "file is empty (0 bytes)",
    "notes.mp4": "not a video file, or a damaged one",
    "truncated.mp4": "file ends early (cut at about",
    "truncated_faststart.mkv": "file ends early (cut at about",
    "audio_only.mp4": "no video stream (contains: audio)",
    "dangling.webm": "file does not exist (broken symlink)",
}


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory, clip_dir) -> Path:
    """Good clips in the top folder and every kind of bad file in a subfolder."""
    folder = tmp_path_factory.mktemp("mixed")
    for clip in sorted(clip_dir.glob("*.mp4")):
        shutil.copy(clip, folder / clip.name)
    write_bad_files(folder / "bad", next(clip_dir.glob("*.mp4")))
    return folder


@pytest.fixture(scope="module")
def first_run(mixed_dir, tmp_path_factory, settings, engine):
    out = tmp_path_factory.mktemp("out")
    summary = run([mixed_dir], out, settings, engine=engine)
    return out, summary


def test_every_clip_gets_a_record_and_bad_files_fail_alone(first_run, plan, mixed_dir):
    out, summary = first_run
    records = {Path(r["video"]).name: r for r in read_records(out / "captions.jsonl")}
    good = sorted(p.name for p in mixed_dir.glob("*.mp4"))
    image = "picture.mov"
    assert set(records) == set(good) | set(BAD_REASONS) | {image}  # a folder named folder.avi is no video
    assert summary["videos"] == len(records) and summary["ok"] == len(good)
    assert summary["failed"] == len(BAD_REASONS) + 1 and summary["skipped"] == 0
    for name in good:
        record = records[name]
        assert record["status"] == "ok" and record["error"] is None, record
        assert record["caption"].strip() and record["output_tokens"] >= 50  # min_tokens of the preset
        # vLLM's count of the prompt equals the budget computed before the run.
        assert record["prompt_tokens"] == plan.prompt_tokens
        assert record["frames"] == plan.frames == 8
        assert record["model"] == plan.model and record["adapter"] == "demo" and record["adapter_sha"]
        assert record["prompt"] == {"name": "detailed-ko", "version": 1, "sha": plan.prompt.spec.digest}
        assert record["finish_reason"] in {"stop", "length"}
    for name, reason in BAD_REASONS.items():
        record = records[name]
        assert record["status"] == "failed" and record["caption"] == "", record
        assert reason in record["error"], record
    assert records[image]["status"] == "failed" and records[image]["error"]


def test_prefix_cache_serves_the_korean_system_prompt(first_run, engine, plan):
    out, summary = first_run
    shareable = engine.shareable_prefix_tokens(plan.prompt)
    assert shareable > 0
    ok = [r for r in read_records(out / "captions.jsonl") if r["status"] == "ok"]
    # Every request, the first included (the prefix is warmed), reuses the system prompt's blocks.
    assert all(r["cached_tokens"] >= shareable for r in ok), [r["cached_tokens"] for r in ok]
    assert summary["prefix_cache_hit_ratio"] >= 1.0
    assert summary["output_tokens"] == sum(r["output_tokens"] for r in ok)


def test_summary_file_matches_returned_summary(first_run):
    out, summary = first_run
    on_disk = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert on_disk == summary
    for key in ("videos", "ok", "failed", "skipped", "seconds", "videos_per_s", "output_tokens_per_s",
                "prefix_cache_hit_ratio"):
        assert key in on_disk


def test_summary_records_computed_and_vllm_concurrency(first_run, engine, plan):
    """On the CPU profile the clips the sizing computes and the clips vLLM's KV cache holds agree within a fifth."""
    out, summary = first_run
    flight = summary["concurrency"]
    # vLLM's own figure, read from the loaded engine (what it logs as "KV cache size: N tokens").
    assert engine.kv is not None and flight["vllm_kv_tokens"] == engine.kv.kv_tokens > 0
    assert flight["vllm_max_concurrency"] == pytest.approx(engine.kv.kv_tokens / engine.kv.max_model_len, rel=0.01)
    assert flight["computed_kv_tokens"] == plan.sizing.kv_tokens and flight["kv_source"] == "kv_cache_gib"
    assert flight["tokens_per_clip"] == plan.prompt_tokens + plan.settings.sampling_params().max_tokens
    computed, reported = flight["computed_clips_fit"], flight["vllm_clips_fit"]
    assert abs(reported - computed) <= computed / 5 and flight["agree"] is True
    assert flight["vllm_kv_tokens"] == pytest.approx(flight["computed_kv_tokens"], rel=0.2)
    # The batch actually used: the profile's (16, the CPU tier's max_clips, far below what fits), or less.
    assert flight["max_num_seqs"] == flight["batch_size"] == plan.profile.batch_size == 16 < computed
    assert flight["limited_by"] == "max_clips"
    assert flight["batches"] >= 1 and 1 <= flight["batch_max"] <= 16
    assert 1 <= flight["batch_mean"] <= flight["batch_max"]
    assert flight["batch_mean"] * flight["batches"] >= summary["ok"]  # every captioned clip went in a batch


def test_a_loaded_engine_serves_plans_of_other_frames(engine, plan, settings):
    """Clips in flight follow the frames; a worker's engine still serves a job that asks for other frames."""
    four = make_plan(settings.model_copy(update={"frames": 4}))
    assert four.sizing.tokens_per_clip == plan.sizing.tokens_per_clip - 4 * plan.frame_tokens
    assert four.sizing.clips_fit > engine.kv.clips_fit(plan.sizing.tokens_per_clip)
    check_engine(engine, four)  # no "restart it"


def test_rerun_skips_ok_and_retries_failed(first_run, mixed_dir, settings, engine):
    out, first = first_run
    before = read_records(out / "captions.jsonl")
    summary = run([mixed_dir], out, settings, engine=engine)
    assert summary["skipped"] == first["ok"] and summary["ok"] == 0
    assert summary["failed"] == first["failed"]  # retried, and still bad
    after = read_records(out / "captions.jsonl")
    assert len(after) == len(before)  # compaction: one record per video and version
    ok_before = {r["video"]: r["caption"] for r in before if r["status"] == "ok"}
    assert ok_before == {r["video"]: r["caption"] for r in after if r["status"] == "ok"}


def test_two_names_that_show_alike_are_two_videos(tmp_path, clip_dir, settings, engine):
    # Issue 20: the byte 0xff and the four characters "\xff" show the same `video` text.
    folder = tmp_path / "clips"
    folder.mkdir()
    raw, literal = Path(os.fsdecode(os.fsencode(folder) + b"/\xff.mp4")), folder / "\\xff.mp4"
    for path in (raw, literal):
        shutil.copyfile(sorted(clip_dir.glob("*.mp4"))[0], path)
    out = tmp_path / "out"
    assert run([folder], out, settings, engine=engine)["ok"] == 2
    records = read_records(out / "captions.jsonl")
    assert {video_id(raw)} == {r["video"] for r in records} and {record_path(r) for r in records} == {raw, literal}
    again = run([folder], out, settings, engine=engine)  # resumed: each is done, neither for the other
    assert (again["skipped"], again["ok"]) == (2, 0) and len(read_records(out / "captions.jsonl")) == 2


def test_lora_adapter_changes_the_caption(engine, plan, clip_dir):
    frames = [sample_frames(p, plan.frames, plan.frame_size) for p in sorted(clip_dir.glob("*.mp4"))[:2]]
    sampling = plan.settings.sampling_params()
    with_lora = engine.caption(frames, plan.prompt, sampling)
    without = engine.caption(frames, plan.prompt, sampling, adapters=[BASE] * len(frames))
    again = engine.caption(frames, plan.prompt, sampling)
    assert [g.text for g in with_lora] == [g.text for g in again]  # greedy: repeatable
    assert [g.text for g in with_lora] != [g.text for g in without]


def test_new_prompt_version_captions_again_beside_the_old(tmp_path, clip_dir, settings, engine):
    prompts = tmp_path / "prompts"
    shutil.copytree(settings.prompts_dir / "detailed-ko", prompts / "detailed-ko")
    text = (prompts / "detailed-ko" / "v1.toml").read_text(encoding="utf-8")
    (prompts / "detailed-ko" / "v2.toml").write_text(
        text.replace("version = 1", "version = 2").replace("자세히 묘사해주세요.", "배경과 움직임을 묘사해주세요."),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    v1 = settings.model_copy(update={"prompt": "detailed-ko@1", "prompts_dir": prompts})
    v2 = settings.model_copy(update={"prompt": "detailed-ko", "prompts_dir": prompts})
    assert run([clip_dir], out, v1, engine=engine)["ok"] == 5
    assert run([clip_dir], out, v2, engine=engine)["ok"] == 5  # a new version is new work
    versions = sorted(r["prompt"]["version"] for r in read_records(out / "captions.jsonl"))
    assert versions == [1] * 5 + [2] * 5


def test_impossible_settings_stop_before_any_work(tmp_path, clip_dir, settings):
    with pytest.raises(ConfigError, match=r"> context 4096; use at most \d+ frames"):
        make_plan(settings.model_copy(update={"frames": 400}))
    with pytest.raises(ConfigError, match="adapter folder does not exist"):
        make_plan(settings.model_copy(update={"adapter": str(tmp_path / "nope")}))
    with pytest.raises(ConfigError, match="model folder does not exist"):
        make_plan(settings.model_copy(update={"model": str(tmp_path / "nope")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no videos"):
        run([clip_dir, tmp_path / "empty"], tmp_path / "out", settings)
    with pytest.raises(ConfigError, match="does not exist"):
        run([tmp_path / "missing"], tmp_path / "out", settings)
    assert not (tmp_path / "out" / "captions.jsonl").exists()
