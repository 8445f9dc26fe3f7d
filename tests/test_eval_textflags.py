"""`captioner eval` with damaged text: flagged captions counted and badged, mojibake references warned about.

A caption holding U+FFFD or mojibake, and a reference that looks like mojibake, are scored as they
are; the report, metrics.json and per_video.csv say which clips they are, and the warning about a
reference names its file, line and video.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest

from captioner.evaluation.command import EXIT_BAD_INPUT, EXIT_OK, run_eval
from captioner.evaluation.references import MAX_LISTED_PROBLEMS, load_references
from captioner.records import CaptionRecord
from captioner.textcheck import MOJIBAKE, REPLACEMENT_CHAR, text_flags

SEA = "푸른 바다 위로 하얀 파도가 부서진다."
FOREST = "울창한 숲 사이로 계곡물이 흐른다."
CITY = "도시의 거리에 사람들이 걸어간다."
MOUNTAIN = "눈 덮인 산봉우리 위로 구름이 지나간다."
RIVER = "강물 위로 작은 배가 천천히 떠내려간다."

BROKEN = FOREST[:-3] + "\ufffd"  # generation stopped inside a character
CP949 = CITY.encode("utf-8").decode("cp949", errors="replace")  # "?꾩떆??..." style
LATIN1 = MOUNTAIN.encode("utf-8").decode("latin-1")
REF_CP949 = RIVER.encode("utf-8").decode("cp949", errors="ignore")  # a reference file resaved by Excel


def record(video: str, caption: str, *, old: bool = False) -> str:
    """A line as `captioner run` writes it (`text_flags` set as the pipeline sets it), or as it did before the field."""
    rec = CaptionRecord(
        video=f"/nonexistent/{video}.mp4",
        status="ok",
        caption=caption,
        error=None,
        frames=8,
        model="m",
        adapter=None,
        prompt={"name": "detailed", "version": 1, "sha": "aaaaaaaaaaaa"},
        text_flags=text_flags(caption),
    )
    if not old:
        return rec.to_json()
    line = json.loads(rec.to_json())
    del line["text_flags"]
    return json.dumps(line, ensure_ascii=False)


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    refs = tmp_path / "refs.jsonl"
    rows = [
        {"video": "sea.mp4", "references": [SEA]},
        {"video": "forest.mp4", "references": [FOREST]},
        {"video": "city.mp4", "references": [CITY]},
        {"video": "mountain.mp4", "references": [MOUNTAIN]},
        {"video": "river.mp4", "references": [RIVER, REF_CP949]},
    ]
    refs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    captions = tmp_path / "captions.jsonl"
    lines = [
        record("sea", SEA),
        record("forest", BROKEN),
        record("city", CP949),
        record("mountain", LATIN1, old=True),  # no text_flags: computed at eval time
        record("river", RIVER),
    ]
    captions.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return captions, refs


def test_flags_are_counted_listed_and_warned(tmp_path, inputs, capsys, caplog):
    captions, refs = inputs
    assert json.loads(record("forest", BROKEN))["text_flags"] == [REPLACEMENT_CHAR]
    assert "text_flags" not in json.loads(record("mountain", LATIN1, old=True))
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING):
        assert run_eval(captions, refs, out) == EXIT_OK  # damaged text warns, never stops the run

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    counts = metrics["counts"]
    assert (counts["captions_replacement_char"], counts["captions_mojibake"]) == (2, 2)  # CP949's "replace" adds U+FFFD
    assert counts["scored"] == 5
    per_video = {row["video"]: row["text_flags"] for row in metrics["per_video"]}
    assert per_video == {
        "sea": [],
        "forest": [REPLACEMENT_CHAR],
        "city": [REPLACEMENT_CHAR, MOJIBAKE],
        "mountain": [MOJIBAKE],
        "river": [],
    }

    # The mojibake reference: counted, listed with its line, and warned about by file, line and video.
    assert metrics["references"]["text_flags"] == {REPLACEMENT_CHAR: 0, MOJIBAKE: 1}
    [flagged] = metrics["references"]["flagged"]
    assert flagged == {
        "source": f"{refs}:5",
        "video": "river.mp4",
        "index": 2,
        "flags": [MOJIBAKE],
        "encoding": "cp949",
    }
    [ref_warning] = [w for w in metrics["warnings"] if w.startswith(f"{refs}:5")]
    assert "river.mp4" in ref_warning and "mojibake" in ref_warning and "cp949" in ref_warning
    assert ref_warning in caplog.messages  # a logging warning
    assert any(w.startswith("2 of 5 evaluated captions look like mojibake") for w in metrics["warnings"])
    assert any(w.startswith("2 of 5 evaluated captions hold U+FFFD") for w in metrics["warnings"])

    printed = capsys.readouterr()
    assert "text: captions with U+FFFD: 2, mojibake: 2; references with U+FFFD: 0, mojibake: 1" in printed.out
    assert ref_warning not in printed.err  # logged once, not printed a second time
    assert "evaluated captions look like mojibake" in printed.err

    with (out / "per_video.csv").open(encoding="utf-8") as fh:
        csv_flags = {row["video"]: json.loads(row["text_flags"]) for row in csv.DictReader(fh)}
    assert csv_flags == per_video

    # The report: a badge on each flagged clip's card, the damaged-text tables, the warning.
    page = (out / "report.html").read_text(encoding="utf-8")
    titles = dict(re.findall(r'<div class="card">\s*<h3>(\w+)(.*?)<span class="scores">', page, re.S))
    assert set(titles) == {"sea", "forest", "city", "mountain", "river"}
    assert "flag-replacement_char" in titles["forest"] and "flag-mojibake" not in titles["forest"]
    assert "flag-replacement_char" in titles["city"] and "flag-mojibake" in titles["city"]
    assert "flag-mojibake" in titles["mountain"]
    assert "flag" not in titles["sea"] and "flag" not in titles["river"]
    section = re.search(r'<section id="text-flags">(.*?)</section>', page, re.S).group(1)
    captions_part, references_part = section.split("<h3>References")
    for video in ("forest", "city", "mountain"):
        assert f"<td>{video}</td>" in captions_part
    assert "<td>sea</td>" not in captions_part and "<td>river</td>" not in captions_part
    assert "<td>river.mp4</td>" in references_part and f"<td>{refs}:5</td>" in references_part
    assert "captions with U+FFFD 2, mojibake 2" in page
    warnings = re.search(r'<section id="warnings">(.*?)</section>', page, re.S).group(1)
    assert f"{refs}:5: reference 2 of river.mp4 looks like mojibake" in warnings
    # The mojibake reference is badged beside the river clip's references.
    river_card = page[page.index("<h3>river") :].split('<div class="card">')[0]
    assert 'class="flag flag-mojibake"' in river_card


def test_text_flags_of_the_wrong_type_are_bad_input(tmp_path, inputs, capsys):
    captions, refs = inputs
    line = json.loads(record("sea", SEA))
    line["text_flags"] = "mojibake"
    captions.write_text(json.dumps(line, ensure_ascii=False) + "\n", encoding="utf-8")
    assert run_eval(captions, refs, tmp_path / "report") == EXIT_BAD_INPUT
    assert f'{captions}:1: "text_flags" must be a list of strings' in capsys.readouterr().err


def test_a_wholly_misread_reference_file_gives_a_bounded_list_of_warnings(tmp_path, caplog):
    refs = tmp_path / "refs.csv"
    rows = [f"clip{i:02d}.mp4,{RIVER.encode('utf-8').decode('cp949', errors='replace')}" for i in range(30)]
    refs.write_text("video,reference\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        loaded = load_references(refs)
    assert len(loaded.flagged) == 30 and len(loaded.clips) == 30
    assert len(loaded.warnings) == MAX_LISTED_PROBLEMS + 1
    assert loaded.warnings[0].startswith(f"{refs}:2: reference 1 of clip00.mp4 looks like mojibake")
    assert loaded.warnings[-1].startswith(f"{refs}: 30 reference texts look damaged")
    assert caplog.messages == loaded.warnings
