"""The evaluation report: one self-contained HTML file (plots and frames inline).

Plots are matplotlib SVGs and frame strips JPEGs, both embedded as ``data:`` URIs, so
the file opens offline and can be mailed or archived as is. A clip whose video cannot
be read gets a placeholder saying why; the report is never lost to one bad video.

A window of a long take is a clip of its own: its card names the window and its strip shows
frames of the window's time range (the decoder samples inside the window, as the run did).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from captioner.evaluation.results import Evaluation
from captioner.sources import record_path, video_id
from captioner.windows import Window

STRIP_FRAMES = 6
STRIP_SHORT_SIDE = 128
STRIP_TIMEOUT_S = 30.0  # a clip whose frames take longer is shown without a strip
MAX_LISTED_ROWS = 500  # longer lists are cut in the HTML; per_video.csv has them all


def _svg_data_uri(fig: Any) -> str:
    """Render a matplotlib figure as an SVG ``data:`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(ev: Evaluation) -> dict[str, str]:
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display backend

    runs = [("this run", ev.run)] + ([("baseline", ev.baseline)] if ev.baseline is not None else [])
    plots: dict[str, str] = {}
    # Text stays text in the SVG (the browser draws it with its own fonts, Hangul
    # included) and ids are stable, so identical runs give identical files.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "captioner"}):
        fig = Figure(figsize=(6, 3.2))
        ax = fig.subplots()
        for name, run in runs:
            values = run.per_video["meteor"].dropna()
            ax.hist(values, bins=np.linspace(0, 1, 21), alpha=0.6, label=f"{name} (n={len(values)})")
            if len(values):
                color = "black" if name == "this run" else "grey"
                ax.axvline(values.mean(), linestyle="--", linewidth=1, color=color)
        ax.set_xlabel("METEOR per clip (dashed: mean)")
        ax.set_ylabel("clips")
        ax.set_xlim(0, 1)
        ax.legend()
        plots["meteor_hist"] = _svg_data_uri(fig)

        fig = Figure(figsize=(6, 3.2))
        ax = fig.subplots()
        series = [(f"{name} captions", run.per_video["caption_morphemes"].dropna().tolist()) for name, run in runs]
        series.append(("references", _reference_lengths(ev)))
        longest = max((max(v) for _, v in series if v), default=1)
        bins = np.linspace(0, longest + 1, min(40, int(longest) + 2))  # shared bins, so bars compare
        for label, values in series:
            if values:
                ax.hist(values, bins=bins, alpha=0.5, label=label)
        ax.set_xlabel("length (morphemes)")
        ax.set_ylabel("texts")
        ax.legend()
        plots["length_hist"] = _svg_data_uri(fig)

        if ev.baseline is not None:
            a = ev.run.per_video.set_index("clip")["meteor"]
            b = ev.baseline.per_video.set_index("clip")["meteor"]
            paired = pd.concat([a.rename("run"), b.rename("baseline")], axis=1).dropna()
            fig = Figure(figsize=(4.2, 4.2))
            ax = fig.subplots()
            ax.scatter(paired["baseline"], paired["run"], s=10, alpha=0.6)
            ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
            ax.set_xlim(-0.02, 1.02)  # room for the many clips at exactly 0 or 1
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("baseline METEOR")
            ax.set_ylabel("this run METEOR (above the line: better)")
            plots["paired_scatter"] = _svg_data_uri(fig)
    return plots


def _reference_lengths(ev: Evaluation) -> list[int]:
    """Morpheme counts of all references (already tokenized, so served from the cache)."""
    from captioner.evaluation.morphemes import get_tokenizer

    tokens = get_tokenizer().tokenize_many(t for c in ev.references.all() for t in c.references)
    return [len(v) for v in tokens.values()]


StripKey = tuple[str, "str | None", "Window | None"]  # video, video_raw, window (None: the whole file)


class _Strips(dict):
    """Frame strips by video path and window, decoded on first use by a killable decoder process.

    decord can hang on a damaged file; in the report's own process that would hang the report.
    """

    def __init__(self) -> None:
        super().__init__()
        self._decoder: Any = None

    def __missing__(self, key: StripKey) -> tuple[str | None, str | None]:
        if self._decoder is None:
            from captioner.frames import FrameDecoder, FrameSpec  # decoders start only when a report needs frames

            self._decoder = FrameDecoder(FrameSpec(STRIP_FRAMES, STRIP_SHORT_SIDE), workers=1, timeout=STRIP_TIMEOUT_S)
        self[key] = _frame_strip(record_path({"video": key[0], "video_raw": key[1]}), self._decoder, key[2])
        return self[key]

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()


def _frame_strip(path: Path, decoder: Any, window: Window | None = None) -> tuple[str | None, str | None]:
    """A JPEG strip of frames of ``video`` (of its `window`'s time range) as a ``data:`` URI, or ``(None, reason)``.

    Any failure (missing file, undecodable or hanging video, frame reader not available)
    becomes a reason shown in place of the strip.
    """
    if not path.is_file():
        return None, f"video not found: {video_id(path)}"
    try:
        frames = decoder.submit(path, window=window).result().frames
    except ImportError as exc:
        return None, f"frame reader unavailable ({exc})"
    except Exception as exc:  # FrameError and anything a broken container raises
        return None, f"cannot read frames: {exc}"
    import numpy as np
    from PIL import Image

    if len(frames) == 0:
        return None, f"no frames decoded from {video_id(path)}"
    strip = np.concatenate(list(frames), axis=1)
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), None


def _cards(ev: Evaluation, clips: list[str], strips: _Strips) -> list[dict]:
    """Per-clip cards (`clips`: keys of rows, a whole file or a window): scores, caption beside references, frames."""
    run = ev.run.per_video.set_index("clip")
    base = ev.baseline.per_video.set_index("clip") if ev.baseline is not None else None
    damaged = _damaged_references(ev)
    cards = []
    for clip in clips:
        row = run.loc[clip]
        window = _window(row)
        image, reason = strips[(row["path"], row["video_raw"], window)]
        card = {
            "video": row["video"],
            "window": window,
            "path": row["path"],
            "category": row["category"],
            "meteor": row["meteor"],
            "rouge_l": row["rouge_l"],
            "cider_d": row["cider_d"],
            "caption": row["caption"],
            "text_flags": row["text_flags"],
            "references": row["references"],
            "reference_flags": [damaged.get(r, []) for r in row["references"]],
            "image": image,
            "image_reason": reason,
            "baseline": None,
        }
        if base is not None and clip in base.index:
            b = base.loc[clip]
            card["baseline"] = {
                "status": b["status"],
                "caption": b["caption"],
                "meteor": b["meteor"],
                "text_flags": b["text_flags"],
            }
        cards.append(card)
    return cards


def _window(row: pd.Series) -> Window | None:
    """The window of a row of scores, None for a whole file."""
    index = row["window_index"]
    if index is None or (isinstance(index, float) and math.isnan(index)):
        return None
    return Window(int(index), float(row["window_start_s"]), float(row["window_end_s"]))


def _damaged_references(ev: Evaluation) -> dict[str, list[str]]:
    """The text flags of each damaged reference text (NFC, as the cards show it)."""
    return {f.text: f.flags for f in ev.references.flagged}


def _text_tables(ev: Evaluation) -> tuple[str, str]:
    """HTML tables of the captions and of the references whose characters look damaged ("" when none)."""
    df = ev.run.per_video
    flagged = df[[bool(flags) for flags in df["text_flags"]]]
    captions = ""
    if len(flagged):
        captions = _table(
            flagged.assign(
                flags=[" ".join(f) for f in flagged["text_flags"]],
                caption=[_excerpt(c) for c in flagged["caption"]],
            )[["clip", "flags", "status", "caption", "path"]].rename(columns={"clip": "video"})
        )
    references = ""
    if ev.references.flagged:
        references = _table(
            pd.DataFrame(
                [
                    {
                        "source": f.source,
                        "video": f.video,
                        "reference": f.index,
                        "flags": " ".join(f.flags),
                        "read as": f.encoding or "",
                        "text": _excerpt(f.text),
                    }
                    for f in ev.references.flagged
                ]
            )
        )
    return captions, references


def _excerpt(text: str, chars: int = 80) -> str:
    return text if len(text) <= chars else text[:chars] + "…"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(df: pd.DataFrame) -> str:
    """An HTML table (escaped) with at most MAX_LISTED_ROWS rows."""
    shown = df.head(MAX_LISTED_ROWS)
    html = shown.to_html(index=False, classes="data", na_rep="–", float_format=lambda v: f"{v:.4f}", escape=True)
    if len(df) > len(shown):
        html += f"<p class='note'>{len(df) - len(shown)} more rows in per_video.csv</p>"
    return html


def _cards_to_show(ev: Evaluation, worst_best: int) -> tuple[list[dict], list[dict], dict[str, list[dict]]]:
    """Cards of the worst and best scored clips and, with a baseline, of those that dropped or gained most."""
    df = ev.run.per_video
    scored = df[df["status"] == "scored"].sort_values(["meteor", "clip"])
    worst = scored["clip"].head(worst_best).tolist()
    rest = scored[~scored["clip"].isin(worst)]
    best = rest.sort_values(["meteor", "clip"], ascending=[False, True])["clip"].head(worst_best).tolist()
    strips = _Strips()
    try:
        changes: dict[str, list[dict]] = {"drops": [], "gains": []}
        if ev.baseline is not None:
            merged = df.merge(ev.baseline.per_video[["clip", "meteor"]], on="clip", suffixes=("", "_baseline"))
            merged["delta"] = merged["meteor"] - merged["meteor_baseline"]
            merged = merged.dropna(subset=["delta"])
            drops = merged[merged["delta"] < 0].sort_values(["delta", "clip"])["clip"].head(worst_best).tolist()
            gains = merged[merged["delta"] > 0].sort_values(["delta", "clip"], ascending=[False, True])
            changes = {
                "drops": _cards(ev, drops, strips),
                "gains": _cards(ev, gains["clip"].head(worst_best).tolist(), strips),
            }
        return _cards(ev, worst, strips), _cards(ev, best, strips), changes
    finally:
        strips.close()


def _summary_tables(ev: Evaluation) -> dict[str, str]:
    """HTML tables of the categories, the missing and unreferenced clips, and the versions ("" when empty)."""
    df = ev.run.per_video
    reason = {"failed": "failed", "empty_caption": "empty caption", "no_caption": "no caption record"}
    # Rows named by clip (a window's row: "stem #3"), under the heading "video".
    df = df.drop(columns=["video"]).rename(columns={"clip": "video"})
    missing = df[df["status"].isin(list(reason))].assign(reason=lambda d: d["status"].map(reason))
    unreferenced = df[df["status"] == "no_reference"]
    per_category = pd.DataFrame(ev.run.summary["per_category"])
    versions = pd.DataFrame(
        [
            {"version": v, "records in file": n, "evaluated": ev.run.summary["versions_evaluated"].get(v, 0)}
            for v, n in ev.run.summary["versions_seen"].items()
        ]
    )
    return {
        "categories_table": _table(per_category) if len(per_category) else "",
        "missing_table": _table(missing[["video", "category", "reason", "error", "path"]]) if len(missing) else "",
        "unreferenced_table": _table(unreferenced[["video", "record_status", "path"]]) if len(unreferenced) else "",
        "versions_table": _table(versions),
    }


def render_report(ev: Evaluation, path: Path, worst_best: int = 5) -> None:
    """Write the HTML report of ``ev`` to ``path``."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("captioner.evaluation", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = _fmt
    worst_cards, best_cards, changes = _cards_to_show(ev, worst_best)
    text_captions_table, text_references_table = _text_tables(ev)
    html = env.get_template("eval_report.html.j2").render(
        ev=ev,
        s=ev.run.summary,
        cmp=ev.comparison,
        plots=_plots(ev),
        worst=worst_cards,
        best=best_cards,
        changes=changes,
        **_summary_tables(ev),
        text_captions_table=text_captions_table,
        text_references_table=text_references_table,
        reference_text_flags=ev.references.flag_counts(),
        warnings=ev.references.warnings + ev.run.summary["warnings"],
    )
    Path(path).write_text(html, encoding="utf-8")
