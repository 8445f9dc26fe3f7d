"""Reading references (JSONL, CSV, AI-Hub label folders) and caption records."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from captioner.evaluation.captions import load_captions
from captioner.evaluation.references import InputError, load_references, video_stem


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def aihub_label(filename: str | None, category: object, korean: str | None) -> dict:
    """A label in the layout of AI-Hub 대한민국 배경영상 상세묘사."""
    label: dict = {
        "metadata": {"duration": 15.5, "resolution": "1920x1080", "fps": 30},
        "caption": {"korean": korean, "english": None},
        "annotations": {"objects": ["바다"], "actions": ["부서지다"], "attributes": ["푸른"]},
    }
    if filename is not None:
        label["video_id"] = filename.rsplit(".", 1)[0]
        label["filename"] = filename
    if category is not None:
        label["category"] = category
    return label


def test_video_stem_handles_paths_and_nfd():
    assert video_stem("/data/clips/바다_001.mp4") == "바다_001"
    assert video_stem("C:\\clips\\바다_001.mp4") == "바다_001"
    assert video_stem("바다_001") == "바다_001"
    assert video_stem(unicodedata.normalize("NFD", "바다_001.mp4")) == "바다_001"


def test_jsonl_references_merge_and_categories(tmp_path):
    path = write_lines(
        tmp_path / "refs.jsonl",
        [
            json.dumps({"video": "/a/clip1.mp4", "references": ["바다가 보인다.", "파도가 친다."], "category": "자연"}),
            "",
            json.dumps({"video": "clip2", "references": ["도시의 밤"]}, ensure_ascii=False),
            json.dumps({"video": "clip1.mp4", "references": ["파도가 친다.", "해변이 있다."], "category": "도시"}),
        ],
    )
    refs = load_references(path)
    assert refs.kind == "jsonl"
    assert set(refs.clips) == {"clip1", "clip2"}
    # the repeated reference is kept once; the new one is added
    assert refs.clips["clip1"].references == ["바다가 보인다.", "파도가 친다.", "해변이 있다."]
    assert refs.clips["clip1"].category == "자연"
    assert refs.clips["clip2"].category is None
    assert any("refs.jsonl:4" in w and "도시" in w for w in refs.warnings)


def test_jsonl_malformed_lines_name_file_and_line(tmp_path):
    path = write_lines(
        tmp_path / "refs.jsonl",
        [
            json.dumps({"video": "ok.mp4", "references": ["좋다"]}),
            '{"video": "broken.mp4", "references": ["끝나지 않은',
            json.dumps({"references": ["비디오 없음"]}),
            json.dumps({"video": "empty.mp4", "references": []}),
            json.dumps(["not", "an", "object"]),
        ],
    )
    with pytest.raises(InputError) as info:
        load_references(path)
    problems = info.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert "invalid JSON" in problems[0]
    assert '"video"' in problems[1]


def test_csv_references_with_bom_multiline_and_blank_lines(tmp_path):
    path = tmp_path / "refs.csv"
    path.write_text(
        "\ufeffvideo,reference,category\n"
        "a.mp4,첫 번째 참조,자연\n"
        'a.mp4,"두 번째\n참조",자연\n'
        "\n"
        "b.mp4,세 번째 참조,\n",
        encoding="utf-8",
    )
    refs = load_references(path)
    assert refs.kind == "csv"
    assert refs.clips["a"].references == ["첫 번째 참조", "두 번째\n참조"]
    assert refs.clips["a"].category == "자연"
    assert refs.clips["b"].category is None


def test_csv_errors_give_true_line_numbers(tmp_path):
    path = tmp_path / "refs.csv"
    path.write_text(
        "video,reference\n"  # line 1
        'a.mp4,"여러 줄\n참조"\n'  # lines 2-3
        "\n"  # line 4
        ",참조만 있음\n",  # line 5
        encoding="utf-8",
    )
    with pytest.raises(InputError) as info:
        load_references(path)
    assert info.value.problems == [f"{path}:5: empty video"]


def test_csv_missing_column(tmp_path):
    path = tmp_path / "refs.csv"
    path.write_text("clip,caption\na.mp4,텍스트\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"refs\.csv:1: missing column\(s\) video, reference"):
        load_references(path)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "refs.csv"
    path.write_bytes("video,reference\na.mp4,바다\n".encode("cp949"))
    with pytest.raises(InputError, match="not UTF-8"):
        load_references(path)


def test_aihub_label_folder(tmp_path):
    labels = tmp_path / "labels"
    (labels / "자연").mkdir(parents=True)
    (labels / "도시").mkdir()
    (labels / "자연" / "N_0001.json").write_text(
        json.dumps(aihub_label("N_0001.mp4", {"main": "자연", "sub": "바다"}, "푸른 바다 위로 파도가 친다."), ensure_ascii=False),
        encoding="utf-8",
    )
    # no filename field: the label file's own name identifies the clip; category as a plain string
    (labels / "도시" / "C_0002.json").write_text(
        json.dumps(aihub_label(None, "도시", "밤거리에 불빛이 켜진다."), ensure_ascii=False), encoding="utf-8-sig"
    )
    refs = load_references(labels)
    assert refs.kind == "aihub"
    assert set(refs.clips) == {"N_0001", "C_0002"}
    assert refs.clips["N_0001"].references == ["푸른 바다 위로 파도가 친다."]
    assert refs.clips["N_0001"].category == "자연"
    assert refs.clips["C_0002"].category == "도시"


def test_aihub_bad_labels_are_named(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "good.json").write_text(json.dumps(aihub_label("good.mp4", "자연", "좋은 캡션")), encoding="utf-8")
    (labels / "no_caption.json").write_text(json.dumps(aihub_label("x.mp4", "자연", None)), encoding="utf-8")
    (labels / "broken.json").write_text('{\n  "caption": {\n    "korean": "끝\n', encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_references(labels)
    text = str(info.value)
    assert f"{labels / 'no_caption.json'}: no Korean caption at caption.korean" in text
    assert f"{labels / 'broken.json'}:3: invalid JSON" in text
    assert "good.json" not in text


def test_empty_folder_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="no \\*.json label files"):
        load_references(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_references(tmp_path / "nope.jsonl")


def record(video: str, status: str = "ok", caption: str = "캡션", model: str = "m", prompt_version: int = 1) -> str:
    return json.dumps(
        {
            "video": video,
            "status": status,
            "caption": caption if status == "ok" else "",
            "error": None if status == "ok" else "decode error",
            "frames": 8,
            "model": model,
            "adapter": None,
            "prompt": {"name": "detailed", "version": prompt_version},
        },
        ensure_ascii=False,
    )


def test_captions_last_record_per_video_wins(tmp_path):
    path = write_lines(
        tmp_path / "captions.jsonl",
        [
            record("/v/a.mp4", status="failed"),
            record("/v/b.mp4", caption="먼저"),
            record("/v/a.mp4", caption="다시 시도해서 성공"),
            record("/v/b.mp4", status="failed", prompt_version=2),
        ],
    )
    caps = load_captions(path)
    assert caps.records == 4
    assert caps.clips["a"].status == "ok" and caps.clips["a"].caption == "다시 시도해서 성공"
    assert caps.clips["b"].status == "failed" and caps.clips["b"].line == 4
    assert caps.versions_all == {"m | no adapter | prompt detailed@1": 3, "m | no adapter | prompt detailed@2": 1}
    assert caps.versions_evaluated == {"m | no adapter | prompt detailed@1": 1, "m | no adapter | prompt detailed@2": 1}


def test_captions_malformed_records_name_line(tmp_path):
    path = write_lines(
        tmp_path / "captions.jsonl",
        [
            record("/v/a.mp4"),
            "not json",
            json.dumps({"video": "/v/c.mp4", "caption": "상태 없음"}),
            json.dumps({"video": "/v/d.mp4", "status": "ok", "caption": 3}),
        ],
    )
    with pytest.raises(InputError) as info:
        load_captions(path)
    assert [p.split(": ", 1)[0] for p in info.value.problems] == [f"{path}:{n}" for n in (2, 3, 4)]


def test_captions_same_name_in_two_folders_is_warned(tmp_path):
    path = write_lines(tmp_path / "captions.jsonl", [record("/x/a.mp4"), record("/y/a.mp4")])
    caps = load_captions(path)
    assert len(caps.clips) == 1
    assert any("share the name 'a'" in w for w in caps.warnings)
