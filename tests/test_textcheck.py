"""Text guards: U+FFFD and mojibake are flagged; normal captions of any kind are not.

The mojibake here is made the way it happens: UTF-8 bytes of real Korean text decoded with the
wrong codec (CP949, Windows-1252, Latin-1), with the decoder replacing or dropping what it cannot
read, as Python, Excel and editors do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.records import CaptionRecord
from captioner.textcheck import MOJIBAKE, REPLACEMENT_CHAR, looks_like_mojibake, mojibake_encoding, text_flags

ROOT = Path(__file__).resolve().parent.parent


def _references() -> list[str]:
    """The Korean references shipped with the project (samples/ and eval/)."""
    texts = []
    for path in [ROOT / "samples" / "references.jsonl", *sorted((ROOT / "eval").glob("*.jsonl"))]:
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    texts += json.loads(line)["references"]
    return texts


REFERENCES = _references()

KOREAN = [
    "서울 도심의 고층 빌딩 사이로 차량들이 빠르게 지나가고, 보행자들이 횡단보도를 건넌다.",
    "비 오는 날 우산을 쓴 사람들이 좁은 골목길을 걸어간다.",
    "한옥 마을의 기와지붕 위로 눈이 소복이 쌓여 있다.",
    "해질녘 붉은 노을이 강물에 비치고, 다리 위로 불빛이 하나둘 켜진다.",
    "드론으로 촬영한 넓은 논밭이 초록색과 노란색으로 나뉘어 펼쳐진다.",
    "카메라가 천천히 오른쪽으로 이동하며 항구에 정박한 배들을 보여준다.",
    "밤하늘에 불꽃놀이가 터지고 사람들이 환호한다.",
    "눈 쌓인 소나무 숲 사이로 햇살이 비친다.",
    "고양이가 매트 위에 앉았다",
    "기차가 강을 건넌다",
]

NORMAL = KOREAN + [
    # Korean mixed with English, digits, units and punctuation
    "LED 조명이 켜진 무대 위에서 가수가 노래를 부른다.",
    "KTX 열차가 터널을 빠져나와 들판을 달린다.",
    "CCTV 화면에 주차장의 차량 3대가 보인다.",
    "2024년 여름, 해운대 해수욕장에 피서객 수천 명이 모였다.",
    "오전 9시 30분, 출근길 지하철역이 붐빈다.",
    "기온은 영하 5℃이고 바람이 강하게 분다.",
    "영상 길이: 00:15 / 해상도: 1920×1080",
    "가격표에는 ₩15,000이라고 적혀 있다.",
    "“안녕하세요”라고 적힌 간판이 보인다.",
    "‘맛집’이라는 간판 아래로 사람들이 줄을 서 있다…",
    "화면 왼쪽 → 오른쪽으로 자전거가 지나간다.",
    "나무·꽃·새가 어우러진 정원",
    "café 앞에 놓인 의자",
    "ㅋㅋㅋ 웃는 얼굴의 이모티콘 ㅎㅎ",
    "기차가 강을\u2028건넌다",
    # emoji
    "아이들이 공원에서 뛰어논다 😊",
    "고양이가 창가에서 졸고 있다 🐱☀️",
    # Hanja in moderation, and rare but real syllables
    "景福宮의 勤政殿 앞마당에 관광객들이 모여 있다.",
    "광화문(光化門) 앞에서 수문장 교대식이 열린다.",
    "大韓民國 서울特別市의 야경.",
    "서울 Seoul 釜山 Busan 東京 Tokyo",
    "똠얌꿍을 파는 태국 음식점 앞 거리.",
    "햏자들이 모인 커뮤니티 화면이 보인다.",
    # English and other languages
    "A red car drives from left to right across the frame.",
    "Seoul at night: the Han River bridges light up.",
    "Crème brûlée and café au lait on a table — très chic!",
    "Zürich, São Paulo, Kraków, Ærøskøbing, Þingvellir",
    "naïve résumé «voilà…» ¡Hola! ¿Qué tal? 50 °C ± 2 µm © ® ™",
    "The price is €5 and £4 — 10% off ½ price",
    "Москва ночью, огни города",
    "東京の夜景が美しい。",
    "北京的夜景非常美丽。",
    "12345 67890 !@#$%^&*()",
    "",
]


@pytest.mark.parametrize("text", NORMAL + REFERENCES)
def test_normal_text_has_no_flags(text):
    assert text_flags(text) == []
    assert mojibake_encoding(text) is None


def test_the_normal_list_is_large_and_holds_the_shipped_references():
    assert len(REFERENCES) >= 10
    assert len(NORMAL) >= 30


def test_none_and_empty_have_no_flags():
    assert text_flags(None) == [] and text_flags("") == []


def _sloppy_windows_1252(data: bytes) -> str:
    """What Windows does with Windows-1252: the five undefined bytes become C1 controls."""
    return "".join(data[i : i + 1].decode("cp1252", errors="ignore") or chr(data[i]) for i in range(len(data)))


# (how the UTF-8 bytes were misread, the codec family mojibake_encoding names)
MISREADINGS = {
    "cp949, errors=replace": (lambda b: b.decode("cp949", errors="replace"), "cp949"),
    "cp949, errors=ignore": (lambda b: b.decode("cp949", errors="ignore"), "cp949"),
    "windows-1252, errors=replace": (lambda b: b.decode("cp1252", errors="replace"), "windows-1252"),
    "windows-1252, errors=ignore": (lambda b: b.decode("cp1252", errors="ignore"), "windows-1252"),
    "windows-1252, C1 controls kept": (_sloppy_windows_1252, "windows-1252"),
    "latin-1": (lambda b: b.decode("latin-1"), "latin-1"),
}


@pytest.mark.parametrize("misreading", MISREADINGS)
@pytest.mark.parametrize("text", KOREAN + REFERENCES)
def test_korean_misread_is_mojibake(text, misreading):
    decode, family = MISREADINGS[misreading]
    garbled = decode(text.encode("utf-8"))
    assert garbled != text
    assert MOJIBAKE in text_flags(garbled), garbled
    assert looks_like_mojibake(garbled)
    encoding = mojibake_encoding(garbled)
    if family == "cp949":
        assert encoding == "cp949"
    else:  # ftfy may name Latin-1 or Windows-1252: the same bytes for these characters
        assert encoding in ("latin-1", "windows-1252", "latin-1/windows-1252"), encoding


def test_the_well_known_examples():
    sloppy = "ë°”ë‹¤ê°€ ë³´ì\x9d¸ë‹¤"
    assert sloppy == _sloppy_windows_1252("바다가 보인다".encode("utf-8"))
    assert mojibake_encoding(sloppy) == "windows-1252"
    assert mojibake_encoding("ë°”ë‹¤ê°€ ë³´ì¸ë‹¤") == "latin-1/windows-1252"  # 0x9D dropped: fixed in pieces
    assert mojibake_encoding("諛붾떎媛 蹂댁씤떎") == "cp949"  # "바다가 보인다" read as CP949, errors="ignore"
    assert text_flags("諛붾떎媛� 蹂댁씤�떎") == [REPLACEMENT_CHAR, MOJIBAKE]  # the same, errors="replace"


def test_mojibake_inside_good_korean_text():
    # One pasted word that went through a wrong decoding (an apostrophe as Windows-1252).
    assert text_flags("그는 donâ€™t 라고 말했다") == [MOJIBAKE]


@pytest.mark.parametrize(
    "text",
    [
        "바다가 보인다\ufffd",  # generation stopped inside a character
        "바다가 보인다".encode("utf-8")[:-1].decode("utf-8", errors="replace"),
        ("하늘".encode("utf-8")[:4] + "과 바다".encode("utf-8")).decode("utf-8", errors="replace"),
        "\ufffd\ufffd\ufffd",
        "A caption with a broken \ufffd character.",
    ],
)
def test_replacement_character_is_flagged_and_is_not_mojibake_by_itself(text):
    assert text_flags(text) == [REPLACEMENT_CHAR]


def test_nfd_korean_is_not_flagged():
    import unicodedata

    assert text_flags(unicodedata.normalize("NFD", KOREAN[0])) == []


def test_caption_record_carries_text_flags_and_old_lines_lack_them():
    record = CaptionRecord("/v/a.mp4", "ok", "바다", None, 8, "m", None, {})
    assert record.text_flags == []
    assert json.loads(record.to_json())["text_flags"] == []


def test_a_built_record_gets_its_flags_from_the_caption():
    from captioner.records import Provenance, failed_record

    made = Provenance("m", None, None, {"name": "p", "version": 1, "sha": "x"}, "cpu", 8, "deterministic")
    garbled = "바다가 보인다".encode("utf-8").decode("cp949", errors="replace")
    record = made.stamp(Path("/v/a.mp4"), status="ok", caption=garbled, error=None)
    assert record.text_flags == [REPLACEMENT_CHAR, MOJIBAKE]
    assert json.loads(record.to_json())["text_flags"] == [REPLACEMENT_CHAR, MOJIBAKE]
    clean = made.stamp(Path("/v/b.mp4"), status="ok", caption="바다가 보인다", error=None)
    assert clean.text_flags == []
    failed = failed_record(made, Path("/v/c.mp4"), "bad")
    assert failed.text_flags == []
