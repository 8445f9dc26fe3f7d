"""Caption metrics on pre-tokenized text: METEOR, BLEU-4, ROUGE-L, CIDEr-D, diversity.

All functions take token sequences (morphemes for Korean); tokenization lives in
:mod:`captioner.evaluation.morphemes`. METEOR is NLTK's own ``meteor_score`` with its stemming and
WordNet synonym stages turned into no-ops, so scores equal NLTK's wherever NLTK would
not have matched a stem or a synonym, and nothing is ever downloaded.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from nltk.translate.meteor_score import meteor_score as _nltk_meteor_score

METEOR_ALPHA = 0.9
METEOR_BETA = 3.0
METEOR_GAMMA = 0.5
ROUGE_L_BETA = 1.2
CIDER_N = 4
CIDER_SIGMA = 6.0

Tokens = Sequence[str]


class _IdentityStemmer:
    """Stemmer whose stem is the word itself.

    NLTK runs its stem stage only on words left unmatched by the exact stage; with an
    identity stem that stage can find no match the exact stage missed, so it is a no-op.
    """

    def stem(self, word: str) -> str:
        return word


class _NoWordNet:
    """WordNet stand-in without synsets: a word's only 'synonym' is itself.

    Like the identity stemmer this makes NLTK's synonym stage a no-op, and it keeps NLTK
    from loading the WordNet corpus (which is not installed and cannot be downloaded).
    """

    def synsets(self, word: str) -> list:
        return []


_STEMMER = _IdentityStemmer()
_WORDNET = _NoWordNet()


def meteor(references: Sequence[Tokens], hypothesis: Tokens) -> float:
    """METEOR of one hypothesis against its references, exact matches only.

    NLTK ``meteor_score`` (alpha 0.9, beta 3, gamma 0.5); with several references the
    best single-reference score is returned. Tokens are lower-cased by NLTK's default
    ``preprocess`` (a no-op for Hangul).
    """
    return _nltk_meteor_score(
        [list(r) for r in references],
        list(hypothesis),
        preprocess=str.lower,
        stemmer=_STEMMER,
        wordnet=_WORDNET,
        alpha=METEOR_ALPHA,
        beta=METEOR_BETA,
        gamma=METEOR_GAMMA,
    )


def bleu4(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> float:
    """Corpus BLEU-4 (NLTK ``corpus_bleu``, uniform weights).

    Smoothing is NLTK's method1 (epsilon 0.1 added to an n-gram order with no match at
    all), which changes the score only for tiny sets where some order never matches;
    unsmoothed BLEU would be exactly 0 there. (With no unigram match at all NLTK returns 0
    whatever the smoothing.)
    """
    if not hypotheses:
        return math.nan  # undefined, not zero: there is nothing to score
    return float(
        corpus_bleu(
            [[list(r) for r in refs] for refs in references],
            [list(h) for h in hypotheses],
            smoothing_function=SmoothingFunction().method1,
        )
    )


def lcs_length(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel algorithm (Allison-Dix / Hyyrö 2004) on Python integers: one pass
    over ``b`` with a few big-int operations per token instead of a |a| x |b| table,
    which keeps ROUGE-L on thousands of long captions within a second.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(references: Sequence[Tokens], hypothesis: Tokens, beta: float = ROUGE_L_BETA) -> float:
    """ROUGE-L as in the COCO caption evaluation: F-measure (beta 1.2) of the best
    LCS precision and best LCS recall over the references."""
    if not hypothesis:
        return 0.0
    lcs = [lcs_length(r, hypothesis) for r in references]
    prec = max(l / len(hypothesis) for l in lcs)
    rec = max((l / len(r) if r else 0.0) for l, r in zip(lcs, references))
    if prec == 0 or rec == 0:
        return 0.0
    return ((1 + beta**2) * prec * rec) / (rec + beta**2 * prec)


def _ngram_counts(tokens: Tokens, n: int = CIDER_N) -> Counter:
    tokens = tuple(tokens)
    return Counter(tokens[i : i + k] for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def cider_d(
    references: Sequence[Sequence[Tokens]],
    hypotheses: Sequence[Tokens | None],
    n: int = CIDER_N,
    sigma: float = CIDER_SIGMA,
) -> list[float | None]:
    """Per-clip CIDEr-D (Vedantam et al. 2015) as computed by pycocoevalcap 1.2.

    TF-IDF n-gram vectors (n = 1..n), IDF from the document frequency of each n-gram
    over the reference sets of all clips passed in, hypothesis weights clipped by the
    reference weights, a Gaussian length penalty (sigma 6; length counted as
    pycocoevalcap does, by bigrams), mean over n, mean over references, times 10.
    Clips whose hypothesis is ``None`` (no caption) still count for the document
    frequencies, so the IDF depends on the reference set only; they score ``None``.
    """
    ref_counts = [[_ngram_counts(r, n) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for counts in ref_counts:
        doc_freq.update(set().union(*counts))
    log_docs = math.log(len(references)) if references else 0.0
    # idf of an n-gram; one missing from every reference set gets df 1, as in pycocoevalcap.
    idf = {gram: log_docs - math.log(df) for gram, df in doc_freq.items()}

    def to_vec(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * idf.get(gram, log_docs)
        norm = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        length = sum(counts[g] for g in vec[1]) if n > 1 else 0  # pycocoevalcap: length in bigrams
        return vec, norm, length

    ref_vecs = [[to_vec(c) for c in counts] for counts in ref_counts]
    scores: list[float | None] = []
    for hyp, refs in zip(hypotheses, ref_vecs, strict=True):
        if hyp is None:
            scores.append(None)
            continue
        if not refs:
            scores.append(0.0)
            continue
        hvec, hnorm, hlen = to_vec(_ngram_counts(hyp, n))
        total = 0.0
        for rvec, rnorm, rlen in refs:
            penalty = math.exp(-((hlen - rlen) ** 2) / (2 * sigma**2))
            for k in range(n):
                # Only n-grams in both vectors contribute (the others meet a zero weight).
                h, r = hvec[k], rvec[k]
                val = sum(min(h[g], r[g]) * r[g] for g in h.keys() & r.keys())
                if hnorm[k] != 0 and rnorm[k] != 0:
                    val /= hnorm[k] * rnorm[k]
                total += val * penalty
        scores.append(total / n / len(refs) * 10.0)
    return scores


def bootstrap_ci(
    values: Sequence[float], resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (seeded, so reproducible)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    # Resample in blocks so 10,000 clips x 1,000 resamples never needs one 80 MB index array.
    block = max(1, 1_000_000 // arr.size)
    means = np.concatenate(
        [
            arr[rng.integers(0, arr.size, size=(min(block, resamples - start), arr.size))].mean(axis=1)
            for start in range(0, resamples, block)
        ]
    )
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return (float(lo), float(hi))


def distinct_n(token_lists: Sequence[Tokens], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams over all captions."""
    grams = [tuple(t[i : i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def opening(caption: str, words: int) -> str:
    """The first ``words`` whitespace-separated words (eojeol) of a caption."""
    return " ".join(caption.split()[:words])


def describe_lengths(lengths: Sequence[int]) -> dict[str, float]:
    """Summary statistics of a length distribution."""
    arr = np.asarray(lengths, dtype=float)
    if arr.size == 0:
        return {"count": 0} | {k: math.nan for k in ("mean", "std", "min", "p10", "median", "p90", "max")}
    p10, p50, p90 = np.percentile(arr, [10, 50, 90])
    return {
        "count": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "p10": float(p10),
        "median": float(p50),
        "p90": float(p90),
        "max": float(arr.max()),
    }
