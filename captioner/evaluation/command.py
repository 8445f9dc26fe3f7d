"""`captioner eval CAPTIONS --refs REFS --out DIR [--against OTHER]`: evaluate, write the outputs, gate.

Scores the caption records written by ``captioner run`` against reference captions with
Korean-morpheme METEOR (plus BLEU-4, ROUGE-L, CIDEr-D and mode-collapse guards), writes
``metrics.json``, ``per_video.csv`` and a self-contained ``report.html``, prints the headline
numbers and warnings, and returns the exit status: 0 ok, 1 a regression against ``--against``
(the regression gate), 2 bad input. Reading the captions is `captions`, scoring is `scoring`.

Text guards: a caption holding U+FFFD or mojibake (see :mod:`captioner.textcheck`) is counted,
badged in the report and warned about; it is scored as it is.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from captioner.escaping import printable, spreadsheet_csv
from captioner.evaluation.captions import load_captions
from captioner.evaluation.morphemes import get_tokenizer
from captioner.evaluation.references import InputError, ReferenceLimits, ReferenceSet, load_references
from captioner.evaluation.report import render_report
from captioner.evaluation.results import ANY_ADAPTER, CaptionSet, Evaluation
from captioner.evaluation.scoring import compare_to_baseline, metric_config, score_captions
from captioner.textcheck import MOJIBAKE, REPLACEMENT_CHAR

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


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
                "ranged": sum(len(refs) for refs in ev.references.ranged.values()),  # references of a time range
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


def _check_overlap(captions: CaptionSet, references: ReferenceSet) -> None:
    """Raise an InputError when no video of `captions` has a reference: a wrong file, not a score of 0."""
    if not captions.stems() & references.stems():
        raise InputError(
            [
                (
                    f"{captions.path}: no video matches the references in {references.path} "
                    f"(videos are matched by file name stem; captions have e.g. {sorted(captions.stems())[:3]}, "
                    f"references have e.g. {sorted(references.stems())[:3]})"
                )
            ]
        )


def evaluate(
    captions: Path,
    refs: Path,
    against: Path | None = None,
    regression_threshold: float = 0.05,
    adapter: str | None = ANY_ADAPTER,
    against_adapter: str | None = ANY_ADAPTER,
    limits: ReferenceLimits | None = None,
) -> Evaluation:
    """Read the inputs and compute every score (no files written).

    `adapter` / `against_adapter` select one adapter's records of each (see `load_captions`): one
    run captioned with several adapters compares them with `against` = `captions`. Raises
    :class:`InputError` for unusable input, including a captions file that has no video in common
    with the references, and references over `limits` (see `load_references`).
    """
    t0 = time.perf_counter()
    reference_set = load_references(Path(refs), limits)
    caption_set = load_captions(Path(captions), adapter)
    baseline_set = load_captions(Path(against), against_adapter) if against is not None else None
    for cs in filter(None, (caption_set, baseline_set)):
        _check_overlap(cs, reference_set)
    t1 = time.perf_counter()
    tokenizer = get_tokenizer()
    texts = [t for clip in reference_set.all() for t in clip.references]
    for cs in filter(None, (caption_set, baseline_set)):
        texts += [r.caption for r in cs.evaluated()]
    tokens = tokenizer.tokenize_many(texts)
    t2 = time.perf_counter()
    run = score_captions("run", caption_set, reference_set, tokens)
    baseline = score_captions("baseline", baseline_set, reference_set, tokens) if baseline_set else None
    comparison = compare_to_baseline(run, baseline, regression_threshold) if baseline else None
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # Captions and video names are outside text: a cell starting with "=" must not run in a spreadsheet.
    (out_dir / "per_video.csv").write_text(spreadsheet_csv(ev.per_video_table()), encoding="utf-8", newline="")
    render_report(ev, out_dir / "report.html", worst_best=worst_best)
    ev.timing["report"] = time.perf_counter() - t0
    doc = metrics_document(ev)
    (out_dir / "metrics.json").write_text(
        json.dumps(doc, ensure_ascii=False, indent=2, allow_nan=False), encoding="utf-8"
    )


def print_summary(ev: Evaluation, out_dir: Path) -> None:
    """The headline numbers and damaged-text counts on stdout, the warnings on stderr, and where the report is."""
    s = ev.run.summary
    c = s["counts"]
    lo, hi = s["meteor_ci"]
    tok = ev.config["tokenizer"]
    print(
        f"METEOR {s['meteor']:.4f} (95% CI {lo:.4f}-{hi:.4f}) on {c['scored']} of {c['referenced_clips']} "
        f"referenced clips{_windows_note(c)}; {c['missing_captions']} missing captions, "
        f"{c['no_reference']} captions without reference; "
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
            print(f"warning: {printable(warning)}", file=sys.stderr)
    print(f"report: {printable(str(Path(out_dir) / 'report.html'))}")


def _windows_note(counts: dict[str, Any]) -> str:
    """What the headline adds when long takes were captioned window by window: how many windows were scored."""
    if not counts["windowed_videos"]:
        return ""
    takes = counts["windowed_videos"]
    return f" ({counts['windows_scored']} of them windows of {takes} long take{'s' if takes != 1 else ''})"


def gate(ev: Evaluation, captions: Path, regression_threshold: float) -> int:
    """The exit status of an evaluation whose outputs are written: the regression gate, said on the console.

    2 when nothing was scored, or nothing was scored by both sets; 1 when the comparison with the
    baseline found a regression; else 0.
    """
    if ev.run.summary["counts"]["scored"] == 0:
        print(f"error: no referenced clip in {printable(str(captions))} has a caption to score", file=sys.stderr)
        return EXIT_BAD_INPUT
    if ev.comparison is None:
        return EXIT_OK
    cmp = ev.comparison
    if cmp["paired_clips"] == 0:
        print("error: no clip was scored in both runs; cannot compare", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"against {printable(str(cmp['baseline']))}: METEOR {cmp['meteor_run']:.4f} vs {cmp['meteor_baseline']:.4f} "
        f"on {cmp['paired_clips']} paired clips ({cmp['meteor_relative_change']:+.1%})"
    )
    if cmp["regression"]:
        reasons = "; ".join(cmp["regression_reasons"])
        print(f"REGRESSION (threshold {regression_threshold:.1%}): {reasons}", file=sys.stderr)
        return EXIT_REGRESSION
    return EXIT_OK


def run_eval(
    captions: Path,
    refs: Path,
    out_dir: Path,
    against: Path | None = None,
    regression_threshold: float = 0.05,
    worst_best: int = 5,
    adapter: str | None = ANY_ADAPTER,
    against_adapter: str | None = ANY_ADAPTER,
    limits: ReferenceLimits | None = None,
) -> int:
    """Evaluate ``captions`` against ``refs``, write the report, return the exit code.

    0: evaluated, no regression; 1: METEOR dropped by more than ``regression_threshold``
    (relative) against ``against``; 2: bad input, nothing or not enough evaluated. ``limits``: how
    large references may be (default: the settings' defaults).
    """
    try:
        ev = evaluate(captions, refs, against, regression_threshold, adapter, against_adapter, limits)
    except InputError as exc:
        print(f"error: cannot evaluate:\n{exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    write_outputs(ev, out_dir, worst_best)
    print_summary(ev, out_dir)
    return gate(ev, captions, regression_threshold)
