"""Caption-quality evaluation: ``captioner eval CAPTIONS --refs REFS --out DIR [--against OTHER]``.

Scores the caption records written by ``captioner run`` against reference captions
with Korean-morpheme METEOR (plus BLEU-4, ROUGE-L, CIDEr-D and mode-collapse guards)
and writes ``metrics.json``, ``per_video.csv`` and a self-contained ``report.html``.

CAPTIONS is an output folder (its ``captions.jsonl`` and the part files queue workers
write, read as one dataset as `captioner.outputs.read_output` reads it), that folder's
``captions.jsonl`` (the part files are read too), or any other captions file (read alone).
Unlike ``read_output``, which logs and skips a bad line, every malformed record is an
error naming its file and line (exit status 2).

Record selection: the records may hold several per video (a failed try and a later
success, or several model / adapter / prompt versions). The *last* record per video stem
is evaluated (oldest first: by ``created_at`` across files, file order within a second);
every version seen, and the versions of the records that were evaluated, are listed in
the report, with a warning when the evaluated records mix versions.

Text guards: a caption holding U+FFFD or mojibake (see :mod:`captioner.textcheck`) is
counted, badged in the report and warned about; it is scored as it is. A record's own
``text_flags`` are used; records written before that field existed get theirs computed
here from the caption, by the same function.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nltk
import pandas as pd

from captioner.evaluation import scores
from captioner.evaluation.morphemes import Tokens, get_tokenizer, normalize_text
from captioner.evaluation.references import InputError, ReferenceSet, load_references, name_stem
from captioner.outputs import CAPTIONS_FILE, PARTS_DIR, VersionKey, dataset_files, json_objects, output_folder
from captioner.sources import record_path, video_id
from captioner.textcheck import MOJIBAKE, REPLACEMENT_CHAR, record_flags

OPENING_WORDS = 2
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# Mode-collapse warnings (shown, never gating): thresholds a healthy run stays far from.
MIN_DISTINCT_CAPTION_RATIO = 0.5
MAX_TOP_OPENING_SHARE = 0.5
MAX_NAMED_VIDEOS = 10  # a warning about many clips names this many of them

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2
ANY_ADAPTER = "*"  # load_captions: records of every adapter


@dataclass
class EvaluatedClip:
    """The evaluated (last) record of one video."""

    stem: str
    video: str
    status: str
    video_raw: str | None
    caption: str
    error: str | None
    version: str
    line: int  # line in `where`'s file
    where: str = ""  # "file:line" of the record
    text_flags: list[str] = field(default_factory=list)  # what is wrong with the caption's characters


@dataclass
class CaptionSet:
    """Caption records of an output folder or captions file, last record per video stem."""

    path: Path
    clips: dict[str, EvaluatedClip]
    records: int
    versions_all: Counter
    warnings: list[str] = field(default_factory=list)
    adapter: str | None = ANY_ADAPTER  # the adapter whose records were kept

    @property
    def name(self) -> str:
        """The path, and the adapter when one was selected: how reports name this set."""
        return str(self.path) + ("" if self.adapter == ANY_ADAPTER else f" (adapter {self.adapter or 'none'})")

    @property
    def versions_evaluated(self) -> Counter:
        """How many evaluated records come from each version."""
        return Counter(r.version for r in self.clips.values())


def caption_files(target: Path) -> list[Path]:
    """The files `outputs.read_output` reads for `target`, or an InputError saying why there are none.

    An output folder, or its ``captions.jsonl``, means the folder's ``captions.jsonl`` and its part
    files (``parts/*.jsonl``, ``parts/*/*.jsonl``); any other file is read alone.
    """
    target = Path(target)
    folder = output_folder(target)
    if folder is None:
        if not target.exists():
            raise InputError([f"{target}: captions file not found"])
        return [target]
    files = dataset_files(folder)
    if not files:
        raise InputError([f"{folder}: no caption records (no {CAPTIONS_FILE}, no {PARTS_DIR}/*.jsonl)"])
    return files


def _record_problem(rec: dict[str, Any], where: str) -> str | None:
    """Why a JSON object is not a usable caption record, or None."""
    video, status, caption = rec.get("video"), rec.get("status"), rec.get("caption")
    if not isinstance(video, str) or not video.strip():
        return f'{where}: missing "video" path'
    if not isinstance(status, str) or not status:
        return f'{where}: missing "status" ("ok" or "failed")'
    if not isinstance(caption, str) and not (caption is None and status == "failed"):
        return f'{where}: "caption" must be a string'
    if rec.get("prompt") is not None and not isinstance(rec["prompt"], dict):
        return f'{where}: "prompt" must be an object ({{"name", "version", "sha"}})'
    if rec.get("created_at") is not None and not isinstance(rec["created_at"], str):
        return f'{where}: "created_at" must be an ISO time string'
    flags = rec.get("text_flags")
    if flags is not None and not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
        return f'{where}: "text_flags" must be a list of strings'
    try:
        record_path(rec)
    except (TypeError, ValueError):  # binascii.Error is a ValueError
        return f'{where}: "video_raw" must be the base64 of the path\'s bytes'
    return None


def read_caption_records(target: Path) -> list[tuple[dict[str, Any], int, str]]:
    """Every record of an output folder or captions file, strictly: ``(record, line, "file:line")``.

    The same files and the same order as `captioner.outputs.read_output` (oldest first: by
    ``created_at`` across files, file order within a second), parsed by the same
    `captioner.outputs.json_objects`; but where ``read_output`` logs and skips a bad line, this
    raises :class:`InputError` naming the file and line of every malformed record.
    """
    files = caption_files(target)
    problems: list[str] = []
    records: list[tuple[dict[str, Any], int, str]] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            problems.append(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot read ({exc.strerror or exc})")
            continue
        # "\n" only: str.splitlines would also split inside captions holding U+2028, U+0085, ...
        for lineno, where, rec, problem in json_objects(text.split("\n"), path):
            problem = problem or _record_problem(rec, where)
            if problem:
                problems.append(problem)
            else:
                records.append((rec, lineno, where))
    if problems:
        raise InputError(problems)
    if len(files) > 1:
        records.sort(key=lambda item: item[0].get("created_at") or "")  # stable, as read_output
    return records


def version_names(keys: list[VersionKey]) -> dict[VersionKey, str]:
    """How each version is named in reports: its label, plus its digest when another version shares the label."""
    labels = Counter(key.label() for key in set(keys))
    return {key: key.label() + (f" [{key.digest()}]" if labels[key.label()] > 1 else "") for key in keys}


def load_captions(target: Path, adapter: str | None = ANY_ADAPTER) -> CaptionSet:
    """Read the caption records of an output folder or captions file; the last record per video stem wins.

    `adapter` keeps only the records of one adapter (by the name records store; None: the base
    model), as when one run captioned with several. Raises :class:`InputError` naming the file and
    line of every malformed record, or naming the adapters present when `adapter` has no record.
    """
    target = Path(target)
    records = read_caption_records(target)
    if adapter != ANY_ADAPTER:
        present = sorted({str(rec.get("adapter") or "none") for rec, _, _ in records})
        records = [item for item in records if item[0].get("adapter") == adapter]
        if not records:
            raise InputError([f"{target}: no records of adapter {adapter or 'none'!r} (adapters: {', '.join(present)})"])
    names = version_names([VersionKey.of(rec) for rec, _, _ in records])
    clips: dict[str, EvaluatedClip] = {}
    paths_seen: dict[str, set[str]] = {}
    versions: Counter = Counter()
    for rec, lineno, where in records:
        video, status, caption = rec["video"], rec["status"], rec.get("caption") or ""
        # The stem of the real file name: a name shown with \\xNN escapes must not split at them.
        stem = name_stem(video_id(record_path(rec).name))
        version = names[VersionKey.of(rec)]
        versions[version] += 1
        paths_seen.setdefault(stem, set()).add(video)
        error = rec.get("error")
        clips[stem] = EvaluatedClip(
            stem=stem,
            video=video,
            status=status,
            video_raw=rec.get("video_raw"),
            caption=normalize_text(caption),
            error=None if error is None else str(error),
            version=version,
            line=lineno,
            where=where,
            # Flags come from the raw caption: NFC would alter CP949 mojibake (see textcheck).
            text_flags=record_flags(rec),
        )
    if not clips:
        raise InputError([f"{target}: no caption records"])
    warnings = [
        f"{target}: {len(p)} different videos share the name {stem!r} ({', '.join(sorted(p)[:3])}); "
        "videos are matched by file name, so only the last record is evaluated"
        for stem, p in sorted(paths_seen.items())
        if len(p) > 1
    ]
    return CaptionSet(
        path=target,
        clips=clips,
        records=len(records),
        versions_all=versions,
        warnings=warnings,
        adapter=adapter,
    )


@dataclass
class RunResult:
    """Scores of one captions file against the references."""

    label: str
    captions: CaptionSet
    per_video: pd.DataFrame
    summary: dict[str, Any]


def _clip_status(record: EvaluatedClip | None, has_ref: bool) -> str:
    if not has_ref:
        return "no_reference"
    if record is None:
        return "no_caption"
    if record.status == "failed":
        return "failed"
    if not record.caption:
        return "empty_caption"
    return "scored"


def score_run(label: str, captions: CaptionSet, refs: ReferenceSet, tokens: dict[str, Tokens]) -> RunResult:
    """Score one captions file; ``tokens`` maps every caption and reference text to morphemes."""
    stems = sorted(set(refs.clips) | set(captions.clips))
    rows = []
    for stem in stems:
        ref, rec = refs.clips.get(stem), captions.clips.get(stem)
        rows.append(
            {
                "video": stem,
                "path": rec.video if rec else (ref.video if ref else ""),
                "video_raw": rec.video_raw if rec else None,
                "category": (ref.category if ref else None) or "",
                "status": _clip_status(rec, ref is not None),
                "record_status": rec.status if rec else "",
                "caption": rec.caption if rec else "",
                "references": list(ref.references) if ref else [],
                "error": (rec.error or "") if rec else "",
                "version": rec.version if rec else "",
                "line": rec.line if rec else None,
                "text_flags": list(rec.text_flags) if rec else [],
            }
        )
    df = pd.DataFrame(rows)
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

    summary = _summarize(df, ref_tokens, hyp_tokens, captions)
    return RunResult(label=label, captions=captions, per_video=df, summary=summary)


def _summarize(df: pd.DataFrame, ref_tokens: list, hyp_tokens: list, captions: CaptionSet) -> dict[str, Any]:
    scored = df["status"] == "scored"
    sc = df[scored]
    status_counts = df["status"].value_counts().to_dict()
    n_refs = int((df["status"] != "no_reference").sum())
    counts = {
        "referenced_clips": n_refs,
        "caption_records": captions.records,
        "captioned_videos": len(captions.clips),
        "scored": int(scored.sum()),
        "failed": int(status_counts.get("failed", 0)),
        "empty_caption": int(status_counts.get("empty_caption", 0)),
        "no_caption": int(status_counts.get("no_caption", 0)),
        "no_reference": int(status_counts.get("no_reference", 0)),
    }
    counts["missing_captions"] = counts["failed"] + counts["empty_caption"] + counts["no_caption"]
    counts["coverage"] = counts["scored"] / n_refs if n_refs else 0.0
    # Statuses other than ok/failed (e.g. "truncated") are scored, but counted so they show.
    counts["scored_by_record_status"] = sc["record_status"].value_counts().to_dict()
    # Over every evaluated record, referenced or not: broken text is a fault of the run either way.
    recorded = df[df["record_status"] != ""]
    flagged = {
        flag: [video for video, flags in zip(recorded["video"], recorded["text_flags"]) if flag in flags]
        for flag in (REPLACEMENT_CHAR, MOJIBAKE)
    }
    counts["captions_replacement_char"] = len(flagged[REPLACEMENT_CHAR])
    counts["captions_mojibake"] = len(flagged[MOJIBAKE])

    scored_refs = [r for r, s in zip(ref_tokens, scored) if s]
    scored_hyps = [h for h, s in zip(hyp_tokens, scored) if s]
    meteor_values = sc["meteor"].tolist()
    captions_text = sc["caption"].tolist()
    openings = Counter(scores.opening(c, OPENING_WORDS) for c in captions_text)
    repeated = Counter(captions_text)
    n = len(captions_text)
    diversity = {
        "distinct_captions": len(repeated),
        "distinct_caption_ratio": len(repeated) / n if n else 0.0,
        "distinct_1": scores.distinct_n(scored_hyps, 1),
        "distinct_2": scores.distinct_n(scored_hyps, 2),
        "opening_words": OPENING_WORDS,
        "top_openings": [{"opening": o, "count": c, "share": c / n} for o, c in openings.most_common(5)],
        "top_opening_share": openings.most_common(1)[0][1] / n if n else 0.0,
        "repeated_captions": [{"caption": t, "count": c} for t, c in repeated.most_common(5) if c > 1],
    }
    lengths = {
        "caption_morphemes": scores.describe_lengths(sc["caption_morphemes"].astype(int).tolist()),
        "caption_chars": scores.describe_lengths(sc["caption_chars"].astype(int).tolist()),
        "reference_morphemes": scores.describe_lengths([len(t) for refs_ in scored_refs for t in refs_]),
    }
    per_category = []
    # Every referenced clip counts in its category, so a category whose captions all
    # failed still shows up (with its missing count) instead of vanishing.
    for category, group in df[df["status"] != "no_reference"].groupby("category", sort=True):
        ok = group[group["status"] == "scored"]
        rows = ok.index.tolist()  # df has a RangeIndex: labels are positions in the token lists
        per_category.append(
            {
                "category": category or "(none)",
                "clips": int(len(group)),
                "scored": int(len(ok)),
                "missing_captions": int(len(group) - len(ok)),
                "meteor": float(ok["meteor"].mean()) if len(ok) else math.nan,
                "bleu4": scores.bleu4([ref_tokens[i] for i in rows], [hyp_tokens[i] for i in rows]),
                "rouge_l": float(ok["rouge_l"].mean()) if len(ok) else math.nan,
                "cider_d": float(ok["cider_d"].mean()) if len(ok) else math.nan,
                "mean_morphemes": float(ok["caption_morphemes"].mean()) if len(ok) else math.nan,
            }
        )
    warnings = list(captions.warnings)
    if n and diversity["distinct_caption_ratio"] < MIN_DISTINCT_CAPTION_RATIO:
        warnings.append(
            f"possible mode collapse: only {len(repeated)} distinct captions for {n} clips "
            f"(ratio {diversity['distinct_caption_ratio']:.2f} < {MIN_DISTINCT_CAPTION_RATIO})"
        )
    if n and diversity["top_opening_share"] > MAX_TOP_OPENING_SHARE:
        top = diversity["top_openings"][0]
        warnings.append(
            f"boilerplate openings: {top['share']:.0%} of captions start with {top['opening']!r}"
        )
    if len(captions.versions_evaluated) > 1:
        warnings.append(
            f"the evaluated records mix {len(captions.versions_evaluated)} model/adapter/prompt versions "
            "(last record per video); evaluate one version per file to compare versions"
        )
    if counts["missing_captions"]:
        warnings.append(
            f"{counts['missing_captions']} of {n_refs} referenced clips have no caption "
            f"({counts['failed']} failed, {counts['empty_caption']} empty, {counts['no_caption']} without a record); "
            "they are not in the METEOR mean"
        )
    damage = {
        REPLACEMENT_CHAR: "hold U+FFFD (bytes that were not valid UTF-8, e.g. a character the model left unfinished)",
        MOJIBAKE: "look like mojibake (UTF-8 text decoded with the wrong codec)",
    }
    for flag, videos in flagged.items():
        if videos:
            named = ", ".join(videos[:MAX_NAMED_VIDEOS]) + (", ..." if len(videos) > MAX_NAMED_VIDEOS else "")
            warnings.append(
                f"{len(videos)} of {len(recorded)} evaluated captions {damage[flag]}: {named}; "
                "they are scored as they are"
            )
    return {
        "meteor": float(sc["meteor"].mean()) if n else math.nan,
        "meteor_ci": list(scores.bootstrap_ci(meteor_values, BOOTSTRAP_RESAMPLES, 0.95, BOOTSTRAP_SEED)),
        "bleu4": scores.bleu4(scored_refs, scored_hyps),
        "rouge_l": float(sc["rouge_l"].mean()) if n else math.nan,
        "cider_d": float(sc["cider_d"].mean()) if n else math.nan,
        "counts": counts,
        "diversity": diversity,
        "length": lengths,
        "per_category": per_category,
        "versions_seen": dict(captions.versions_all),
        "versions_evaluated": dict(captions.versions_evaluated),
        "warnings": warnings,
    }


def compare_runs(run: RunResult, baseline: RunResult, threshold: float) -> dict[str, Any]:
    """Paired comparison of two runs on the clips both of them scored.

    ``regression`` is true when the candidate's mean METEOR on those clips is more than
    ``threshold`` (relative) below the baseline's, or when its coverage (clips scored /
    clips referenced) is: a run must not pass the gate by failing on the hard clips.
    """
    a = run.per_video.set_index("video")
    b = baseline.per_video.set_index("video")
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
    cov_run, cov_base = overall["coverage"]["run"], overall["coverage"]["baseline"]
    reasons = []
    if not math.isnan(rel) and rel < -threshold:
        reasons.append(f"METEOR {rel:+.1%} on {len(paired)} clips scored by both runs")
    if cov_base > 0 and (cov_run - cov_base) / cov_base < -threshold:
        reasons.append(f"coverage {cov_run:.1%} vs {cov_base:.1%} ({len(lost)} clips scored only by the baseline)")
    return {
        "baseline": baseline.captions.name,
        "paired_clips": int(len(paired)),
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


@dataclass
class Evaluation:
    """Everything a report shows: one run, optionally a baseline, and the configuration."""

    run: RunResult
    references: ReferenceSet
    config: dict[str, Any]
    baseline: RunResult | None = None
    comparison: dict[str, Any] | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def per_video_table(self) -> pd.DataFrame:
        """Per-clip table for ``per_video.csv``; with a baseline, its columns sit beside."""
        df = self.run.per_video.drop(columns=["line"]).copy()
        if self.baseline is not None:
            b = self.baseline.per_video[["video", "status", "caption", "meteor", "rouge_l", "cider_d"]]
            b = b.add_suffix("_baseline").rename(columns={"video_baseline": "video"})
            df = df.merge(b, on="video", how="outer")
            df["meteor_delta"] = df["meteor"] - df["meteor_baseline"]
        for column in ("references", "text_flags"):
            df[column] = [json.dumps(v if isinstance(v, list) else [], ensure_ascii=False) for v in df[column]]
        return df.sort_values("video").reset_index(drop=True)


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
        "record_selection": "last record per video stem; failed and empty captions count as missing",
        "regression_threshold": threshold,
        "regression_rule": "relative drop of paired METEOR or of coverage larger than the threshold",
    }


def _json_safe(value: Any) -> Any:
    """NaN -> null and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def metrics_document(ev: Evaluation) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    s = ev.run.summary
    per_video = ev.run.per_video.drop(columns=["line"]).to_dict(orient="records")
    return _json_safe(
        {
            "captions": ev.run.captions.name,
            "references": {
                "path": str(ev.references.path),
                "kind": ev.references.kind,
                "clips": len(ev.references.clips),
                "text_flags": ev.references.flag_counts(),
                "flagged": [
                    {"source": f.source, "video": f.video, "index": f.index, "flags": f.flags, "encoding": f.encoding}
                    for f in ev.references.flagged
                ],
            },
            "meteor": s["meteor"],
            "meteor_ci": s["meteor_ci"],
            "bleu4": s["bleu4"],
            "rouge_l": s["rouge_l"],
            "cider_d": s["cider_d"],
            "counts": s["counts"],
            "diversity": s["diversity"],
            "length": s["length"],
            "per_category": s["per_category"],
            "versions_seen": s["versions_seen"],
            "versions_evaluated": s["versions_evaluated"],
            "warnings": ev.references.warnings + s["warnings"],
            "comparison": ev.comparison,
            "regression": bool(ev.comparison and ev.comparison["regression"]),
            "per_video": per_video,
            "config": ev.config,
            "timing_seconds": ev.timing,
        }
    )


def evaluate(
    captions: Path,
    refs: Path,
    against: Path | None = None,
    regression_threshold: float = 0.05,
    adapter: str | None = ANY_ADAPTER,
    against_adapter: str | None = ANY_ADAPTER,
) -> Evaluation:
    """Read the inputs and compute every score (no files written).

    `adapter` / `against_adapter` select one adapter's records of each (see `load_captions`): one
    run captioned with several adapters compares them with `against` = `captions`. Raises
    :class:`InputError` for unusable input, including a captions file that has no video in common
    with the references.
    """
    t0 = time.perf_counter()
    reference_set = load_references(Path(refs))
    caption_set = load_captions(Path(captions), adapter)
    baseline_set = load_captions(Path(against), against_adapter) if against is not None else None
    for cs in filter(None, (caption_set, baseline_set)):
        if not set(cs.clips) & set(reference_set.clips):
            raise InputError(
                [
                    f"{cs.path}: no video matches the references in {reference_set.path} "
                    f"(videos are matched by file name stem; captions have e.g. {sorted(cs.clips)[:3]}, "
                    f"references have e.g. {sorted(reference_set.clips)[:3]})"
                ]
            )
    t1 = time.perf_counter()
    tokenizer = get_tokenizer()
    texts = [t for clip in reference_set.clips.values() for t in clip.references]
    for cs in filter(None, (caption_set, baseline_set)):
        texts += [r.caption for r in cs.clips.values()]
    tokens = tokenizer.tokenize_many(texts)
    t2 = time.perf_counter()
    run = score_run("run", caption_set, reference_set, tokens)
    baseline = score_run("baseline", baseline_set, reference_set, tokens) if baseline_set else None
    comparison = compare_runs(run, baseline, regression_threshold) if baseline else None
    t3 = time.perf_counter()
    return Evaluation(
        run=run,
        references=reference_set,
        config=metric_config(tokenizer.config(), regression_threshold),
        baseline=baseline,
        comparison=comparison,
        timing={"read": t1 - t0, "tokenize": t2 - t1, "score": t3 - t2},
    )


def write_outputs(ev: Evaluation, out_dir: Path, worst_best: int = 5) -> None:
    """Write ``metrics.json``, ``per_video.csv`` and ``report.html`` into ``out_dir``."""
    from captioner.evaluation.report import render_report  # matplotlib is only needed here

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ev.per_video_table().to_csv(out_dir / "per_video.csv", index=False, encoding="utf-8")
    render_report(ev, out_dir / "report.html", worst_best=worst_best)
    ev.timing["report"] = time.perf_counter() - t0
    doc = metrics_document(ev)
    (out_dir / "metrics.json").write_text(
        json.dumps(doc, ensure_ascii=False, indent=2, allow_nan=False), encoding="utf-8"
    )


def run_eval(
    captions: Path,
    refs: Path,
    out_dir: Path,
    against: Path | None = None,
    regression_threshold: float = 0.05,
    worst_best: int = 5,
    adapter: str | None = ANY_ADAPTER,
    against_adapter: str | None = ANY_ADAPTER,
) -> int:
    """Evaluate ``captions`` against ``refs``, write the report, return the exit code.

    0: evaluated, no regression; 1: METEOR dropped by more than ``regression_threshold``
    (relative) against ``against``; 2: bad input, nothing or not enough evaluated.
    """
    try:
        ev = evaluate(captions, refs, against, regression_threshold, adapter, against_adapter)
    except InputError as exc:
        print(f"error: cannot evaluate:\n{exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    write_outputs(ev, out_dir, worst_best)
    s = ev.run.summary
    c = s["counts"]
    lo, hi = s["meteor_ci"]
    tok = ev.config["tokenizer"]
    print(
        f"METEOR {s['meteor']:.4f} (95% CI {lo:.4f}-{hi:.4f}) on {c['scored']} of {c['referenced_clips']} "
        f"referenced clips; {c['missing_captions']} missing captions, {c['no_reference']} captions without reference; "
        f"morphemes: {tok['name']} {tok['version']} (model {tok['model_version']}), exact matches only"
    )
    if c["captions_replacement_char"] or c["captions_mojibake"] or ev.references.flagged:
        refs_flags = ev.references.flag_counts()
        print(
            f"text: captions with U+FFFD: {c['captions_replacement_char']}, mojibake: {c['captions_mojibake']}; "
            f"references with U+FFFD: {refs_flags[REPLACEMENT_CHAR]}, mojibake: {refs_flags[MOJIBAKE]}"
        )
    logged = set(ev.references.text_warnings)  # load_references logged these already
    for warning in ev.references.warnings + s["warnings"]:
        if warning not in logged:
            print(f"warning: {warning}", file=sys.stderr)
    print(f"report: {Path(out_dir) / 'report.html'}")
    if c["scored"] == 0:
        print(f"error: no referenced clip in {captions} has a caption to score", file=sys.stderr)
        return EXIT_BAD_INPUT
    if ev.comparison is None:
        return EXIT_OK
    cmp = ev.comparison
    if cmp["paired_clips"] == 0:
        print("error: no clip was scored in both runs; cannot compare", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"against {cmp['baseline']}: METEOR {cmp['meteor_run']:.4f} vs {cmp['meteor_baseline']:.4f} "
        f"on {cmp['paired_clips']} paired clips ({cmp['meteor_relative_change']:+.1%})"
    )
    if cmp["regression"]:
        reasons = "; ".join(cmp["regression_reasons"])
        print(f"REGRESSION (threshold {regression_threshold:.1%}): {reasons}", file=sys.stderr)
        return EXIT_REGRESSION
    return EXIT_OK
