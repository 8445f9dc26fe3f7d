"""Frame stage: real H.264 clips decoded by decord in killable worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from captioner.demo.scenes import write_clip
from captioner.frames import FrameDecoder, FrameError, FrameSpec, choose_frames, decode_size, sample_frames
from captioner.sources import SourceError, find_videos
from tests.badfiles import crashing_decode, hanging_decode, write_bad_files


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "nature.mp4", "nature", seconds=2, fps=10, width=320, height=180)


def test_choice_is_time_uniform_distinct_and_exactly_n():
    times = np.arange(100) / 10.0
    none = np.zeros(100, dtype=bool)
    exact = choose_frames(times, none, 4, 0.0, 0.1)
    assert exact.indices == [12, 37, 62, 87]  # nearest the centres of 4 segments of 10 s (ties: the earlier)
    assert exact.shift_max <= 0.05 / exact.segment_s + 1e-9
    short = choose_frames(np.arange(3) / 10.0, np.array([True, False, False]), 8, 0.25, 0.1)
    assert len(short.indices) == 8 and short.indices == sorted(short.indices) and short.indices[-1] == 2
    for count in (8, 9, 31, 1000):
        pick = choose_frames(np.arange(count) / 30.0, np.ones(count, dtype=bool), 8, 0.5, 1 / 30)
        assert len(set(pick.indices)) == 8 and pick.indices == sorted(pick.indices) and pick.indices[-1] < count
    # Variable frame rate: targets follow time, not frame numbers.
    vfr = np.concatenate([np.arange(90) / 30.0, 3.0 + np.arange(10) / 2.0])  # 3 s at 30 fps, then 5 s at 2 fps
    pick = choose_frames(vfr, np.zeros(100, dtype=bool), 8, 0.0, 1 / 30)
    assert sum(t < 3.0 for t in pick.times) == 3  # 3 of 8 segments lie in the first 3 s of 8 s


def test_keyframes_serve_targets_only_within_the_tolerance():
    times = np.arange(300) / 30.0  # 10 s
    camera = np.zeros(300, dtype=bool)
    camera[::15] = True  # a keyframe every 0.5 s
    pick = choose_frames(times, camera, 8, 0.25, 1 / 30)
    assert all(camera[i] for i in pick.indices) and pick.shift_max <= 0.25
    one_key = np.zeros(300, dtype=bool)
    one_key[0] = True  # x264's default on a short clip: one keyframe
    pick = choose_frames(times, one_key, 8, 0.25, 1 / 30)
    assert len(set(pick.indices)) == 8 and pick.shift_max <= 0.25  # never the same picture 8 times
    assert choose_frames(times, camera, 8, 0.0, 1 / 30).indices == choose_frames(times, one_key, 8, 0.0, 1 / 30).indices


def test_without_a_keyframe_in_reach_the_cheapest_frame_in_reach_is_taken():
    times = np.arange(240) / 30.0  # 8 s, a keyframe every second: every target lies half-way between two
    keys = np.zeros(240, dtype=bool)
    keys[::30] = True
    pick = choose_frames(times, keys, 8, 0.25, 1 / 30)
    exact = choose_frames(times, keys, 8, 0.0, 1 / 30)
    assert [i % 30 for i in exact.indices] == [15] * 8  # exact: 15 frames to decode after each keyframe
    assert [i % 30 for i in pick.indices] == [8] * 8  # the earliest frame within a quarter second: 8
    assert 0.2 < pick.shift_max <= 0.25


def test_decode_size_keeps_aspect_and_scales_short_side():
    assert decode_size(1920, 1080, 336) == (598, 336)
    assert decode_size(1080, 1920, 336) == (336, 598)
    assert decode_size(200, 100, 336) == (200, 100)  # never upscale


def test_frames_decoded_at_model_size(clip):
    frames = sample_frames(clip, 8, short_side=64)
    assert frames.shape == (8, 64, 114, 3) and frames.dtype == np.uint8
    # The sun moves: sampled frames differ from each other.
    assert not np.array_equal(frames[0], frames[-1])
    full = sample_frames(clip, 8)
    assert full.shape == (8, 180, 320, 3)


def test_clip_shorter_than_n_frames(tmp_path):
    short = write_clip(tmp_path / "short.mp4", "sea", seconds=0.3, fps=10)  # 3 frames
    frames = sample_frames(short, 8, short_side=64, tolerance=0.25)
    assert frames.shape[0] == 8
    assert len({frame.tobytes() for frame in frames}) == 3  # the 3 frames repeated, none invented


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("empty", "empty (0 bytes)"),
        ("text", "not a video file, or a damaged one"),
        ("image", "a still image (png), not a video"),
        ("truncated", "file ends early (cut at about"),
        ("truncated_faststart", "file ends early (cut at about"),
        ("audio", "no video stream (contains: audio)"),
        ("directory", "not a regular file"),
        ("dangling", "does not exist"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, clip, kind, reason):
    files = write_bad_files(tmp_path / "bad", clip)
    with pytest.raises(FrameError) as info:
        sample_frames(files[kind], 8, 64)
    assert str(files[kind]) in str(info.value)
    assert any(part in info.value.reason for part in reason.split("|")), info.value.reason


def test_decoder_pool_survives_bad_hanging_and_crashing_clips(tmp_path, clip):
    files = write_bad_files(tmp_path / "bad", clip)
    hang = write_clip(tmp_path / "hang.mp4", "city", seconds=1)
    with FrameDecoder(FrameSpec(8, 64), workers=1, timeout=5, decode=hanging_decode) as decoder:
        futures = {name: decoder.submit(path) for name, path in files.items()}
        hung = decoder.submit(hang)
        after = decoder.submit(clip)  # queued behind the hung clip on the only worker
        for name, future in futures.items():
            assert isinstance(future.exception(timeout=60), FrameError), name
        with pytest.raises(FrameError, match="longer than 5 s; decoder process killed"):
            hung.result(timeout=60)
        assert after.result(timeout=60).frames.shape[0] == 8  # the pool replaced the killed worker

    crash = write_clip(tmp_path / "crash.mp4", "sea", seconds=1)
    with FrameDecoder(FrameSpec(8, 64), workers=1, timeout=30, decode=crashing_decode) as decoder:
        crashed, after = decoder.submit(crash), decoder.submit(clip)
        # pebble reports the death with the exit code, or (rarely, its only worker gone) as a broken pool.
        with pytest.raises(FrameError, match=r"decoder process died \((exit code 139|the pool had no worker left)\)") as info:
            crashed.result(timeout=60)
        assert str(crash) in str(info.value)
        assert after.result(timeout=60).video == str(clip)


def test_find_videos_recursive_and_clear_errors(tmp_path, clip):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.MP4", "a/deep/y.webm", "a/deep/notes.txt", "a/z.mkv"):
        (tmp_path / name).write_bytes(b"0")
    found = find_videos([tmp_path / "a", tmp_path / "a" / "deep"])
    assert [p.name for p in found.videos] == ["y.webm", "x.MP4", "z.mkv"]  # sorted by full path, no duplicates
    with pytest.raises(SourceError, match="missing.*does not exist"):
        find_videos([tmp_path / "missing"])
    with pytest.raises(SourceError, match="not a folder"):
        find_videos([tmp_path / "a" / "x.MP4"])
