"""Discovery on folders as people have them: every common extension, junk left out and counted,
symlinked folders followed once, files still being copied held back, any file name."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from captioner.sources import VIDEO_EXTENSIONS, SourceError, find_videos, raw_name, record_path, video_id


def touch(path: Path, age_s: float = 600.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"0")
    when = time.time() - age_s
    os.utime(os.fsencode(path), (when, when))
    return path


def test_every_common_extension_in_any_case(tmp_path):
    names = ["a.mp4", "b.M4V", "c.MTS", "d.m2ts", "e.ts", "f.3gp", "g.MPG", "h.mpeg", "i.flv", "j.WMV", "k.mov",
             "l.webm", "m.mkv", "n.avi", "o.VOB", "p.mxf"]  # fmt: skip
    for name in names + ["notes.txt", "cover.jpg", "subs.srt"]:
        touch(tmp_path / name)
    found = find_videos([tmp_path])
    assert sorted(p.name for p in found.videos) == sorted(names)
    assert all(Path(name).suffix.lower() in VIDEO_EXTENSIONS for name in names)


def test_hidden_and_appledouble_files_are_ignored_and_counted(tmp_path):
    touch(tmp_path / "clip.mp4")
    touch(tmp_path / "._clip.mp4")  # macOS metadata beside the clip
    touch(tmp_path / ".hidden.mov")
    touch(tmp_path / ".Trashes" / "old.mp4")  # a hidden folder is not searched
    found = find_videos([tmp_path])
    assert [p.name for p in found.videos] == ["clip.mp4"]
    assert sorted(p.name for p in found.ignored) == ["._clip.mp4", ".hidden.mov"]
    only_junk = tmp_path / "junk"
    touch(only_junk / "._a.mp4")
    assert "no videos" in find_videos([only_junk]).describe_empty(only_junk)
    assert "1 hidden or AppleDouble files ignored" in find_videos([only_junk]).describe_empty(only_junk)


def test_symlinked_folders_are_followed_once(tmp_path):
    real = tmp_path / "library" / "2024"
    touch(real / "x.mp4")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(real, root / "linked")  # a linked folder
    os.symlink(root, root / "linked-loop")  # and a link back up the tree
    found = find_videos([root])
    assert [p.relative_to(root).as_posix() for p in found.videos] == ["linked/x.mp4"]


def test_files_still_being_written_are_held_back(tmp_path):
    old = touch(tmp_path / "old.mp4")
    fresh = touch(tmp_path / "fresh.mp4", age_s=1)
    found = find_videos([tmp_path], settle_seconds=60)
    assert (found.videos, found.settling) == ([old], [fresh])
    assert find_videos([tmp_path]).videos == [fresh, old]  # 0 = no such check


def test_any_file_name_has_a_text_form_and_its_exact_bytes(tmp_path):
    raw = bytes(tmp_path) + "/서울 야경.mp4".encode("cp949")  # a Korean name from a Windows zip
    path = Path(os.fsdecode(raw))
    touch(path)
    found = find_videos([tmp_path])
    assert found.videos == [path]
    shown = video_id(path)
    shown.encode("utf-8")  # valid text for JSON, Redis and HTML
    assert "\\x" in shown and raw_name(path) is not None
    assert record_path({"video": shown, "video_raw": raw_name(path)}) == path
    korean = tmp_path / "부산 [2024].mp4"
    assert video_id(korean) == str(korean) and raw_name(korean) is None
    assert record_path({"video": video_id(korean), "video_raw": None}) == korean


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(SourceError, match="missing: folder does not exist"):
        find_videos([tmp_path / "missing"])


def test_run_can_wait_for_files_still_being_written(tmp_path):
    from captioner.sources import discover, wait_until_settled

    old = touch(tmp_path / "old.mp4")
    fresh = touch(tmp_path / "fresh.mp4", age_s=0)
    found = discover([tmp_path], settle_seconds=1.0)
    assert (found.videos, found.settling) == ([old], [fresh])
    wait_until_settled(found, 1.0, poll_s=0.1)
    assert (found.videos, found.settling) == ([fresh, old], [])
    assert time.time() - fresh.stat().st_mtime >= 1.0  # released only once it had stopped changing
