"""BLEU-4, ROUGE-L, CIDEr-D, diversity and bootstrap on token lists."""

from __future__ import annotations

import math
import random

import pytest

from captioner.evaluation import scores

# A small corpus scored with pycocoevalcap 1.2 (Cider().compute_score, Rouge().compute_score,
# whitespace tokens) in a separate environment; pycocoevalcap is not a dependency. The
# expected numbers below are its output, an independent reference implementation.
CORPUS = [
    (
        "a man is riding a horse on the beach",
        ["a man rides a horse along the beach", "a person on a horse near the sea"],
    ),
    ("two dogs play in the snow", ["two dogs are playing in the snow", "dogs running through snow"]),
    (
        "a city street at night",
        ["cars drive down a busy city street at night", "a street in the city with lights at night"],
    ),
    ("a horse", ["a brown horse stands in a field"]),
    (
        "waves crash on the rocks near the shore and the sky is blue",
        ["waves crash against rocks on the shore", "the blue sky over the sea and rocks"],
    ),
    ("a a a a a", ["a man is walking"]),
]
COCO_CIDER_D = [1.5200007657439056, 2.3006377844030554, 2.956589898468078, 0.6694691090989541,
                1.2287210088079625, 0.0716247031617307]  # fmt: skip
COCO_CIDER_D_MEAN = 1.457840544947281
COCO_ROUGE_L = [0.7134502923976607, 0.7587064676616916, 0.6792873051224945, 0.40397350993377484,
                0.5285961871750434, 0.22676579925650556]  # fmt: skip


def _corpus():
    refs = [[r.split() for r in rs] for _, rs in CORPUS]
    hyps = [h.split() for h, _ in CORPUS]
    return refs, hyps


def test_cider_d_matches_pycocoevalcap():
    refs, hyps = _corpus()
    got = scores.cider_d(refs, hyps)
    assert got == pytest.approx(COCO_CIDER_D, abs=1e-12)
    assert sum(got) / len(got) == pytest.approx(COCO_CIDER_D_MEAN, abs=1e-12)


def test_cider_d_clip_without_caption_still_sets_document_frequency():
    refs, hyps = _corpus()
    # Dropping the last hypothesis must not change the other clips' scores: the IDF
    # comes from all reference sets.
    got = scores.cider_d(refs, hyps[:-1] + [None])
    assert got[-1] is None
    assert got[:-1] == pytest.approx(COCO_CIDER_D[:-1], abs=1e-12)


def test_rouge_l_matches_pycocoevalcap():
    refs, hyps = _corpus()
    assert [scores.rouge_l(r, h) for r, h in zip(refs, hyps)] == pytest.approx(COCO_ROUGE_L, abs=1e-12)


def _lcs_table(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programming():
    rng = random.Random(7)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        assert scores.lcs_length(a, b) == _lcs_table(a, b), (a, b)


def test_bleu4_identical_and_disjoint():
    sent = "바다 위 로 해 가 뜨 ᆫ다".split()
    assert scores.bleu4([[sent]], [sent]) == pytest.approx(1.0)
    assert scores.bleu4([[sent]], ["하늘 에 구름 이 있 다 요".split()]) == 0.0
    # A shared trigram but no shared 4-gram: unsmoothed BLEU-4 would be 0; method1 adds
    # epsilon 0.1 to the empty 4-gram count, so the score stays small but positive.
    partial = scores.bleu4([[sent]], ["바다 위 로 구름 이 있 다".split()])
    # p1 = 3/7, p2 = 2/6, p3 = 1/5, p4 = 0.1/4, brevity penalty 1 (same length)
    expected = (3 / 7 * 2 / 6 * 1 / 5 * 0.1 / 4) ** 0.25
    assert partial == pytest.approx(expected, rel=1e-12)
    assert math.isnan(scores.bleu4([], []))


def test_distinct_n_by_hand():
    caps = [("a", "b", "a"), ("a", "b")]
    # unigrams: a b a a b -> 2 unique of 5; bigrams: ab ba ab -> 2 unique of 3
    assert scores.distinct_n(caps, 1) == pytest.approx(2 / 5)
    assert scores.distinct_n(caps, 2) == pytest.approx(2 / 3)
    assert scores.distinct_n([], 2) == 0.0


def test_opening_words():
    assert scores.opening("이 영상은 바다를 보여준다", 2) == "이 영상은"
    assert scores.opening("바다", 2) == "바다"


def test_bootstrap_ci_is_reproducible_and_brackets_the_mean():
    rng = random.Random(3)
    values = [rng.random() for _ in range(200)]
    lo, hi = scores.bootstrap_ci(values)
    mean = sum(values) / len(values)
    assert lo < mean < hi
    assert hi - lo < 0.2
    assert scores.bootstrap_ci(values) == (lo, hi)
    assert scores.bootstrap_ci([0.3] * 10) == pytest.approx((0.3, 0.3))


def test_describe_lengths():
    d = scores.describe_lengths([1, 2, 3, 4])
    assert d["mean"] == 2.5 and d["min"] == 1 and d["max"] == 4 and d["median"] == 2.5
    assert scores.describe_lengths([])["count"] == 0
