"""METEOR: NLTK's published examples, and Korean morpheme cases computed by hand.

Formula used for the hand computations (NLTK meteor_score, alpha 0.9, beta 3, gamma 0.5):
    P = m / len(hyp), R = m / len(ref), Fmean = P*R / (alpha*P + (1-alpha)*R)
    penalty = gamma * (chunks / m) ** beta, METEOR = (1 - penalty) * Fmean
where m is the number of exactly matched tokens and chunks the fewest runs of matches
that are adjacent in both hypothesis and reference.
"""

from __future__ import annotations

import unicodedata
from fractions import Fraction

import pytest

from captioner.evaluation.morphemes import get_tokenizer
from captioner.evaluation.scores import meteor


def by_formula(m: int, hyp_len: int, ref_len: int, chunks: int) -> float:
    """METEOR from its counts, in exact fractions so the expectation is independent of floats."""
    if m == 0:
        return 0.0
    p, r = Fraction(m, hyp_len), Fraction(m, ref_len)
    fmean = p * r / (Fraction(9, 10) * p + Fraction(1, 10) * r)
    penalty = Fraction(1, 2) * Fraction(chunks, m) ** 3
    return float((1 - penalty) * fmean)


# --- NLTK's published examples (whitespace tokens) -----------------------------------
# From nltk.translate.meteor_score docstrings, nltk/test/meteor.doctest and
# nltk/test/unit/translate/test_meteor.py. Only examples whose published score involves
# exact matches alone are reproduced: our configuration has no stemming and no WordNet.

HYP1 = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
REF1 = "It is a guide to action that ensures that the military will forever heed Party commands".split()
REF2 = (
    "It is the guiding principle which guarantees the military forces always being under the command of the Party"
).split()
REF3 = "It is the practical guide for the army always to heed the directions of the party".split()


def test_nltk_docstring_single_reference():
    assert round(meteor([REF1], HYP1), 4) == 0.6944


def test_nltk_docstring_three_references_takes_the_best():
    assert round(meteor([REF1, REF2, REF3], HYP1), 4) == 0.6944
    assert meteor([REF2, REF3, REF1], HYP1) == meteor([REF1], HYP1)


def test_nltk_docstring_no_match_is_zero():
    assert meteor([["this", "is", "a", "cat"]], ["non", "matching", "hypothesis"]) == 0.0


def test_nltk_unit_test_lowercased_candidate():
    # nltk's test_meteor: candidate ["THIS", "Is", "a", "tEST"] with preprocess=str.lower.
    references = [["this", "is", "a", "test"], ["this", "is" "test"]]
    assert meteor(references, ["THIS", "Is", "a", "tEST"]) == 0.9921875


@pytest.mark.parametrize(
    ("reference", "hypothesis", "published", "places"),
    [
        ("The cat sat on the mat", "The cat sat on the mat", 0.9977, 4),
        ("The cat sat on the mat", "on the mat sat the cat", 0.5, 10),
        ("The cat sat on the mat", "The cat was sat on the mat", 0.9654, 4),
        ("The candidate has no alignment to any of the references", "John loves Mary", 0.0, 10),
    ],
)
def test_nltk_doctest_wikipedia_examples(reference, hypothesis, published, places):
    assert round(meteor([reference.split()], hypothesis.split()), places) == published


def test_no_stemming_unlike_nltk_default():
    # nltk's doctest scores this 0.7806 because its Porter stemmer matches
    # creates/create and updates/update. Exact matching finds only "or", "a", "set":
    # m=3, hyp 8, ref 6, three separate chunks.
    reference = ["create", "or", "update", "a", "vm", "set"]
    score = meteor([reference], "creates or updates a virtual machine scale set".split())
    assert score == pytest.approx(by_formula(3, 8, 6, 3), abs=1e-12)
    assert score < 0.7806


# --- Korean, on Kiwi morphemes ------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def test_known_morphemes(tok):
    # Hand-known analyses (Kiwi integrates the allomorph 았 into 었).
    assert tok.tokenize("고양이가 매트 위에 앉았다") == ("고양이", "가", "매트", "위", "에", "앉", "었", "다")
    assert tok.tokenize("아이들이 공을 던진다!") == ("아이", "들", "이", "공", "을", "던지", "ᆫ다")


def test_korean_reordered_sentence(tok):
    ref = tok.tokenize("고양이가 매트 위에 앉았다")
    hyp = tok.tokenize("매트 위에 고양이가 앉았다")
    # hyp 매트 위 에 | 고양이 가 | 앉 었 다  -> ref positions 2 3 4 | 0 1 | 5 6 7
    # all 8 matched, 3 chunks: 1 - 0.5 * (3/8)^3 = 997/1024
    assert meteor([ref], hyp) == pytest.approx(997 / 1024, abs=1e-12)
    assert meteor([ref], hyp) == pytest.approx(by_formula(8, 8, 8, 3), abs=1e-12)


def test_korean_partial_match_drops_punctuation(tok):
    ref = tok.tokenize("아이들이 공원에서 공을 찬다.")  # 아이 들 이 공원 에서 공 을 차 ᆫ다 (9, '.' dropped)
    hyp = tok.tokenize("아이들이 공을 던진다!")  # 아이 들 이 공 을 던지 ᆫ다 (7, '!' dropped)
    assert len(ref) == 9 and len(hyp) == 7
    # matched: 아이 들 이 | 공 을 | ᆫ다 -> m = 6, 3 chunks
    # P = 6/7, R = 2/3, Fmean = 15/22, penalty = 0.5 * (1/2)^3 = 1/16 -> 225/352
    assert meteor([ref], hyp) == pytest.approx(225 / 352, abs=1e-12)


def test_korean_several_references_best_one(tok):
    hyp = tok.tokenize("기차가 강을 건넌다")  # 기차 가 강 을 건너 ᆫ다
    other = tok.tokenize("기차가 다리를 건넌다")  # 기차 가 다리 를 건너 ᆫ다: m=4, 2 chunks -> 0.625
    same = tok.tokenize("기차가 강을 건넌다")  # identical: 1 - 0.5 * (1/6)^3 = 431/432
    assert meteor([other], hyp) == pytest.approx(0.625, abs=1e-12)
    assert meteor([other, same], hyp) == pytest.approx(431 / 432, abs=1e-12)
    assert meteor([same, other], hyp) == pytest.approx(431 / 432, abs=1e-12)


def test_korean_nfd_and_latin_case_are_normalised(tok):
    ref = tok.tokenize("CCTV 화면에 자동차가 보인다")
    hyp = tok.tokenize(unicodedata.normalize("NFD", "cctv 화면에 차가 보인다"))
    assert ref[0] == hyp[0] == "cctv"
    assert hyp == ("cctv", "화면", "에", "차", "가", "보이", "ᆫ다")
    # 6 of 7 match (차 vs 자동차), chunks cctv 화면 에 | 가 보이 ᆫ다 = 2 -> 6/7 * (1 - 1/54) = 53/63
    assert meteor([ref], hyp) == pytest.approx(53 / 63, abs=1e-12)


def test_empty_and_punctuation_only_texts(tok):
    assert tok.tokenize("") == ()
    assert tok.tokenize("...!?") == ()
    assert meteor([tok.tokenize("고양이가 앉았다")], tok.tokenize("!!")) == 0.0


def test_tokenizer_config_names_versions(tok):
    import kiwipiepy

    cfg = tok.config()
    assert cfg["name"] == "kiwipiepy"
    assert cfg["version"] == kiwipiepy.__version__
    assert cfg["model_version"]
    assert "SF" in cfg["dropped_tags"] and "SL" not in cfg["dropped_tags"]
