"""Time `captioner eval` on synthetic Korean captions: python benchmarks/eval_speed.py [CLIPS].

Writes N synthetic references and captions (sentences recombined from a small pool, so
texts are realistic in length, ~130 characters, and mostly distinct), then evaluates them
with a report. Prints the time of each stage as recorded in metrics.json.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "푸른 바다 위로 하얀 파도가 부서지며 해변으로 밀려오고 있다.",
    "멀리 수평선 위로 몇 척의 배가 지나가고, 맑은 하늘에는 갈매기들이 날아다니고 있다.",
    "도시의 거리에는 사람들이 걸어가고 자동차가 천천히 움직인다.",
    "오래된 한옥 지붕 위로 눈이 소복이 내려앉아 고즈넉한 분위기를 자아낸다.",
    "고층 빌딩 사이로 해가 지면서 하늘이 주황빛으로 물들고 있다.",
    "울창한 숲 사이로 계곡물이 흐르고 햇살이 나뭇잎 사이로 비친다.",
    "궁궐의 붉은 기둥과 단청이 햇빛을 받아 선명하게 빛난다.",
    "밤이 되자 다리 위를 지나는 차들의 불빛이 강물에 비친다.",
    "눈 덮인 산봉우리 위로 구름이 천천히 지나가고 있다.",
    "넓은 들판에 노란 유채꽃이 바람에 흔들리고 있다.",
]


def main(clips: int = 3000) -> None:
    from captioner.evaluation.command import run_eval

    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    with (work / "refs.jsonl").open("w", encoding="utf-8") as refs, (work / "captions.jsonl").open(
        "w", encoding="utf-8"
    ) as caps:
        for i in range(clips):
            ref = " ".join(rng.sample(SENTENCES, 3)) + f" {i}번째 장면이다."
            cap = " ".join(rng.sample(SENTENCES, 2)) + f" 장면 {i % 97}."
            refs.write(json.dumps({"video": f"clip{i:05d}.mp4", "references": [ref]}, ensure_ascii=False) + "\n")
            record = {"video": f"/missing/clip{i:05d}.mp4", "status": "ok", "caption": cap, "model": "bench"}
            caps.write(json.dumps(record, ensure_ascii=False) + "\n")
    started = time.perf_counter()
    code = run_eval(work / "captions.jsonl", work / "refs.jsonl", work / "out")
    total = time.perf_counter() - started
    timing = json.loads((work / "out" / "metrics.json").read_text(encoding="utf-8"))["timing_seconds"]
    print(f"{clips} clips: exit {code}, total {total:.1f} s (includes loading Kiwi), stages: {timing}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
