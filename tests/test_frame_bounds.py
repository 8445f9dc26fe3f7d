"""Bounded work per clip (issue 20): caps decided from the probe, an address-space limit on decoder
processes, and a bounded look at the top-level boxes of an MP4 FFmpeg cannot open.

Every file is written here with PyAV and decoded for real (decord and PyAV in the decoder pool).
"""

from __future__ import annotations

import tracemalloc
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from captioner.config import Settings
from captioner.demo.scenes import write_clip
from captioner.frames import FrameDecoder, FrameError, FrameSpec, decode_clip
from captioner.frames.probe import MAX_TOP_BOXES, probe
from captioner.planning import Plan


def write_video(
    path: Path, size: tuple[int, int], sar: tuple[int, int] = (1, 1), frames: int = 2, codec: str = "libx264"
) -> Path:
    """A short clip of flat grey frames, `size` (W, H) as coded, with the sample aspect ratio `sar`."""
    import av

    pix_fmt = "yuvj444p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = Fraction(1, 10)
        if sar != (1, 1):
            stream.codec_context.sample_aspect_ratio = Fraction(*sar)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 60 + 40 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """1.5 KB of the issue's kind: 384x384 coded, sample aspect 255:1, so 97920x384 as shown."""
    return write_video(tmp_path_factory.mktemp("wide") / "wide.mkv", (384, 384), sar=(255, 1))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("small") / "small.mkv", "city", seconds=1, fps=10)


def test_the_caps_are_settings_with_the_frame_specs_defaults(monkeypatch):
    settings = Settings()
    spec = FrameSpec(8)
    assert (settings.max_display_pixels, settings.max_aspect, settings.max_frames, settings.decoder_memory_mb) == (
        spec.max_display_pixels, spec.max_aspect, spec.max_frames, spec.decoder_memory_mb
    )
    assert (spec.max_display_pixels, spec.max_aspect, spec.max_frames) == (7680 * 4320, 10.0, 64)
    monkeypatch.setenv("CAPTIONER_MAX_ASPECT", "4")
    monkeypatch.setenv("CAPTIONER_DECODER_MEMORY_MB", "0")
    assert (Settings().max_aspect, Settings().decoder_memory_mb) == (4.0, 0)
    # A plan hands them to its decoder processes.
    plan = SimpleNamespace(frames=8, frame_size=336, settings=Settings(max_frames=16, max_display_pixels=10**6))
    assert Plan.frame_spec.fget(plan) == FrameSpec(
        8, 336, 0.25, max_display_pixels=10**6, max_aspect=4.0, max_frames=16, decoder_memory_mb=0
    )


def test_a_255_to_1_sample_aspect_fails_before_any_frame_is_decoded(wide):
    with pytest.raises(FrameError) as caught:
        decode_clip(wide, FrameSpec(2, 384))
    assert caught.value.reason == (
        "display size 97920x384 (coded 384x384, sample aspect 255:1) has aspect 255.0:1, above the limit 10:1 "
        "(CAPTIONER_MAX_ASPECT)"
    )
    # With the aspect allowed, its 37.6 million pixels a frame are still past the 8K cap.
    with pytest.raises(FrameError, match=r"display size 97920x384 is 37,601,280 pixels a frame, above the limit "
                       r"33,177,600 \(CAPTIONER_MAX_DISPLAY_PIXELS\)"):
        decode_clip(wide, FrameSpec(2, 384, max_aspect=300))
    # In a decoder process allowed 64 MiB beyond its libraries, the 2 frames of 97920x384 (215 MiB)
    # would fail for memory: the aspect error shows nothing of that size was allocated.
    with FrameDecoder(FrameSpec(2, 384, decoder_memory_mb=64), workers=1, timeout=60) as decoder:
        with pytest.raises(FrameError, match=r"aspect 255\.0:1, above the limit 10:1"):
            decoder.submit(wide).result()


def test_more_frames_than_the_cap_fail_by_name(small):
    with pytest.raises(FrameError, match=r"65 frames per clip asked for, above the limit 64 \(CAPTIONER_MAX_FRAMES\)"):
        decode_clip(small, FrameSpec(65))
    assert decode_clip(small, FrameSpec(65, max_frames=65)).frames.shape[0] == 65


def test_clips_under_the_caps_decode(tmp_path):
    # A 32:9 panorama (aspect 3.6) and an anamorphic 4:3 sample aspect (160x90 shown as 213x90).
    panorama = write_video(tmp_path / "panorama.mp4", (640, 180))
    anamorphic = write_video(tmp_path / "anamorphic.mkv", (160, 90), sar=(4, 3))
    assert decode_clip(panorama, FrameSpec(2, 90)).frames.shape == (2, 90, 320, 3)
    clip = decode_clip(anamorphic, FrameSpec(2))
    assert clip.frames.shape == (2, 90, 213, 3) and clip.display_size == (213, 90)
    # The caps are inclusive: exactly the limit passes.
    assert decode_clip(panorama, FrameSpec(2, 90, max_aspect=640 / 180, max_display_pixels=640 * 180)).frames.size


def test_the_address_space_limit_fails_one_clip_and_the_next_decodes_in_the_same_pool(tmp_path, small):
    # 4K at full size, 4:4:4: 25 MB a decoded picture, 100 MB of frames, as much again to stack
    # them; under the caps, but far past 64 MiB. The small clip takes about 11 MB.
    big = write_video(tmp_path / "uhd.avi", (3840, 2160), frames=4, codec="mjpeg")
    with FrameDecoder(FrameSpec(4, None, decoder_memory_mb=64), workers=1, timeout=60) as decoder:
        first, failed, after = decoder.submit(small), decoder.submit(big), decoder.submit(small)
        assert first.result().frames.shape == (4, 96, 160, 3)
        with pytest.raises(FrameError) as caught:
            failed.result()
        assert caught.value.path == str(big)
        assert caught.value.reason == (
            "decoder ran out of its 64 MiB address-space limit (CAPTIONER_DECODER_MEMORY_MB raises it)"
        )
        assert after.result().frames.shape == (4, 96, 160, 3)
    # Without the limit the same clip decodes.
    with FrameDecoder(FrameSpec(4, None, decoder_memory_mb=0), workers=1, timeout=60) as decoder:
        assert decoder.submit(big).result().frames.shape == (4, 2160, 3840, 3)


def test_a_decoder_process_aborted_at_the_limit_fails_its_clip_alone(tmp_path, small):
    # 1080p H.264 at full size, 16 frames, most through decord: refused memory, decord lets
    # std::bad_alloc escape and the process aborts (exit code -6; measured here), or the
    # allocation fails in PyAV. Either way the clip fails with the limit named, and the pool
    # replaces the process for the next clip.
    big = write_clip(tmp_path / "hd.mp4", "city", seconds=3, fps=10, width=1920, height=1080, preset="ultrafast",
                     keyframe_interval=10)
    with FrameDecoder(FrameSpec(16, None, 0, decoder_memory_mb=64), workers=1, timeout=60) as decoder:
        failed, after = decoder.submit(big), decoder.submit(small)
        with pytest.raises(FrameError, match=r"64 MiB address-space limit.*CAPTIONER_DECODER_MEMORY_MB raises it"):
            failed.result()
        assert after.result().frames.shape == (16, 96, 160, 3)


def test_an_mp4_of_many_tiny_boxes_is_judged_from_a_bounded_read(tmp_path):
    # ftyp, then 400,000 empty 8-byte boxes (3.2 MB): FFmpeg finds no index; the look at the boxes
    # that says why stops after MAX_TOP_BOXES of them and keeps none.
    path = tmp_path / "boxes.mp4"
    ftyp = (20).to_bytes(4, "big") + b"ftypisom" + bytes(4) + b"isom"
    path.write_bytes(ftyp + ((8).to_bytes(4, "big") + b"free") * 400_000)
    tracemalloc.start()
    try:
        with pytest.raises(FrameError) as caught:
            probe(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == (
        f"not a video file, or a damaged one: no MP4 index (moov) in its first {MAX_TOP_BOXES:,} top-level boxes"
    )
    assert peak < 1_000_000  # Python objects; keeping every box took 338 MB for 40 MB of them


def test_a_cut_mp4_is_still_told_apart_after_the_bound(tmp_path, small):
    # ftyp, a few boxes, then an mdat that claims more than the file has: the cut is found.
    path = tmp_path / "cut.mp4"
    ftyp = (20).to_bytes(4, "big") + b"ftypisom" + bytes(4) + b"isom"
    path.write_bytes(ftyp + ((8).to_bytes(4, "big") + b"free") * 5 + (10_000).to_bytes(4, "big") + b"mdat" + bytes(92))
    with pytest.raises(FrameError, match=r"file ends early \(cut at about 2%: its mdat box needs"):
        probe(path)
