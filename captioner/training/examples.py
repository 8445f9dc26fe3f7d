"""Training examples: videos paired with their references, frames decoded once, token ids as served.

A training example is exactly what `captioner run` sends to vLLM (the same frames from the frame
stage, the prompt rendered with the model's chat template, tokenized with BOS and with the video
placeholder expanded by the model's processor), followed by the caption and EOS. The loss is taken
on the caption and EOS only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from captioner.evaluation.references import ReferenceSet, name_stem
from captioner.frames import FrameDecoder, FrameError, FrameSpec
from captioner.prompts import RenderedPrompt
from captioner.sources import video_id

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of a token the loss skips (transformers' convention)


@dataclass(frozen=True)
class Pair:
    """One video and the references that describe it."""

    video: Path
    stem: str
    references: tuple[str, ...]


@dataclass
class Pairing:
    """Videos matched to references by file-name stem, and what matched nothing."""

    pairs: list[Pair]
    videos_without_refs: list[str]
    refs_without_videos: list[str]

    def describe(self) -> str:
        """One line for logs and errors: counts, and the first few unmatched names."""
        parts = [f"{len(self.pairs)} videos with references"]
        for label, names in (
            ("videos without references", self.videos_without_refs),
            ("references without videos", self.refs_without_videos),
        ):
            if names:
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                parts.append(f"{len(names)} {label} ({shown})")
        return "; ".join(parts)


def pair_videos(videos: Sequence[Path], refs: ReferenceSet) -> Pairing:
    """Match videos to references the way `captioner eval` does: by NFC file-name stem.

    A stem found twice among the videos (`a.mp4` and `a.mov`) is ambiguous: its first video is
    used and the others are listed as without references.
    """
    pairs: list[Pair] = []
    used: set[str] = set()
    unmatched: list[str] = []
    for video in sorted(videos):
        stem = name_stem(video.name)
        ref = refs.clips.get(stem)
        if ref is None or stem in used:
            unmatched.append(video_id(video))
            continue
        used.add(stem)
        pairs.append(Pair(video, stem, tuple(ref.references)))
    orphans = sorted(stem for stem in refs.clips if stem not in used)
    return Pairing(pairs, unmatched, orphans)


def data_hash(pairs: Sequence[Pair]) -> str:
    """What the adapter was trained on, as a short hash: names, sizes, mtimes and reference texts."""
    digest = hashlib.sha256()
    for pair in sorted(pairs, key=lambda p: p.stem):
        stat = pair.video.stat()
        digest.update(json.dumps([pair.stem, stat.st_size, int(stat.st_mtime), pair.references]).encode())
    return digest.hexdigest()[:16]


@dataclass
class DecodedSet:
    """Pairs whose frames are on disk (one `.npy` each), and the clips that failed with their reason."""

    pairs: list[Pair]
    files: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def frames(self, index: int) -> np.ndarray:
        """The frames of pair `index`, (N, H, W, 3) uint8, read from the cache."""
        return np.load(self.files[index])


def decode_pairs(
    pairs: Sequence[Pair],
    spec: FrameSpec,
    cache_dir: Path,
    workers: int = 2,
    timeout: float = 60.0,
    on_clip: Callable[[], None] | None = None,
) -> DecodedSet:
    """Decode every pair's frames once, in the frame stage's killable processes, into `cache_dir`.

    Frames are cached as `.npy` so epochs (and a resumed run) read them back without decoding again;
    a clip already in the cache is not decoded. A clip that fails is skipped with its reason.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    decoded = DecodedSet(pairs=[], files=[])
    todo: list[tuple[Pair, Path]] = []
    for pair in pairs:
        file = cache_dir / f"{hashlib.sha256(str(pair.video).encode()).hexdigest()[:20]}.npy"
        todo.append((pair, file))
    missing = [(pair, file) for pair, file in todo if not file.exists()]
    failed: dict[Path, str] = {}
    if missing:
        with FrameDecoder(spec, workers=max(1, min(workers, len(missing))), timeout=timeout) as decoder:
            futures = [(pair, file, decoder.submit(pair.video)) for pair, file in missing]
            for pair, file, future in futures:
                try:
                    clip = future.result()
                except FrameError as exc:
                    failed[pair.video] = exc.reason
                else:
                    tmp = file.with_suffix(".tmp.npy")
                    np.save(tmp, clip.frames)
                    tmp.replace(file)
                if on_clip:
                    on_clip()
    for pair, file in todo:
        if pair.video in failed:
            decoded.skipped.append((video_id(pair.video), failed[pair.video]))
            log.warning("skipped %s: %s", video_id(pair.video), failed[pair.video])
        else:
            decoded.pairs.append(pair)
            decoded.files.append(file)
    return decoded


@dataclass
class Example:
    """One training sequence: prompt (video expanded) + caption + EOS, labels only on the caption."""

    input_ids: list[int]
    labels: list[int]
    pixel_values_videos: Any  # torch.Tensor (1, frames, 3, H, W)


class Encoder:
    """Turns frames and a caption into model inputs with the model's own processor.

    `prompt_inputs` is what vLLM receives for a clip (the rendered prompt with BOS and the video
    tokens expanded); `example` appends `" " + caption` and EOS, as the chat template renders an
    assistant turn after `ASSISTANT:`.
    """

    def __init__(self, processor: Any, prompt: RenderedPrompt) -> None:
        self.processor = processor
        self.prompt = prompt
        self.tokenizer = processor.tokenizer
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the model's tokenizer has no EOS token: a caption could not end")

    def prompt_inputs(self, frames: np.ndarray) -> dict[str, Any]:
        """Token ids, attention mask and pixel values of the prompt for one clip (batch of 1)."""
        return self.processor(text=[self.prompt.text], videos=[np.asarray(frames)], return_tensors="pt")

    def example(self, frames: np.ndarray, caption: str) -> Example:
        """The training sequence for one clip and one reference caption."""
        inputs = self.prompt_inputs(frames)
        prompt_ids = inputs["input_ids"][0].tolist()
        caption = unicodedata.normalize("NFC", caption.strip())
        caption_ids = self.tokenizer(" " + caption, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + caption_ids + [self.tokenizer.eos_token_id]
        labels = [IGNORE_INDEX] * len(prompt_ids) + caption_ids + [self.tokenizer.eos_token_id]
        return Example(ids, labels, inputs["pixel_values_videos"])


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """A right-padded batch; padding is masked out of attention and loss."""
    import torch

    longest = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    pixels = torch.cat([e.pixel_values_videos for e in examples])
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values_videos": pixels}
