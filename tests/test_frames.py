"""Frame stage: real H.264 clips decoded by decord in killable worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from captioner.frames import FrameDecoder, FrameError, decode_size, sample_frames, sample_indices
from captioner.sources import SourceError, find_videos
from captioner.synth import write_clip
from tests.badfiles import crashing_decode, hanging_decode, write_bad_files


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "nature.mp4", "nature", seconds=2, fps=10, width=320, height=180)


def test_indices_are_uniform_clamped_and_exactly_n():
    assert sample_indices(100, 4) == [12, 37, 62, 87]
    assert sample_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]  # short clip: repeats, never past the end
    for available in (1, 2, 7, 31, 1000):
        idx = sample_indices(available, 16)
        assert len(idx) == 16 and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < available


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
    frames = sample_frames(short, 8, short_side=64)
    assert frames.shape[0] == 8
    assert np.array_equal(frames[0], frames[1])  # repeated, not invented


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("empty", "empty (0 bytes)"),
        ("text", "not a readable video file"),
        ("image", "no video stream|not a readable video|decoding failed"),
        ("truncated", "not a readable video file"),
        ("truncated_faststart", "truncated or damaged: the header promises 30 frames, only"),
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
    with FrameDecoder(8, 64, workers=1, timeout=5, decode=hanging_decode) as decoder:
        futures = {name: decoder.submit(path) for name, path in files.items()}
        hung = decoder.submit(hang)
        after = decoder.submit(clip)  # queued behind the hung clip on the only worker
        for name, future in futures.items():
            assert isinstance(future.exception(timeout=60), FrameError), name
        with pytest.raises(FrameError, match="longer than 5 s; decoder process killed"):
            hung.result(timeout=60)
        assert after.result(timeout=60).frames.shape[0] == 8  # the pool replaced the killed worker

    crash = write_clip(tmp_path / "crash.mp4", "sea", seconds=1)
    with FrameDecoder(8, 64, workers=1, timeout=30, decode=crashing_decode) as decoder:
        crashed, after = decoder.submit(crash), decoder.submit(clip)
        with pytest.raises(FrameError, match=r"decoder process died \(exit code 139\)") as info:
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
