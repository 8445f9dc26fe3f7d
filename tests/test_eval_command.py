"""run_eval end to end: outputs, counts of missing captions, regression gate, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import kiwipiepy
import pandas as pd
import pytest

from captioner.evaluation.command import EXIT_BAD_INPUT, EXIT_OK, EXIT_REGRESSION, run_eval

# Hand-computed METEOR (see tests/test_eval_meteor.py for the formula):
CAT = "고양이가 매트 위에 앉았다"  # 8 morphemes; identical caption: 1 - 0.5 * (1/8)^3
CAT_SAME = 1 - 0.5 / 8**3
TRAIN = "기차가 강을 건넌다"  # 6 morphemes; identical caption: 1 - 0.5 * (1/6)^3
TRAIN_SAME = 1 - 0.5 / 6**3
UNRELATED = "푸른 하늘"  # 푸르 ᆫ 하늘: no morpheme in common with TRAIN -> 0


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rec(video: str, caption: str | None, model: str = "m") -> dict:
    failed = caption is None
    return {
        "video": f"/nonexistent/{video}.mp4",
        "status": "failed" if failed else "ok",
        "caption": "" if failed else caption,
        "error": "decoding failed (bad header)" if failed else None,
        "frames": 8,
        "model": model,
        "adapter": None,
        "prompt": {"name": "detailed", "version": 1},
        "prompt_tokens": 100,
        "cached_tokens": 0,
        "output_tokens": 20,
        "finish_reason": "stop",
    }


@pytest.fixture
def refs(tmp_path) -> Path:
    return write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"video": "cat.mp4", "references": [CAT], "category": "도시"},
            {"video": "train.mp4", "references": [TRAIN], "category": "자연"},
            {"video": "sky.mp4", "references": ["하늘에 구름이 떠 있다."], "category": "자연"},
            {"video": "sea.mp4", "references": ["바다에서 해가 뜬다."], "category": "자연"},
        ],
    )


@pytest.fixture
def weak_run(tmp_path) -> Path:
    """cat perfect, train unrelated, sky failed, sea absent, zzz has no reference."""
    return write_jsonl(
        tmp_path / "weak.jsonl",
        [rec("cat", CAT), rec("train", UNRELATED), rec("sky", None), rec("zzz", "참조가 없는 영상")],
    )


@pytest.fixture
def strong_run(tmp_path) -> Path:
    return write_jsonl(tmp_path / "strong.jsonl", [rec("cat", CAT), rec("train", TRAIN), rec("sky", None)])


def test_outputs_and_counts(tmp_path, refs, weak_run, capsys):
    out = tmp_path / "report"
    assert run_eval(weak_run, refs, out) == EXIT_OK
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["meteor"] == pytest.approx((CAT_SAME + 0.0) / 2, abs=1e-12)
    lo, hi = metrics["meteor_ci"]
    assert lo <= metrics["meteor"] <= hi
    c = metrics["counts"]
    assert (c["scored"], c["failed"], c["no_caption"], c["missing_captions"], c["no_reference"]) == (2, 1, 1, 2, 1)
    assert c["coverage"] == pytest.approx(0.5)
    status = {row["video"]: row["status"] for row in metrics["per_video"]}
    assert status == {"cat": "scored", "train": "scored", "sky": "failed", "sea": "no_caption", "zzz": "no_reference"}
    by_video = {row["video"]: row for row in metrics["per_video"]}
    assert by_video["train"]["meteor"] == 0.0
    assert by_video["sky"]["meteor"] is None and by_video["sky"]["error"] == "decoding failed (bad header)"
    assert metrics["config"]["tokenizer"]["version"] == kiwipiepy.__version__
    assert metrics["config"]["meteor"]["alpha"] == 0.9
    cats = {row["category"]: row for row in metrics["per_category"]}
    assert (cats["도시"]["clips"], cats["도시"]["scored"]) == (1, 1)
    assert cats["도시"]["meteor"] == pytest.approx(CAT_SAME)
    assert (cats["자연"]["clips"], cats["자연"]["scored"], cats["자연"]["missing_captions"]) == (3, 1, 2)
    assert cats["자연"]["meteor"] == 0.0
    assert metrics["regression"] is False and metrics["comparison"] is None

    table = pd.read_csv(out / "per_video.csv")
    assert sorted(table["video"]) == ["cat", "sea", "sky", "train", "zzz"]
    assert json.loads(table.set_index("video").loc["cat", "references"]) == [CAT]

    html = (out / "report.html").read_text(encoding="utf-8")
    assert "video not found: /nonexistent/cat.mp4" in html  # placeholder, not a crash
    assert "decoding failed (bad header)" in html
    assert f"kiwipiepy {kiwipiepy.__version__}" in html

    printed = capsys.readouterr()
    assert "METEOR 0.4995" in printed.out
    assert "2 of 4 referenced clips have no caption" in printed.err


def test_regression_gate(tmp_path, refs, weak_run, strong_run, capsys):
    out = tmp_path / "cmp"
    assert run_eval(weak_run, refs, out, against=strong_run) == EXIT_REGRESSION
    cmp = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["comparison"]
    assert cmp["paired_clips"] == 2  # cat and train; sky failed in both
    assert cmp["meteor_baseline"] == pytest.approx((CAT_SAME + TRAIN_SAME) / 2, abs=1e-12)
    assert cmp["meteor_run"] == pytest.approx(CAT_SAME / 2, abs=1e-12)
    assert cmp["meteor_relative_change"] == pytest.approx(CAT_SAME / (CAT_SAME + TRAIN_SAME) - 1, abs=1e-12)
    assert cmp["regression"] is True
    assert cmp["regression_reasons"] == [f"METEOR {cmp['meteor_relative_change']:+.1%} on 2 clips scored by both runs"]
    assert "REGRESSION" in capsys.readouterr().err
    table = pd.read_csv(out / "per_video.csv").set_index("video")
    assert table.loc["train", "meteor_delta"] == pytest.approx(-TRAIN_SAME)
    assert table.loc["train", "caption_baseline"] == TRAIN
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="comparison"' in html and "REGRESSION" in html

    # The threshold is configurable: a 50% drop passes a 60% threshold.
    assert run_eval(weak_run, refs, tmp_path / "loose", against=strong_run, regression_threshold=0.6) == EXIT_OK
    # An improvement is never a regression.
    assert run_eval(strong_run, refs, tmp_path / "better", against=weak_run) == EXIT_OK


def test_coverage_drop_is_a_regression(tmp_path, refs, strong_run):
    # Same METEOR on the clips both runs scored, but the candidate fails on train:
    # coverage 1/4 against 2/4 must not pass the gate.
    fewer = write_jsonl(tmp_path / "fewer.jsonl", [rec("cat", CAT), rec("train", None), rec("sky", None)])
    out = tmp_path / "cov"
    assert run_eval(fewer, refs, out, against=strong_run) == EXIT_REGRESSION
    cmp = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["comparison"]
    assert cmp["paired_clips"] == 1 and cmp["meteor_relative_change"] == 0.0
    assert cmp["clips_lost"] == ["train"]
    assert len(cmp["regression_reasons"]) == 1 and cmp["regression_reasons"][0].startswith("coverage 25.0% vs 50.0%")


def test_malformed_captions_stop_with_file_and_line(tmp_path, refs, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps(rec("cat", CAT)) + "\n{broken\n", encoding="utf-8")
    assert run_eval(captions, refs, tmp_path / "out") == EXIT_BAD_INPUT
    assert f"{captions}:2: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_no_common_video_is_bad_input(tmp_path, refs, capsys):
    captions = write_jsonl(tmp_path / "captions.jsonl", [rec("other", CAT)])
    assert run_eval(captions, refs, tmp_path / "out") == EXIT_BAD_INPUT
    assert "no video matches the references" in capsys.readouterr().err


def test_all_failed_writes_report_but_fails(tmp_path, refs):
    captions = write_jsonl(tmp_path / "captions.jsonl", [rec("cat", None), rec("train", None)])
    out = tmp_path / "out"
    assert run_eval(captions, refs, out) == EXIT_BAD_INPUT
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["meteor"] is None and metrics["counts"]["failed"] == 2
    assert (out / "report.html").exists()


def test_mode_collapse_is_warned(tmp_path, refs):
    same = "이 영상은 아름다운 풍경을 보여줍니다."
    captions = write_jsonl(
        tmp_path / "captions.jsonl", [rec("cat", same), rec("train", same), rec("sky", same), rec("sea", same)]
    )
    out = tmp_path / "out"
    assert run_eval(captions, refs, out) == EXIT_OK
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    div = metrics["diversity"]
    assert div["distinct_captions"] == 1 and div["distinct_caption_ratio"] == 0.25
    assert div["top_openings"][0] == {"opening": "이 영상은", "count": 4, "share": 1.0}
    assert div["repeated_captions"] == [{"caption": same, "count": 4}]
    assert any("mode collapse" in w for w in metrics["warnings"])
    assert any("'이 영상은'" in w for w in metrics["warnings"])
