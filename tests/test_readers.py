"""The frame readers are exact: frames between keyframes equal a full decode's, pixel for pixel.

The clip is what makes skipping risky: a long group of pictures with B-frames, some of them
references (x264's B-pyramid), presented out of decode order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from captioner.demo.scenes import write_clip
from captioner.frames import FrameSpec, decode_clip
from captioner.frames.choose import decode_size
from captioner.frames.probe import probe
from captioner.frames.readers import read_decord, read_keyframes, read_pyav

SHORT_SIDE = 96


@pytest.fixture(scope="module")
def long_gop(tmp_path_factory) -> Path:
    """4 s at 30 fps, one keyframe per 60 frames, x264's B-frames (3, pyramid)."""
    return write_clip(tmp_path_factory.mktemp("readers") / "long_gop.mp4", "city", seconds=4, fps=30,
                      width=320, height=180, seed=3, grain=8, preset="medium", keyframe_interval=60)


def _full_decode(path: Path) -> dict[int, np.ndarray]:
    """Every frame, decoded in order with nothing skipped, at the readers' size, by timestamp."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        width, height = decode_size(stream.codec_context.width, stream.codec_context.height, SHORT_SIDE)
        return {
            frame.pts: frame.reformat(width=width, height=height, format="rgb24", src_color_range=frame.color_range,
                                      interpolation="AREA").to_ndarray()
            for frame in container.decode(stream)
        }


def _reference_frames(path: Path) -> int:
    """How many frames a decoder told to skip non-reference frames still returns."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        return sum(1 for _ in container.decode(stream))


def test_clip_has_skippable_b_frames(long_gop):
    """The clip exercises the skipping: B-frames out of order, some not referenced, one keyframe per 2 s."""
    info = probe(long_gop)
    assert info.frames == 120 and list(np.flatnonzero(info.keyframe)) == [0, 60]
    assert 0 < _reference_frames(long_gop) < info.frames


@pytest.mark.parametrize("picks", [
    [1, 2, 3, 7, 30, 59],  # the first group: B-frames, a P-frame, the frame before the next keyframe
    [61, 62, 90, 119],  # the second group, to the last frame
    [0, 5, 60, 64, 100],  # keyframes among them: each comes from its group's decode
    [13, 14, 15, 16, 17, 18],  # a run of neighbours, wanted B-frames between wanted references
    [118],
])
def test_pyav_between_keyframes_equals_full_decode(long_gop, picks):
    info = probe(long_gop)
    full = _full_decode(long_gop)
    decoded = read_pyav(long_gop, info, picks, SHORT_SIDE)
    assert decoded.decoder == "pyav"
    for frame, index in zip(decoded.frames, picks):
        assert np.array_equal(frame, full[int(info.pts[index])]), f"frame {index} differs from a full decode"


def test_repeats_and_order_kept(long_gop):
    info = probe(long_gop)
    full = _full_decode(long_gop)
    picks = [40, 3, 40, 77]
    decoded = read_pyav(long_gop, info, picks, SHORT_SIDE)
    assert all(np.array_equal(f, full[int(info.pts[i])]) for f, i in zip(decoded.frames, picks))


def test_keyframe_reader_agrees(long_gop):
    info = probe(long_gop)
    full = _full_decode(long_gop)
    decoded = read_keyframes(long_gop, info, [0, 60], SHORT_SIDE)
    assert np.array_equal(decoded.frames[1], full[int(info.pts[60])])


def test_decode_clip_uses_pyav_between_keyframes(long_gop):
    """Exact frames of a long-GOP clip lie between keyframes: PyAV serves them, equal to decord's choice of frames."""
    clip = decode_clip(long_gop, FrameSpec(8, SHORT_SIDE, tolerance=0.0))
    assert clip.decoder == "pyav"
    info = probe(long_gop)
    full = _full_decode(long_gop)
    picks = [int(np.argmin(np.abs(info.times - t))) for t in clip.times]
    assert all(np.array_equal(f, full[int(info.pts[i])]) for f, i in zip(clip.frames, picks))
    # decord (the earlier reader) returns the same frames up to its own scaler's rounding.
    other = read_decord(long_gop, info, picks, SHORT_SIDE)
    assert other.frames.shape == clip.frames.shape
    assert np.abs(other.frames.astype(int) - clip.frames.astype(int)).mean() < 8


@pytest.mark.parametrize("suffix", [".ts", ".mkv"])
def test_pyav_exact_in_other_containers(long_gop, tmp_path, suffix):
    """MPEG-TS seeks by byte guesses (a seek may land inside a group of pictures); Matroska by its Cues."""
    from captioner.bench.longtakes import write_long_take

    take = write_long_take(long_gop, tmp_path / f"take{suffix}", 8)
    info = probe(take)
    full = _full_decode(take)
    picks = [2, 61, 130, 150, 200, 239]
    decoded = read_pyav(take, info, picks, SHORT_SIDE)
    for frame, index in zip(decoded.frames, picks):
        assert np.array_equal(frame, full[int(info.pts[index])]), f"frame {index} differs from a full decode"


def test_pyav_exact_on_hevc_with_b_frames(tmp_path):
    """HEVC with a B-pyramid: non-reference pictures skipped, wanted ones (any kind) equal a full decode."""
    import av

    path = tmp_path / "hevc.mp4"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx265", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"x265-params": "keyint=60:min-keyint=60:bframes=4:b-pyramid=1:log-level=error"}
        for i in range(120):
            picture = (np.roll(base, i * 3, axis=1) // 2 + rng.integers(0, 40, base.shape)).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe(path)
    assert 0 < _reference_frames(path) < info.frames
    full = _full_decode(path)
    for picks in ([1, 2, 3, 7, 30, 59], [61, 63, 90, 119], [13, 14, 15, 16, 17, 18], [118]):
        decoded = read_pyav(path, info, picks, SHORT_SIDE)
        for frame, index in zip(decoded.frames, picks):
            assert np.array_equal(frame, full[int(info.pts[index])]), f"frame {index} differs from a full decode"
