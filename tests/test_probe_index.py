"""The probe reads a container's index instead of its packets (issue 21), on generated long takes.

Every take is made by `bench.longtakes.write_long_take` (packets of one 10 s take copied with
shifted timestamps), so a 2-hour take costs a second. An index costs 12-40 bytes a frame (MP4
sample tables, fragment headers, Matroska block headers) and opening any file with FFmpeg about
130 KB, so the takes carry 4-11 KB a frame (grain, or a bitrate): at 64x36 with flat drawings a
frame is 100-200 bytes and its index entry alone a sixth of that, which no probe reads in under 1%.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from captioner.bench.longtakes import write_long_take
from captioner.demo.scenes import write_clip
from captioner.frames import FrameDecoder, FrameError, FrameSpec
from captioner.frames.choose import choose_frames
from captioner.frames.probe import VideoInfo, probe, process_bytes_read

TWO_HOURS = 7200.0
TWENTY_MINUTES = 1200.0


@pytest.fixture(scope="module")
def takes(tmp_path_factory) -> dict[str, Path]:
    """A 2-hour MP4, a 20-minute 720p MP4, a 20-minute MKV and fragmented MP4, a 10-minute MPEG-TS."""
    folder = tmp_path_factory.mktemp("longtakes")
    # 96x64 with film grain: about 5 KB a frame at 5 fps (a 2-hour take is 176 MB).
    grainy = write_clip(folder / "grainy.mp4", "nature", seconds=10, fps=5, width=96, height=64,
                        grain=40, crf=10, keyframe_interval=5)
    hd = write_clip(folder / "hd.mp4", "city", seconds=10, fps=5, width=1280, height=720,
                    bitrate=400_000, keyframe_interval=5)
    # 160x96 with grain, about 11 KB a frame, for the 20-minute takes (66 MB): at 20 minutes the
    # 130 KB FFmpeg reads to open any file are a share a 2-hour take does not notice.
    heavy = write_clip(folder / "heavy.mp4", "mountain", seconds=10, fps=5, width=160, height=96,
                       grain=30, crf=10, keyframe_interval=5)
    flat = write_clip(folder / "flat.mp4", "sea", seconds=10, fps=5, width=64, height=36, keyframe_interval=5)
    return {
        "mp4 2h": write_long_take(grainy, folder / "take_2h.mp4", TWO_HOURS),
        "mp4 720p 20min": write_long_take(hd, folder / "take_720p.mp4", TWENTY_MINUTES),
        "mkv 20min": write_long_take(heavy, folder / "take.mkv", TWENTY_MINUTES),
        "fragmented mp4 20min": write_long_take(heavy, folder / "take_frag.mp4", TWENTY_MINUTES, fragmented=True),
        "mpegts 10min": write_long_take(flat, folder / "take.ts", 600.0),
        "avi mjpeg 10min": write_long_take(_mjpeg_avi(folder / "mjpeg.avi"), folder / "take.avi", 600.0),
    }


def _mjpeg_avi(path: Path) -> Path:
    """A 10 s intra-only AVI (MJPEG of noise, about 15 KB a frame at 320x180), as old cameras write."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=5)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuvj420p"
        for _ in range(50):
            picture = rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def probed(takes) -> dict[tuple[str, bool], tuple[VideoInfo, int]]:
    """(kind, use_index) -> the probe of that take and the bytes it read, each probed once."""
    return {
        (kind, use_index): _probe_reading(path, use_index=use_index)
        for kind, path in takes.items() if kind != "mpegts 10min"
        for use_index in (True, False)
    }


def _probe_reading(path: Path, **kwargs) -> tuple[VideoInfo, int]:
    """The probe of `path`, and the bytes this process read for it."""
    before = process_bytes_read()
    info = probe(path, **kwargs)
    return info, process_bytes_read() - before


def test_long_take_is_the_length_asked_and_decodes_anywhere(takes, probed):
    import av
    import decord

    path = takes["mp4 2h"]
    info = probed["mp4 2h", True][0]
    assert info.frames == 36_000 and info.duration_s == pytest.approx(TWO_HOURS)
    reader = decord.VideoReader(str(path))
    assert len(reader) == 36_000 and reader[25_003].shape == (64, 96, 3)
    with av.open(str(path)) as container:
        container.seek(int(5000 / container.streams.video[0].time_base), stream=container.streams.video[0])
        frame = next(container.decode(video=0))
        assert frame.time == pytest.approx(5000.0, abs=1.0)


@pytest.mark.parametrize("kind, source", [
    ("mp4 2h", "mp4 index"),
    ("mp4 720p 20min", "mp4 index"),
    ("mkv 20min", "matroska blocks"),
    ("fragmented mp4 20min", "mp4 fragments"),
    ("avi mjpeg 10min", "avi index"),
])
def test_probe_of_an_indexed_take_reads_under_one_percent_and_matches_the_scan(takes, probed, kind, source):
    path = takes[kind]
    info, read = probed[kind, True]
    assert info.timeline_from == source
    assert read < 0.01 * path.stat().st_size, f"{kind}: read {read:,} of {path.stat().st_size:,} bytes"
    scanned, scan_read = probed[kind, False]
    assert scanned.timeline_from == "scan" and scan_read > 0.9 * path.stat().st_size
    for name in ("pts", "times", "keyframe"):
        assert np.array_equal(getattr(info, name), getattr(scanned, name)), name
    for name in ("hidden", "open_gop", "frames", "duration_s", "codec", "coded_size", "sar", "notes"):
        assert getattr(info, name) == getattr(scanned, name), name


@pytest.mark.parametrize("tolerance", [0.0, 0.25])
def test_two_hour_frame_choice_from_the_index_equals_the_full_scan(probed, tolerance):
    indexed, scanned = probed["mp4 2h", True][0], probed["mp4 2h", False][0]
    for frames in (8, 32):
        a = choose_frames(indexed.times, indexed.keyframe, frames, tolerance, indexed.frame_s)
        b = choose_frames(scanned.times, scanned.keyframe, frames, tolerance, scanned.frame_s)
        assert a.indices == b.indices and a.times == b.times


def test_a_take_without_an_index_is_scanned_and_a_small_budget_fails_clearly(takes):
    path = takes["mpegts 10min"]
    info = probe(path)
    assert info.timeline_from == "scan" and info.frames == 3000
    with pytest.raises(FrameError) as bytes_error:
        probe(path, max_bytes=4096)
    assert str(path) in str(bytes_error.value)
    assert "no index this probe reads (mpegts)" in bytes_error.value.reason and "probe_max_bytes = 4,096" in bytes_error.value.reason
    assert "CAPTIONER_PROBE_MAX_BYTES" in bytes_error.value.reason
    with pytest.raises(FrameError, match="probe_max_seconds") as time_error:
        probe(path, max_seconds=1e-6)
    assert "CAPTIONER_PROBE_MAX_SECONDS" in time_error.value.reason


def test_an_indexed_take_needs_no_scan_budget(takes):
    info = probe(takes["mp4 2h"], max_bytes=4 * 1024 * 1024, max_seconds=5.0)
    assert info.frames == 36_000


def test_a_cut_take_with_its_index_first_fails_as_cut(takes, tmp_path):
    whole = takes["mp4 720p 20min"]  # faststart: the index is first, the media data after it
    cut = tmp_path / "cut.mp4"
    with open(whole, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(int(whole.stat().st_size * 0.6)))
    with pytest.raises(FrameError, match="file ends early"):
        probe(cut)


def test_the_decoder_process_reports_the_bytes_it_read(takes):
    path = takes["mp4 2h"]
    with FrameDecoder(FrameSpec(8, 64), workers=1, timeout=60) as decoder:
        clip = decoder.submit(path).result()
    assert clip.bytes_read is not None and 0 < clip.bytes_read < 0.02 * path.stat().st_size
    assert clip.facts()["bytes_read"] == clip.bytes_read


def test_index_and_scan_agree_on_every_kind_of_field_clip(tmp_path):
    """Edit lists, open GOPs, variable frame rates, 3600 s starts, fragments, WebM from a browser:
    the index gives the scan's timeline exactly, and a damaged file fails the same way."""
    from tests.fieldclips import write_field_folder

    from_index = set()
    for clip in write_field_folder(tmp_path / "field"):
        if clip.expect == "ignored" and clip.path.name.startswith("._"):
            continue
        outcomes = []
        for use_index in (True, False):
            try:
                outcomes.append(probe(clip.path, use_index=use_index))
            except FrameError as exc:
                outcomes.append(exc)
        indexed, scanned = outcomes
        if isinstance(scanned, FrameError):
            assert isinstance(indexed, FrameError), clip.kind
            assert re.match(r"file ends early \(cut at about \d+%", indexed.reason) or indexed.reason == scanned.reason
            continue
        assert not isinstance(indexed, FrameError), f"{clip.kind}: {indexed}"
        if indexed.timeline_from != "scan":
            from_index.add(indexed.timeline_from)
        for name in ("pts", "times", "keyframe"):
            assert np.array_equal(getattr(indexed, name), getattr(scanned, name)), (clip.kind, name)
        for name in ("hidden", "open_gop", "notes", "codec", "coded_size", "sar", "container"):
            assert getattr(indexed, name) == getattr(scanned, name), (clip.kind, name)
    assert from_index == {"mp4 index", "mp4 fragments", "matroska blocks", "avi index"}


def test_the_scan_budget_is_a_setting_carried_to_the_decoders(monkeypatch):
    from captioner.config import Settings
    from captioner.planning import frame_spec_for

    spec = FrameSpec(8)
    assert (Settings().probe_max_bytes, Settings().probe_max_seconds) == (spec.probe_max_bytes, spec.probe_max_seconds)
    monkeypatch.setenv("CAPTIONER_PROBE_MAX_BYTES", "4096")
    monkeypatch.setenv("CAPTIONER_PROBE_MAX_SECONDS", "2.5")
    planned = frame_spec_for(Settings(), 8, 336)
    assert (planned.probe_max_bytes, planned.probe_max_seconds) == (4096, 2.5)


def test_bytes_read_reaches_the_record_and_frames_json(takes):
    import json

    from captioner.engine.protocol import Generation
    from captioner.frames import decode_clip
    from captioner.frames.save import describe
    from captioner.records.record import Provenance, caption_record

    clip = decode_clip(takes["mp4 720p 20min"], FrameSpec(4, 64))
    assert isinstance(clip.bytes_read, int) and clip.bytes_read > 0
    made = Provenance("m", None, None, {"name": "p", "version": 1, "sha": "s"}, "cpu", 4, "deterministic")
    record = caption_record(made, clip, Generation("한 장면", 10, 0, 3, "stop"))
    assert json.loads(record.to_json())["bytes_read"] == clip.bytes_read
    assert describe(clip)["bytes_read"] == clip.bytes_read
