"""The texts AWQ calibrates on, and the token blocks AutoAWQ is given.

The project's own Korean captions (the sample clips' references and the former evaluation sample
set's) ship as package data, ``captioner/data/calibration.jsonl``: one ``{"caption": ...}`` per
line, so a checkout and an installed wheel read the same file. Captions or references given with
``--calibration`` are added to them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captioner.quantize.result import QuantizeError

__all__ = ["DEFAULT_CALIBRATION", "calibration_blocks", "calibration_texts", "default_texts", "gather_texts"]

log = logging.getLogger(__name__)

# Beside the package's other data (pyproject.toml ships captioner/data/* in the wheel).
DEFAULT_CALIBRATION = (Path(__file__).resolve().parent.parent / "data" / "calibration.jsonl",)


def default_texts() -> list[str]:
    """The project's own calibration captions (`DEFAULT_CALIBRATION`), in order."""
    texts: list[str] = []
    for path in DEFAULT_CALIBRATION:
        with path.open(encoding="utf-8") as f:
            texts.extend(json.loads(line)["caption"] for line in f if line.strip())
    return texts


def gather_texts(files: Sequence[Path], use_default_calibration: bool = True) -> list[str]:
    """The project's captions (unless not `use_default_calibration`), then those of `files`, without duplicates."""
    defaults: list[str] = []
    missing = [p for p in DEFAULT_CALIBRATION if not p.exists()]
    if use_default_calibration and missing:
        # Only a package built without its data gets here; --calibration can still supply the texts.
        log.warning(
            "the project's calibration references are missing (%s); calibrating on --calibration only",
            ", ".join(str(p) for p in missing),
        )
    elif use_default_calibration:
        defaults = default_texts()
    return list(dict.fromkeys(defaults + calibration_texts([Path(p) for p in files])))


def calibration_texts(files: Sequence[Path]) -> list[str]:
    """Korean captions from `files`, in order, without duplicates.

    An output folder (``captions.jsonl`` and/or ``parts/``), or a JSONL file whose records have
    ``caption``, is read as captions, the way ``captioner eval`` reads them (a folder's
    ``captions.jsonl`` brings its part files; the last record per video; its ``ok`` captions);
    anything else as references (JSONL ``{"video", "references"}``, CSV, or an AI-Hub label folder).
    Raises `QuantizeError` naming the file when one cannot be read.
    """
    from captioner.evaluation.captions import load_captions
    from captioner.evaluation.references import InputError, load_references

    texts: dict[str, None] = {}
    for path in files:
        path = Path(path)
        if not path.exists():
            raise QuantizeError(f"{path}: calibration file does not exist")
        try:
            if _is_captions(path):
                found = [c.caption for c in load_captions(path).clips.values() if c.status == "ok" and c.caption]
            else:
                found = [text for ref in load_references(path).clips.values() for text in ref.references]
        except InputError as exc:
            raise QuantizeError(f"{path}: not usable as calibration captions or references: {exc}") from None
        if not found:
            raise QuantizeError(f"{path}: no captions or references in this file")
        texts.update(dict.fromkeys(t.strip() for t in found if t.strip()))
    return list(texts)


def _is_captions(path: Path) -> bool:
    from captioner.records import dataset_files, output_folder

    folder = output_folder(path)  # an output folder, or its captions.jsonl beside parts/
    if folder is not None:
        return bool(dataset_files(folder))  # a folder of AI-Hub label files has none
    if path.suffix.lower() != ".jsonl":
        return False
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    return False
                return isinstance(first, dict) and "caption" in first and "references" not in first
    return False


def calibration_blocks(
    texts: list[str], tokenizer: Any, prompt: str, prompts_dir: Path | None, max_seq_len: int
) -> tuple[list[list[int]], int]:
    """Token blocks for AutoAWQ: each text as ``{prompt} {caption}``, concatenated, cut into equal blocks.

    AutoAWQ itself concatenates its samples and drops what does not fill a block; doing it here
    makes the block length fit small calibration sets (it fails when the total is under one block).
    The video placeholder is removed from the prompt: AWQ runs the language model alone, and a
    bare ``<video>`` token embedding is not what the model sees there when captioning.
    Returns the blocks and the number of texts in them.
    """
    from captioner.prompts import DEFAULT_PROMPTS_DIR, VIDEO_TOKEN, PromptError, load_prompt, render

    if not texts:
        raise QuantizeError("no calibration texts: give --calibration with captions or references")
    try:
        rendered = render(load_prompt(prompt, prompts_dir or DEFAULT_PROMPTS_DIR), tokenizer)
    except PromptError as exc:
        raise QuantizeError(str(exc)) from None
    template = rendered.text.replace(VIDEO_TOKEN + "\n", "").replace(VIDEO_TOKEN, "")
    samples = [tokenizer(f"{template} {text}")["input_ids"][:max_seq_len] for text in texts]
    tokens = [token for sample in samples for token in sample]
    block = min(max_seq_len, len(tokens))
    count = len(tokens) // block
    return [tokens[i * block : (i + 1) * block] for i in range(count)], len(samples)
