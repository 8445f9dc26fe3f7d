"""Reading a folder of AI-Hub 대한민국 배경영상 label JSON files as references.

The Korean caption is at ``caption.korean``, the category at ``category`` (``category.main`` when
it is an object), the video's file name at ``filename`` (or the label file's own name). A label
names no time range: each applies to its whole video.
"""

from __future__ import annotations

import json
from pathlib import Path

from captioner.evaluation.inputs import Entry, ReferenceLimits, category_text


def read_aihub(folder: Path, limits: ReferenceLimits) -> tuple[list[Entry], list[str]]:
    """The entries of a label folder, and the problems found (each naming its file)."""
    entries: list[Entry] = []
    problems: list[str] = []
    files = sorted(folder.rglob("*.json"))
    if not files:
        return [], [f"{folder}: no *.json label files in this folder"]
    sizes = {file: file.stat().st_size for file in files}
    if too_large := limits.file_problem(folder, sum(sizes.values()), "label files"):
        return [], [too_large]
    for file in files:
        if sizes[file] > limits.line_bytes:  # one label is one caption: never read a huge one
            problems.append(limits.line_problem(str(file), "a label file", sizes[file]))
            continue
        try:
            label = json.loads(file.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as exc:
            problems.append(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})")
            continue
        except json.JSONDecodeError as exc:
            problems.append(f"{file}:{exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})")
            continue
        if not isinstance(label, dict):
            problems.append(f"{file}: expected a JSON object")
            continue
        caption = label.get("caption")
        text = caption.get("korean") if isinstance(caption, dict) else None
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{file}: no Korean caption at caption.korean")
            continue
        video = _aihub_video_name(label) or file.name
        entries.append(Entry(video, [text], _aihub_category(label), str(file)))
    return entries, problems


# Nested objects where a label may keep the clip's file name or category.
_AIHUB_BLOCKS = ("video", "video_info", "clip", "clip_info", "metadata")


def _aihub_video_name(label: dict) -> str | None:
    """The clip's file name, top-level or in a nested video/clip/metadata block."""
    blocks = [label] + [label[k] for k in _AIHUB_BLOCKS if isinstance(label.get(k), dict)]
    for block in blocks:
        for key in ("filename", "file_name", "video_name", "video_id"):
            value = block.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _aihub_category(label: dict) -> str | None:
    if "category" in label:
        return category_text(label["category"])
    for key in _AIHUB_BLOCKS:
        block = label.get(key)
        if isinstance(block, dict) and "category" in block:
            return category_text(block["category"])
    return None
