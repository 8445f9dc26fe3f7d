"""Scoring a caption set against the references: per-clip scores, the summary, and the paired comparison.

`score_captions` gives a row per clip (METEOR, ROUGE-L, CIDEr-D, lengths, text flags) and the
summary: corpus scores, counts of missing captions, diversity and length, per-category scores and
the warnings (mode collapse, mixed versions, damaged text; shown, never gating).
`compare_to_baseline` is the paired comparison behind the regression gate. The metric functions
themselves are in `captioner.evaluation.scores`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import nltk
import pandas as pd

from captioner.evaluation import scores
from captioner.evaluation.matching import pair_up
from captioner.evaluation.morphemes import Tokens
from captioner.evaluation.references import ReferenceSet
from captioner.evaluation.results import CaptionSet, EvaluatedClip, ScoredCaptions
from captioner.textcheck import MOJIBAKE, REPLACEMENT_CHAR

OPENING_WORDS = 2
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# Mode-collapse warnings (shown, never gating): thresholds a healthy run stays far from.
MIN_DISTINCT_CAPTION_RATIO = 0.5
MAX_TOP_OPENING_SHARE = 0.5
MAX_NAMED_VIDEOS = 10  # a warning about many clips names this many of them

DAMAGE = {
    REPLACEMENT_CHAR: "hold U+FFFD (bytes that were not valid UTF-8, e.g. a character the model left unfinished)",
    MOJIBAKE: "look like mojibake (UTF-8 text decoded with the wrong codec)",
}


def _clip_status(record: EvaluatedClip | None, has_ref: bool) -> str:
    """How a row counts: scored, or why not."""
    if not has_ref:
        return "no_reference"
    if record is None:
        return "no_caption"
    if record.status == "failed":
        return "failed"
    if not record.caption:
        return "empty_caption"
    return "scored"


def _clip_rows(captions: CaptionSet, refs: ReferenceSet) -> pd.DataFrame:
    """A row per clip (a whole file or a window) that has a reference or a caption: what, how, its status.

    Which references score which record: `matching.pair_up`. `clip` is the row's key; `video` the stem.
    """
    rows = []
    for pair in pair_up(captions, refs):
        rec, window, span = pair.record, pair.window, pair.span
        rows.append(
            {
                "clip": pair.clip,
                "video": pair.stem,
                "window_index": window.index if window else None,
                "window_start_s": window.start_s if window else None,
                "window_end_s": window.end_s if window else None,
                "reference_start_s": span.start_s if span else None,
                "reference_end_s": span.end_s if span else None,
                "path": rec.video if rec else pair.reference_video,
                "video_raw": rec.video_raw if rec else None,
                "category": pair.category or "",
                "status": _clip_status(rec, bool(pair.references)),
                "record_status": rec.status if rec else "",
                "caption": rec.caption if rec else "",
                "references": list(pair.references),
                "error": (rec.error or "") if rec else "",
                "version": rec.version if rec else "",
                "line": rec.line if rec else None,
                "text_flags": list(rec.text_flags) if rec else [],
            }
        )
    df = pd.DataFrame(rows)
    if len(df):  # objects, not floats: an index stays 3, not 3.0, beside the whole files' None
        df["window_index"] = pd.Series([row["window_index"] for row in rows], dtype=object)
    return df


def score_captions(label: str, captions: CaptionSet, refs: ReferenceSet, tokens: dict[str, Tokens]) -> ScoredCaptions:
    """Score one caption set; ``tokens`` maps every caption and reference text to morphemes."""
    df = _clip_rows(captions, refs)
    scored = df["status"] == "scored"
    referenced = df["status"] != "no_reference"
    ref_tokens = [[tokens[t] for t in refs_] for refs_ in df["references"]]
    hyp_tokens = [tokens[c] if s else None for c, s in zip(df["caption"], scored)]
    df["caption_morphemes"] = [len(h) if h is not None else None for h in hyp_tokens]
    df["caption_chars"] = [len(c) if s else None for c, s in zip(df["caption"], scored)]
    df["meteor"] = [scores.meteor(r, h) if h is not None else None for r, h in zip(ref_tokens, hyp_tokens)]
    df["rouge_l"] = [scores.rouge_l(r, h) if h is not None else None for r, h in zip(ref_tokens, hyp_tokens)]
    # CIDEr-D's document frequencies come from the references of every referenced clip,
    # so they do not depend on which clips this run failed on.
    ref_rows = [i for i, keep in enumerate(referenced) if keep]
    cider = scores.cider_d([ref_tokens[i] for i in ref_rows], [hyp_tokens[i] for i in ref_rows])
    cider_column: list[float | None] = [None] * len(df)
    for i, value in zip(ref_rows, cider):
        cider_column[i] = value
    df["cider_d"] = cider_column
    for col in ("meteor", "rouge_l", "cider_d", "caption_morphemes", "caption_chars"):
        df[col] = pd.to_numeric(df[col])
    summary = summarize(df, ref_tokens, hyp_tokens, captions)
    return ScoredCaptions(label=label, captions=captions, per_video=df, summary=summary)


def summarize(df: pd.DataFrame, ref_tokens: list, hyp_tokens: list, captions: CaptionSet) -> dict[str, Any]:
    """The summary of scored clips `df`: corpus scores, counts, diversity, lengths, categories, warnings.

    `ref_tokens` and `hyp_tokens` are the morphemes of each row's references and caption (None
    when the row is not scored), in the order of `df`'s rows.
    """
    scored = df["status"] == "scored"
    sc = df[scored]
    scored_refs = [r for r, s in zip(ref_tokens, scored) if s]
    scored_hyps = [h for h, s in zip(hyp_tokens, scored) if s]
    n = len(sc)
    # Over every evaluated record, referenced or not: broken text is a fault of the run either way.
    recorded = df[df["record_status"] != ""]
    flagged = {
        flag: [video for video, flags in zip(recorded["clip"], recorded["text_flags"]) if flag in flags]
        for flag in (REPLACEMENT_CHAR, MOJIBAKE)
    }
    counts = _counts(df, captions, flagged)
    diversity = _diversity(sc["caption"].tolist(), scored_hyps)
    warnings = _warnings(captions, counts, diversity, n) + _damage_warnings(flagged, len(recorded))
    return {
        "meteor": float(sc["meteor"].mean()) if n else math.nan,
        "meteor_ci": list(scores.bootstrap_ci(sc["meteor"].tolist(), BOOTSTRAP_RESAMPLES, 0.95, BOOTSTRAP_SEED)),
        "bleu4": scores.bleu4(scored_refs, scored_hyps),
        "rouge_l": float(sc["rouge_l"].mean()) if n else math.nan,
        "cider_d": float(sc["cider_d"].mean()) if n else math.nan,
        "counts": counts,
        "diversity": diversity,
        "length": _lengths(sc, scored_refs),
        "per_category": _per_category(df, ref_tokens, hyp_tokens),
        "versions_seen": dict(captions.versions_all),
        "versions_evaluated": dict(captions.versions_evaluated),
        "warnings": warnings,
    }


def _counts(df: pd.DataFrame, captions: CaptionSet, flagged: dict[str, list[str]]) -> dict[str, Any]:
    """Clip counts by status, coverage, and captions of each text flag (`flagged`: their videos)."""
    status_counts = df["status"].value_counts().to_dict()
    n_refs = int((df["status"] != "no_reference").sum())
    counts: dict[str, Any] = {
        "referenced_clips": n_refs,
        "caption_records": captions.records,
        "captioned_videos": len(captions.stems()),
        # Long takes captioned window by window: the windows scored, and the files they belong to.
        "windowed_videos": len(captions.windows),
        "windows_scored": int(((df["status"] == "scored") & df["window_index"].notna()).sum()),
        "scored": int(status_counts.get("scored", 0)),
        "failed": int(status_counts.get("failed", 0)),
        "empty_caption": int(status_counts.get("empty_caption", 0)),
        "no_caption": int(status_counts.get("no_caption", 0)),
        "no_reference": int(status_counts.get("no_reference", 0)),
    }
    counts["missing_captions"] = counts["failed"] + counts["empty_caption"] + counts["no_caption"]
    counts["coverage"] = counts["scored"] / n_refs if n_refs else 0.0
    # Statuses other than ok/failed (e.g. "truncated") are scored, but counted so they show.
    counts["scored_by_record_status"] = df[df["status"] == "scored"]["record_status"].value_counts().to_dict()
    counts["captions_replacement_char"] = len(flagged[REPLACEMENT_CHAR])
    counts["captions_mojibake"] = len(flagged[MOJIBAKE])
    return counts


def _diversity(captions_text: list[str], scored_hyps: list) -> dict[str, Any]:
    """Distinct captions and n-grams, and the most common openings: the signs of mode collapse."""
    openings = Counter(scores.opening(c, OPENING_WORDS) for c in captions_text)
    repeated = Counter(captions_text)
    n = len(captions_text)
    return {
        "distinct_captions": len(repeated),
        "distinct_caption_ratio": len(repeated) / n if n else 0.0,
        "distinct_1": scores.distinct_n(scored_hyps, 1),
        "distinct_2": scores.distinct_n(scored_hyps, 2),
        "opening_words": OPENING_WORDS,
        "top_openings": [{"opening": o, "count": c, "share": c / n} for o, c in openings.most_common(5)],
        "top_opening_share": openings.most_common(1)[0][1] / n if n else 0.0,
        "repeated_captions": [{"caption": t, "count": c} for t, c in repeated.most_common(5) if c > 1],
    }


def _lengths(sc: pd.DataFrame, scored_refs: list) -> dict[str, Any]:
    """Length statistics of the scored captions (morphemes, characters) and of their references."""
    return {
        "caption_morphemes": scores.describe_lengths(sc["caption_morphemes"].astype(int).tolist()),
        "caption_chars": scores.describe_lengths(sc["caption_chars"].astype(int).tolist()),
        "reference_morphemes": scores.describe_lengths([len(t) for refs_ in scored_refs for t in refs_]),
    }


def _per_category(df: pd.DataFrame, ref_tokens: list, hyp_tokens: list) -> list[dict[str, Any]]:
    """Scores and missing captions per reference category."""
    per_category = []
    # Every referenced clip counts in its category, so a category whose captions all
    # failed still shows up (with its missing count) instead of vanishing.
    for category, group in df[df["status"] != "no_reference"].groupby("category", sort=True):
        ok = group[group["status"] == "scored"]
        rows = ok.index.tolist()  # df has a RangeIndex: labels are positions in the token lists
        per_category.append(
            {
                "category": category or "(none)",
                "clips": len(group),
                "scored": len(ok),
                "missing_captions": len(group) - len(ok),
                "meteor": float(ok["meteor"].mean()) if len(ok) else math.nan,
                "bleu4": scores.bleu4([ref_tokens[i] for i in rows], [hyp_tokens[i] for i in rows]),
                "rouge_l": float(ok["rouge_l"].mean()) if len(ok) else math.nan,
                "cider_d": float(ok["cider_d"].mean()) if len(ok) else math.nan,
                "mean_morphemes": float(ok["caption_morphemes"].mean()) if len(ok) else math.nan,
            }
        )
    return per_category


def _warnings(captions: CaptionSet, counts: dict[str, Any], diversity: dict[str, Any], n: int) -> list[str]:
    """What the reader of `n` scores should know: shared names, mode collapse, mixed versions, missing captions."""
    warnings = list(captions.warnings)
    if n and diversity["distinct_caption_ratio"] < MIN_DISTINCT_CAPTION_RATIO:
        warnings.append(
            f"possible mode collapse: only {diversity['distinct_captions']} distinct captions for {n} clips "
            f"(ratio {diversity['distinct_caption_ratio']:.2f} < {MIN_DISTINCT_CAPTION_RATIO})"
        )
    if n and diversity["top_opening_share"] > MAX_TOP_OPENING_SHARE:
        top = diversity["top_openings"][0]
        warnings.append(f"boilerplate openings: {top['share']:.0%} of captions start with {top['opening']!r}")
    if len(captions.versions_evaluated) > 1:
        warnings.append(
            f"the evaluated records mix {len(captions.versions_evaluated)} model/adapter/prompt versions "
            "(last record per video); evaluate one version per file to compare versions"
        )
    if counts["missing_captions"]:
        warnings.append(
            f"{counts['missing_captions']} of {counts['referenced_clips']} referenced clips have no caption "
            f"({counts['failed']} failed, {counts['empty_caption']} empty, {counts['no_caption']} without a record); "
            "they are not in the METEOR mean"
        )
    return warnings


def _damage_warnings(flagged: dict[str, list[str]], evaluated: int) -> list[str]:
    """A warning per text flag some of the `evaluated` captions carry (`flagged`: their videos), naming them."""
    warnings = []
    for flag, videos in flagged.items():
        if videos:
            named = ", ".join(videos[:MAX_NAMED_VIDEOS]) + (", ..." if len(videos) > MAX_NAMED_VIDEOS else "")
            warnings.append(
                f"{len(videos)} of {evaluated} evaluated captions {DAMAGE[flag]}: {named}; they are scored as they are"
            )
    return warnings


def compare_to_baseline(run: ScoredCaptions, baseline: ScoredCaptions, threshold: float) -> dict[str, Any]:
    """Paired comparison of two scored caption sets on the clips both of them scored.

    ``regression`` is true when the candidate's (`run`'s) mean METEOR on those clips is more than
    ``threshold`` (relative) below the baseline's, or when its coverage (clips scored / clips
    referenced) is: a run must not pass the gate by failing on the hard clips.
    """
    a = run.per_video.set_index("clip")  # paired by clip: a window with the same window of the baseline
    b = baseline.per_video.set_index("clip")
    both = a.index.intersection(b.index)
    paired_mask = (a.loc[both, "status"] == "scored") & (b.loc[both, "status"] == "scored")
    paired = both[paired_mask.to_numpy()]
    cand = a.loc[paired, "meteor"].astype(float)
    base = b.loc[paired, "meteor"].astype(float)
    cand_mean = float(cand.mean()) if len(paired) else math.nan
    base_mean = float(base.mean()) if len(paired) else math.nan
    rel = (cand_mean - base_mean) / base_mean if len(paired) and base_mean > 0 else math.nan
    delta = (cand - base).tolist()
    lost = sorted(set(b.index[b["status"] == "scored"]) & set(a.index[a["status"] != "scored"]))
    gained = sorted(set(a.index[a["status"] == "scored"]) & set(b.index[b["status"] != "scored"]))
    overall = _overall(run, baseline)
    cov_run, cov_base = overall["coverage"]["run"], overall["coverage"]["baseline"]
    reasons = []
    if not math.isnan(rel) and rel < -threshold:
        reasons.append(f"METEOR {rel:+.1%} on {len(paired)} clips scored by both runs")
    if cov_base > 0 and (cov_run - cov_base) / cov_base < -threshold:
        reasons.append(f"coverage {cov_run:.1%} vs {cov_base:.1%} ({len(lost)} clips scored only by the baseline)")
    return {
        "baseline": baseline.captions.name,
        "paired_clips": len(paired),
        "meteor_run": cand_mean,
        "meteor_baseline": base_mean,
        "meteor_delta": cand_mean - base_mean if len(paired) else math.nan,
        "meteor_delta_ci": list(scores.bootstrap_ci(delta, BOOTSTRAP_RESAMPLES, 0.95, BOOTSTRAP_SEED)),
        "meteor_relative_change": rel,
        "regression_threshold": threshold,
        "regression": bool(reasons),
        "regression_reasons": reasons,
        "clips_lost": lost,
        "clips_gained": gained,
        "overall": overall,
    }


def _overall(run: ScoredCaptions, baseline: ScoredCaptions) -> dict[str, dict[str, Any]]:
    """Each set's own summary numbers side by side (each over all the clips it scored, not paired)."""
    overall = {}
    for key in ("meteor", "bleu4", "rouge_l", "cider_d"):
        overall[key] = {"run": run.summary[key], "baseline": baseline.summary[key]}
    overall["coverage"] = {"run": run.summary["counts"]["coverage"], "baseline": baseline.summary["counts"]["coverage"]}
    overall["distinct_caption_ratio"] = {
        "run": run.summary["diversity"]["distinct_caption_ratio"],
        "baseline": baseline.summary["diversity"]["distinct_caption_ratio"],
    }
    overall["mean_morphemes"] = {
        "run": run.summary["length"]["caption_morphemes"].get("mean", math.nan),
        "baseline": baseline.summary["length"]["caption_morphemes"].get("mean", math.nan),
    }
    return overall


def metric_config(tokenizer_config: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The metric configuration printed beside every score."""
    return {
        "meteor": {
            "implementation": f"nltk.translate.meteor_score.meteor_score (nltk {nltk.__version__})",
            "alpha": scores.METEOR_ALPHA,
            "beta": scores.METEOR_BETA,
            "gamma": scores.METEOR_GAMMA,
            "matching": "exact only: no stemming, no WordNet synonyms",
            "multiple_references": "best single-reference score",
            "corpus": "mean over scored clips",
            "confidence_interval": f"percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples, 95%, seed {BOOTSTRAP_SEED}",
        },
        "tokenizer": tokenizer_config,
        "bleu4": "nltk corpus_bleu, uniform weights 1-4, smoothing method1 (epsilon 0.1)",
        "rouge_l": f"COCO ROUGE-L: F-measure (beta {scores.ROUGE_L_BETA}) of best LCS precision and recall",
        "cider_d": (
            f"CIDEr-D as pycocoevalcap 1.2: n=1..{scores.CIDER_N}, sigma {scores.CIDER_SIGMA}, x10, clipped, "
            "document frequency over the references of all referenced clips"
        ),
        "diversity": f"distinct-n over morphemes; openings = first {OPENING_WORDS} words",
        "record_selection": (
            "last record per video stem (and window of a long take); failed and empty captions count as missing"
        ),
        "windows": (
            "a reference with start_s/end_s scores the window overlapping it most (ties: lowest index); "
            "one without scores the whole-file record, or each window of a file captioned by windows"
        ),
        "regression_threshold": threshold,
        "regression_rule": "relative drop of paired METEOR or of coverage larger than the threshold",
    }
