"""The captions `captioner eval` scores: an output folder or captions file read strictly, last record per video.

CAPTIONS is an output folder (its ``captions.jsonl`` and the part files queue workers write), that
folder's ``captions.jsonl`` (the part files are read too), or any other captions file (read alone).
The files and their order are those of `captioner.records.read_output`, through the same reader
(`captioner.records.folder.located_lines`); but where ``read_output`` logs and skips a bad line,
every malformed record here is an error naming its file and line (:class:`InputError`, exit status 2).
So is a file that is not UTF-8; a last line without a newline is read (the file may come from
another tool), and so is a file that starts with a byte-order mark.

Record selection: the records may hold several per video (a failed try and a later success, or
several model / adapter / prompt versions). The *last* record per video stem is evaluated (oldest
first: by ``created_at`` across files, file order within a second); for a long take captioned
window by window (records with a ``window``), the last record per stem and window index. The
newest record of a stem says which it is: a file captioned whole after its windows (or the
reverse) is evaluated as its newest run captioned it; every version seen, and the
versions of the records that were evaluated, are counted so the report can list them. References
name videos by stem, so different videos sharing a stem are one clip here, and a warning names
them; videos are told apart by the exact bytes of their paths (`captioner.sources.record_key`), so
a non-UTF-8 name shown as ``\\xff`` and a name spelling those four characters are two videos.

A record's own ``text_flags`` are used; records written before that field existed get theirs
computed here from the caption, by the same function (`captioner.textcheck.record_flags`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from captioner.evaluation.morphemes import normalize_text
from captioner.evaluation.references import InputError, name_stem
from captioner.evaluation.results import ANY_ADAPTER, CaptionSet, EvaluatedClip
from captioner.records import CAPTIONS_FILE, PARTS_DIR, VersionKey, output_folder
from captioner.records.folder import Line, located_lines, target_files
from captioner.sources import record_key, record_path, video_id
from captioner.textcheck import record_flags
from captioner.windows import record_window, window_problem


def caption_files(target: Path) -> list[Path]:
    """The files `captioner.records.read_output` reads for `target`, or an InputError saying why there are none.

    An output folder, or its ``captions.jsonl``, means the folder's ``captions.jsonl`` and its part
    files (``parts/*.jsonl``, ``parts/*/*.jsonl``); any other file is read alone.
    """
    target = Path(target)
    files = target_files(target)
    if not files:
        raise InputError([f"{output_folder(target)}: no caption records (no {CAPTIONS_FILE}, no {PARTS_DIR}/*.jsonl)"])
    if not files[0].exists():  # only a file read alone can be missing: a folder lists the files it has
        raise InputError([f"{target}: captions file not found"])
    return files


def record_problem(rec: dict[str, Any], where: str) -> str | None:
    """Why a JSON object is not a usable caption record, or None."""
    video, status, caption = rec.get("video"), rec.get("status"), rec.get("caption")
    if not isinstance(video, str) or not video.strip():
        return f'{where}: missing "video" path'
    if not isinstance(status, str) or not status:
        return f'{where}: missing "status" ("ok" or "failed")'
    if not isinstance(caption, str) and not (caption is None and status == "failed"):
        return f'{where}: "caption" must be a string'
    if rec.get("prompt") is not None and not isinstance(rec["prompt"], dict):
        return f'{where}: "prompt" must be an object ({{"name", "version", "sha"}})'
    if rec.get("created_at") is not None and not isinstance(rec["created_at"], str):
        return f'{where}: "created_at" must be an ISO time string'
    if problem := window_problem(rec.get("window")):
        return f'{where}: bad "window": {problem}'
    flags = rec.get("text_flags")
    if flags is not None and not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
        return f'{where}: "text_flags" must be a list of strings'
    try:
        record_key(rec)  # also what `records.read_output` requires of a record
    except (TypeError, ValueError):  # binascii.Error and UnicodeEncodeError are ValueErrors
        if rec.get("video_raw") is not None:
            return f'{where}: "video_raw" must be the base64 of the path\'s bytes'
        return f'{where}: "video" is not a file path (characters no file name holds)'
    return None


def read_caption_records(target: Path) -> list[Line]:
    """Every record of an output folder or captions file, strictly, oldest first.

    The same files and the same order as `captioner.records.read_output` (oldest first: by
    ``created_at`` across files, file order within a second), read by the same reader; but where
    ``read_output`` logs and skips a bad line, this raises :class:`InputError` naming the file and
    line of every malformed record. Each `Line` returned holds a usable record.
    """
    files = caption_files(target)
    lines = located_lines(files)
    problems = []
    for line in lines:
        problem = line.problem or record_problem(line.record, line.where)
        if problem:
            problems.append(problem)
    if problems:
        raise InputError(problems)
    return lines


def version_names(keys: list[VersionKey]) -> dict[VersionKey, str]:
    """How each version is named in reports: its label, plus its digest when another version shares the label."""
    labels = Counter(key.label() for key in set(keys))
    return {key: key.label() + (f" [{key.digest()}]" if labels[key.label()] > 1 else "") for key in keys}


def _of_adapter(target: Path, lines: list[Line], adapter: str | None) -> list[Line]:
    """The records of `adapter` (`ANY_ADAPTER`: all), or an InputError naming the adapters present."""
    if adapter == ANY_ADAPTER:
        return lines
    present = sorted({str(line.record.get("adapter") or "none") for line in lines})
    kept = [line for line in lines if line.record.get("adapter") == adapter]
    if not kept:
        raise InputError([f"{target}: no records of adapter {adapter or 'none'!r} (adapters: {', '.join(present)})"])
    return kept


def _evaluated_clip(line: Line, stem: str, version: str) -> EvaluatedClip:
    """A record as evaluation uses it: caption normalized, error as text, text flags known."""
    rec = line.record
    error = rec.get("error")
    return EvaluatedClip(
        stem=stem,
        video=rec["video"],
        status=rec["status"],
        video_raw=rec.get("video_raw"),
        caption=normalize_text(rec.get("caption") or ""),
        error=None if error is None else str(error),
        version=version,
        line=line.number,
        where=line.where,
        # Flags come from the raw caption: NFC would alter CP949 mojibake (see textcheck).
        text_flags=record_flags(rec),
        window=record_window(rec),
    )


def _shown(rec: dict[str, Any]) -> str:
    """A record's video as a warning names it: its `video` text, marked when that only shows the name."""
    return rec["video"] + (" (name bytes not UTF-8)" if rec.get("video_raw") else "")


def load_captions(target: Path, adapter: str | None = ANY_ADAPTER) -> CaptionSet:
    """Read the caption records of an output folder or captions file; the last record per video stem (and window) wins.

    `adapter` keeps only the records of one adapter (by the name records store; None: the base
    model), as when one run captioned with several. Raises :class:`InputError` naming the file and
    line of every malformed record, or naming the adapters present when `adapter` has no record.
    """
    target = Path(target)
    lines = _of_adapter(target, read_caption_records(target), adapter)
    names = version_names([VersionKey.of(line.record) for line in lines])
    clips: dict[str, EvaluatedClip] = {}
    windows: dict[str, dict[int, EvaluatedClip]] = {}
    windowed: dict[str, bool] = {}  # per stem: whether its newest record is of a window
    # Per stem, the videos seen (by exact path bytes: two names that show alike are two videos).
    paths_seen: dict[str, dict[bytes, str]] = {}
    versions: Counter = Counter()
    for line in lines:
        # The stem of the real file name: a name shown with \\xNN escapes must not split at them.
        stem = name_stem(video_id(record_path(line.record).name))
        version = names[VersionKey.of(line.record)]
        versions[version] += 1
        paths_seen.setdefault(stem, {})[record_key(line.record)] = _shown(line.record)
        clip = _evaluated_clip(line, stem, version)
        if clip.window is None:
            clips[stem] = clip
        else:
            windows.setdefault(stem, {})[clip.window.index] = clip
        windowed[stem] = clip.window is not None
    for stem, newest_is_window in windowed.items():  # the newest run's layout of each file counts
        (clips if newest_is_window else windows).pop(stem, None)
    if not clips and not windows:
        raise InputError([f"{target}: no caption records"])
    warnings = [
        f"{target}: {len(p)} different videos share the name {stem!r} ({', '.join(sorted(p.values())[:3])}); "
        "videos are matched by file name, so only the last record is evaluated"
        for stem, p in sorted(paths_seen.items())
        if len(p) > 1
    ]
    return CaptionSet(
        path=target,
        clips=clips,
        records=len(lines),
        versions_all=versions,
        warnings=warnings,
        adapter=adapter,
        windows={stem: dict(sorted(wins.items())) for stem, wins in windows.items()},
    )
