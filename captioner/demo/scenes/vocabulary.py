"""What a drawn clip shows (`SceneSpec`) and its Korean reference captions.

A clip is one of six scene families (mountains, city, sea, forest, river bridge, palace) plus a
time of day, a weather and the direction a large object moves in. `references(spec)` builds
captions from the attributes alone, one fixed phrase per attribute value, so every word of the
canonical caption is determined by what is visible.

Seeds: a seed only varies minor details and, through `random_spec`, the attributes. Training
uses low seeds; held-out checks should use seeds from `HELDOUT_SEED_BASE` (800000) up; the bundled
`samples/` use seeds from `SAMPLE_SEED_BASE` (900000) up, which neither may use.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

__all__ = [
    "CATEGORIES",
    "DIRECTIONS",
    "FAMILIES",
    "HELDOUT_SEED_BASE",
    "NAMED_SPECS",
    "SAMPLE_SEED_BASE",
    "SCENES",
    "TIMES",
    "WEATHERS",
    "Direction",
    "Family",
    "Scene",
    "SceneSpec",
    "TimeOfDay",
    "Weather",
    "random_spec",
    "references",
]

Scene = Literal["nature", "city", "sea"]
SCENES: tuple[Scene, ...] = ("nature", "city", "sea")
Family = Literal["mountain", "city", "sea", "forest", "bridge", "palace"]
TimeOfDay = Literal["morning", "day", "evening", "night"]
Weather = Literal["clear", "rain", "snow", "fog"]
Direction = Literal["left_to_right", "right_to_left"]
FAMILIES: tuple[Family, ...] = get_args(Family)
TIMES: tuple[TimeOfDay, ...] = get_args(TimeOfDay)
WEATHERS: tuple[Weather, ...] = get_args(Weather)
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)
CATEGORIES: dict[Family, str] = {
    "mountain": "자연", "city": "도시", "sea": "자연", "forest": "자연", "bridge": "도시", "palace": "건축물",
}
HELDOUT_SEED_BASE = 800_000
SAMPLE_SEED_BASE = 900_000


@dataclass(frozen=True)
class SceneSpec:
    """What a clip shows: the scene family and the attribute values its captions name."""

    family: Family
    time: TimeOfDay = "day"
    weather: Weather = "clear"
    direction: Direction = "left_to_right"

    @property
    def name(self) -> str:
        """A file-name stem that says what is drawn, e.g. ``city_night_rain_right_to_left``."""
        return f"{self.family}_{self.time}_{self.weather}_{self.direction}"


# Names `write_clip` takes: the families (daytime, clear, left to right) and the old scene names,
# drawn as their nearest family ("city" stays the night city it always was).
NAMED_SPECS: dict[str, SceneSpec] = {f: SceneSpec(f) for f in FAMILIES} | {
    "nature": SceneSpec("mountain"), "city": SceneSpec("city", "night"),
}
_COMBOS = [SceneSpec(f, t, w, d) for f in FAMILIES for t in TIMES for w in WEATHERS for d in DIRECTIONS]


def random_spec(seed: int) -> SceneSpec:
    """The spec of clip `seed`: every aligned block of 192 seeds holds each combination once, shuffled."""
    block, index = divmod(seed, len(_COMBOS))
    order = np.random.default_rng([block, 0x5CE7E]).permutation(len(_COMBOS))
    return _COMBOS[int(order[index])]


# One phrase per attribute value, the same in every family, so each can be learnt on its own;
# each table holds (canonical phrase, paraphrase phrase). The paraphrase is for evaluation only.
_TIME_TEXT: dict[TimeOfDay, tuple[str, str]] = {
    "morning": ("이른 아침, 하늘이 연한 분홍빛으로 밝아 오는 가운데", "연분홍빛 하늘이 밝아 오는 아침에 본"),
    "day": ("한낮, 하늘이 밝고 푸르게 빛나는 가운데", "푸른 하늘이 환하게 빛나는 낮에 본"),
    "evening": ("해 질 무렵 저녁, 하늘이 붉은 노을로 물든 가운데", "붉은 노을이 하늘을 물들인 저녁에 본"),
    "night": ("깊은 밤, 하늘이 어둡게 가라앉은 가운데", "어두운 하늘이 낮게 내려앉은 깊은 밤에 본"),
}
_WEATHER_TEXT: dict[Weather, tuple[str, str]] = {
    "clear": ("날씨는 구름 한 점 없이 맑아서 풍경이 또렷하게 보인다.", "하늘이 맑아 모든 것이 선명하다."),
    "rain": ("굵은 빗줄기가 비스듬히 쏟아지며 화면 전체를 촉촉하게 적신다.", "비가 세차게 내려 빗줄기가 사선으로 그어진다."),
    "snow": ("하얀 눈송이가 천천히 내려 화면 곳곳에 소복소복 흩날린다.", "눈이 내려 흰 눈송이가 점점이 흩날리고 있다."),
    "fog": ("짙은 안개가 끼어 풍경 전체가 뿌옇고 흐릿하게 보인다.", "안개가 자욱하여 색이 옅고 흐릿하다."),
}
_DIRECTION_TEXT: dict[Direction, tuple[str, str]] = {
    "left_to_right": ("왼쪽에서 오른쪽으로", "화면 왼쪽에서 오른쪽 방향으로"),
    "right_to_left": ("오른쪽에서 왼쪽으로", "화면 오른쪽에서 왼쪽 방향으로"),
}
_SCENE_TEXT: dict[Family, tuple[str, str]] = {
    "mountain": ("높은 산봉우리들이 겹겹이 솟아 있는 산악 풍경이 화면 가득 펼쳐진다.", "높은 산봉우리가 겹겹이 이어진 웅장한 산악 지대의"),
    "city": ("창문이 촘촘한 높고 낮은 빌딩들이 늘어선 도시 풍경이 펼쳐지고 아래로 도로가 보인다.", "높고 낮은 빌딩이 빽빽하게 늘어선 도시와 넓은 도로의"),
    "sea": ("넓은 바다가 수평선까지 이어지고 푸른 파도가 끊임없이 일렁인다.", "수평선까지 끝없이 펼쳐진 바다와 일렁이는 파도의"),
    "forest": ("키 큰 나무들이 빽빽하게 들어선 울창한 숲이 펼쳐지고 그 앞으로 숲길이 나 있다.", "키 큰 나무가 빽빽하게 자란 숲과 그 앞 숲길의"),
    "bridge": ("넓은 강 위로 기다란 다리가 가로질러 놓여 있고 강물이 잔잔하게 흐른다.", "넓은 강을 가로질러 놓인 기다란 다리와 강물의"),
    "palace": ("기와지붕을 얹은 오래된 궁궐이 붉은 기둥을 드러낸 채 웅장하게 서 있다.", "기와지붕을 얹은 오래된 궁궐과 넓은 앞마당의"),
}
_MOVER_TEXT: dict[Family, tuple[str, str, str]] = {  # (subject and path, manner and verb, paraphrase subject)
    "mountain": ("빨간 열기구 하나가 산 위 하늘을", "천천히 날아간다.", "빨간 열기구가"),
    "city": ("빨간 자동차 한 대가 도로를 따라", "빠르게 달려간다.", "빨간 자동차가"),
    "sea": ("하얀 돛을 단 배 한 척이 바다 위를", "미끄러지듯 나아간다.", "하얀 돛단배가"),
    "forest": ("갈색 사슴 한 마리가 숲길을 따라", "천천히 걸어간다.", "갈색 사슴이"),
    "bridge": ("노란 기차 한 대가 다리 위를", "빠르게 달려간다.", "노란 기차 한 대가"),
    "palace": ("한복을 입은 사람 한 명이 궁궐 앞마당을", "천천히 걸어간다.", "한복 차림의 사람이"),
}


def references(spec: SceneSpec) -> list[str]:
    """Korean captions of `spec` (NFC): the canonical one (for training) first, then a paraphrase."""
    (time, time_alt), (scene, scene_alt) = _TIME_TEXT[spec.time], _SCENE_TEXT[spec.family]
    (weather, weather_alt), (way, way_alt) = _WEATHER_TEXT[spec.weather], _DIRECTION_TEXT[spec.direction]
    subject, verb, subject_alt = _MOVER_TEXT[spec.family]
    canonical = f"{time} {scene} {weather} {subject} {way} {verb}"
    paraphrase = f"{time_alt} {scene_alt} 장면이다. {subject_alt} {way_alt} 움직이며 화면을 가로지르고, {weather_alt}"
    return [unicodedata.normalize("NFC", text) for text in (canonical, paraphrase)]
