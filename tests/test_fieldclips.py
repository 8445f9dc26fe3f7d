"""Self-check of tests/fieldclips.py: every clip is what its manifest says, by PyAV's own decoding.

Nothing here uses the project's frame code (decord): PyAV decodes every frame, the display
matrix and the sample aspect ratio it reports are applied, and the labels, times, orientation
and size must equal the manifest, which fieldclips computed from how it made each clip.
"""

from __future__ import annotations

import os
import time
import unicodedata
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests import fieldclips as fc

TIME_TOLERANCE = 0.0011  # Matroska, WebM, FLV and ASF store milliseconds
VIDEO_KINDS = [spec.kind for spec in fc.SPECS]


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> dict[str, fc.FieldClip]:
    folder = tmp_path_factory.mktemp("field")
    started = time.perf_counter()
    clips = fc.write_field_folder(folder)
    elapsed = time.perf_counter() - started
    assert elapsed < 30, f"writing the field folder took {elapsed:.1f} s"
    return fc.by_kind(clips)


def _resize(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if (picture.shape[1], picture.shape[0]) == size:
        return picture
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BILINEAR))


def _short_side(size: tuple[int, int], short: int = 64) -> tuple[int, int]:
    w, h = size
    scale = short / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _decode(clip: fc.FieldClip):
    """(stream facts, [(time, rotation, rgb picture)]) of every frame PyAV presents."""
    import av

    with av.open(str(clip.path)) as container:
        stream = container.streams.video[0]
        facts = {
            "frames": stream.frames,
            "sar": stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or Fraction(1),
            "codec": stream.codec_context.name,
            "color_range": int(stream.codec_context.color_range),
            "container_duration": container.duration,
        }
        frames = [(f.time, f.rotation, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return facts, frames


def _keyframes(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size and p.is_keyframe)


# --------------------------------------------------------------------------- the label itself


@pytest.mark.parametrize("size", [(160, 90), (90, 160), (64, 64), (720, 576)])
def test_label_round_trips_and_survives_downscaling(size):
    for index in range(256):
        picture = fc.draw_frame(index, *size)
        assert fc.read_label(picture) == index
        assert fc.check_upright(picture) is None
        assert fc.check_range(picture) is None
        small = _resize(picture, _short_side(size))
        assert fc.read_label(small) == index, (index, small.shape)
        assert fc.check_upright(small) is None


def test_check_upright_rejects_turned_mirrored_and_range_shifted_pictures():
    picture = fc.draw_frame(0b1010_0110, 160, 90)
    assert fc.check_upright(np.rot90(picture, 2)) is not None
    assert fc.check_upright(picture[:, ::-1]) is not None
    assert fc.check_upright(picture[::-1]) is not None
    sideways = _resize(np.ascontiguousarray(np.rot90(fc.draw_frame(5, 90, 160))), (90, 160))
    assert fc.check_upright(sideways) is not None
    # full-range gray 180 read as limited: (180 - 16) * 255 / 219 = 191
    shifted = picture.copy()
    shifted[picture == fc.GRAY] = 191
    assert fc.check_upright(shifted) is None  # within +-12 ...
    assert fc.check_range(shifted) is not None  # ... but not +-5


# --------------------------------------------------------------------------- the folder


def test_folder_has_every_kind(field):
    assert fc.missing_encoders() == []
    assert sorted(field) == sorted(fc.KINDS)
    for clip in field.values():
        assert os.path.lexists(clip.fspath), clip.kind
        if clip.expect != "failed":
            assert clip.path.stat().st_size > 0


@pytest.mark.parametrize("kind", VIDEO_KINDS)
def test_clip_decodes_as_its_manifest_says(field, kind):
    clip = field[kind]
    facts, frames = _decode(clip)
    assert frames, "no frames decoded"
    assert facts["codec"] == clip.codec
    rotation = (-frames[0][1]) % 360
    assert rotation == clip.rotation, f"display matrix says {rotation}, manifest {clip.rotation}"
    sar = Fraction(facts["sar"])
    assert (sar.numerator, sar.denominator) == clip.sar
    h, w = frames[0][2].shape[:2]
    assert (w, h) == clip.coded_size
    display = (round(w * sar), h)
    if rotation in (90, 270):
        display = display[::-1]
    assert display == clip.display_size

    t0 = frames[0][0]
    if clip.start_s is not None:
        assert t0 == pytest.approx(clip.start_s, abs=TIME_TOLERANCE)
    got = []
    for t, frame_rotation, picture in frames:
        assert (-frame_rotation) % 360 == rotation
        shown = fc.upright(picture, rotation)
        full = _resize(shown, display)
        assert fc.check_upright(full) is None, (kind, t, fc.check_upright(full))
        assert fc.check_range(full) is None, (kind, t, fc.check_range(full))
        small = _resize(shown, _short_side(display))
        label = fc.read_label(full)
        assert fc.read_label(small) == label
        got.append((t - t0, label))
    assert [label for _, label in got] == [label for _, label in clip.presented]
    for (t, label), (want_t, _) in zip(got, clip.presented):
        assert t == pytest.approx(want_t, abs=TIME_TOLERANCE), f"label {label} at {t:.4f} s, expected {want_t:.4f} s"

    if clip.container in {"mp4", "mov", "ipod", "3gp"} and kind != "fragmented_mp4":
        assert facts["frames"] == clip.encoded_frames  # sample tables count every frame, hidden ones too
    if clip.keyframes is not None:
        assert _keyframes(clip.path) == clip.keyframes
    if clip.color_range == "pc":
        assert facts["color_range"] == 2  # AVCOL_RANGE_JPEG, read from the bitstream header


# --------------------------------------------------------------------------- how the special cases were made


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_in_the_tkhd_matrix(field, rotation):
    clip = field[f"rot{rotation}_mp4"]
    a, b, _, c, d, _, x, y, _ = fc.tkhd_matrix(clip.path)
    turn = {90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}[rotation]
    assert (a, b, c, d) == turn
    assert clip.coded_size == (160, 90)
    assert clip.display_size == ((90, 160) if rotation != 180 else (160, 90))


def test_edit_list_hides_lead_in_frames(field):
    import av

    clip = field["editlist_mp4"]
    with av.open(str(clip.path)) as container:
        stream = container.streams.video[0]
        assert stream.frames == 30
        packets = [(p.pts, p.is_discard) for p in container.demux(stream) if p.size]
    # decode order differs from presentation order (B-frames): the 10 earliest in time are discarded
    assert len(packets) == 30
    assert [discard for _, discard in sorted(packets)] == [True] * 10 + [False] * 20
    assert [label for _, label in clip.presented] == list(range(10, 30))
    with open(clip.fspath, "rb") as fh:
        assert b"elst" in fh.read()


def test_recorder_webm_has_no_duration_and_no_cues(field):
    import av

    clip = field["recorder_webm"]
    index = fc.matroska_index(clip.path)
    assert index["duration"] is False and index["cues"] is False and index["unknown_size_segment"] is True
    with av.open(str(clip.path)) as container:
        assert container.duration is None
        assert container.streams.video[0].frames == 0
        assert container.streams.audio[0].codec_context.name == "opus"
    seekable = fc.matroska_index(field["vp9_webm"].path)
    assert seekable["duration"] and seekable["cues"]


def test_full_range_samples_are_full_range(field):
    import av

    with av.open(str(field["h264_fullrange_mp4"].path)) as container:
        frame = next(container.decode(video=0))
    assert frame.color_range == 2
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
    gray_luma = luma[int(plane.height * 0.75), plane.width // 2]
    assert abs(int(gray_luma) - 180) <= 3  # limited range would store 16 + 180 * 219 / 255 = 171


def test_mp4_layouts(field):
    assert fc.mp4_top_boxes(field["faststart_mp4"].path)[:2] == ["ftyp", "moov"]
    assert fc.mp4_top_boxes(field["h264_mp4"].path)[-1] == "moov"
    boxes = fc.mp4_top_boxes(field["fragmented_mp4"].path)
    assert boxes.index("moov") < boxes.index("moof") and boxes.count("moof") == 2


def test_long_audio_and_start_offsets(field):
    import av

    with av.open(str(field["long_audio_mkv"].path)) as container:
        assert container.duration / 1e6 == pytest.approx(6.0, abs=0.1)
    assert field["long_audio_mkv"].presented[-1][0] == pytest.approx(1.9)
    for kind in ("offset_mkv", "offset_ts"):
        with av.open(str(field[kind].path)) as container:
            stream = container.streams.video[0]
            assert float(stream.start_time * stream.time_base) == pytest.approx(3600.0)


def test_names(field):
    folder = field["name_nfc"].path.parent
    raw = os.listdir(os.fsencode(folder))
    assert unicodedata.normalize("NFC", "서울 야경.mp4").encode() in raw
    nfd = unicodedata.normalize("NFD", "제주 해변.mp4").encode()
    assert nfd in raw and nfd != unicodedata.normalize("NFC", "제주 해변.mp4").encode()
    cp949 = field["name_cp949"].fspath
    with pytest.raises(UnicodeDecodeError):
        os.path.basename(cp949).decode("utf-8")
    assert os.path.basename(cp949).decode("cp949") == "부산 바다.mp4"
    assert "\udc00" <= max(field["name_cp949"].path.name) <= "\udcff"  # surrogate escapes
    assert field["name_brackets"].path.name == "[2024] 부산 [final].mp4"


def test_bad_and_ignored_files(field):
    import av

    apple = field["appledouble"].path
    data = apple.read_bytes()
    assert apple.name == "._서울 야경.mp4" and len(data) == 4096 and data[:4] == b"\x00\x05\x16\x07"
    assert (apple.parent / "서울 야경.mp4").is_file()
    hidden = field["hidden"]
    assert hidden.expect == "ignored" and hidden.path.name.startswith(".") and hidden.presented

    assert field["empty"].path.stat().st_size == 0
    with av.open(str(field["audio_only"].path)) as container:
        assert not container.streams.video and container.streams.audio

    with pytest.raises(av.error.InvalidDataError):
        av.open(str(field["truncated_moov_end"].path))

    with av.open(str(field["truncated_faststart"].path)) as container:
        assert container.streams.video[0].frames == 30  # the header promises 30 ...
        decoded = 0
        try:
            for _ in container.decode(video=0):
                decoded += 1
        except av.error.FFmpegError:
            pass  # ... and the data ends mid-packet
    assert 0 < decoded < 30 * 0.75

    for clip in field.values():
        if clip.expect == "failed":
            assert clip.reason and not clip.presented
