"""Prompt stage: versioned Korean prompts under `prompts/`, rendered with the model's chat template.

Every request renders the system text first and the video after it, so all requests share a
byte-identical prefix that vLLM's prefix cache computes once.

The repository's `prompts/` is the home of the versioned prompts; `captioner/data/prompts` links to
it, and a wheel carries the files as package data, so an installed package needs no checkout. A site may add its own prompts in another folder (`prompts_dir`,
`CAPTIONER_PROMPTS_DIR`): a name is looked up there first, then among the bundled prompts.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError

# The versioned prompts live in the repository's top-level `prompts/`; `captioner/data/prompts` links
# to it, so a checkout, an editable install and a built wheel (which copies the files) read one path.
DEFAULT_PROMPTS_DIR = (Path(__file__).resolve().parent / "data" / "prompts").resolve()
VIDEO_TOKEN = "<video>"
# A prompt reference is a name, optionally pinned to a version: `detailed-ko`, `detailed-ko@2`,
# `detailed-ko@v2`. The same rule as the service's JobOptions; it keeps a reference from
# naming a path (`../x`, `/abs/x`, `a/b`), since the name becomes a folder under a prompts dir.
PROMPT_REF = re.compile(r"[A-Za-z0-9][\w.-]*(?:@v?[0-9]+)?")


class PromptError(CaptionerError):
    """A prompt that cannot be loaded or does not fit the model; the message says why."""


@dataclass(frozen=True)
class PromptSpec:
    """One immutable prompt version."""

    name: str
    version: int
    system: str
    instruction: str
    source: Path

    @property
    def digest(self) -> str:
        """Short hash of the prompt text: an edited file is a different prompt even at the same version."""
        text = f"{self.system}\x00{self.instruction}".encode()
        return hashlib.sha256(text).hexdigest()[:12]

    def identity(self) -> dict[str, Any]:
        """What records store to name this prompt."""
        return {"name": self.name, "version": self.version, "sha": self.digest}


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt rendered for one model: the text sent with every video, and its token counts."""

    spec: PromptSpec
    text: str
    prefix_text: str  # everything before the video placeholder, identical for every request
    text_tokens: int  # tokens of `text` without the video placeholder
    prefix_tokens: int


def load_prompt(ref: str, prompts_dir: Path = DEFAULT_PROMPTS_DIR) -> PromptSpec:
    """Load `name` (its highest version) or `name@N` / `name@vN` from `NAME/vN.toml`.

    The name is looked up in `prompts_dir` first, then among the bundled prompts
    (`DEFAULT_PROMPTS_DIR`); the first folder that has a `NAME/vN.toml` holds all its versions.
    Raises `PromptError` for a reference that is not a plain name, or a prompt that is missing or
    malformed; a missing prompt's message lists what every searched folder offers.
    """
    check_prompt_ref(ref)
    name, _, pinned = ref.partition("@")
    dirs = _search_dirs(prompts_dir)
    versions: dict[int, Path] = {}
    for folder in dirs:
        versions = _versions(folder / name)
        if versions:
            break
    if not versions:
        raise PromptError(f"prompt {name!r} not found in " + " nor in ".join(map(_offer, dirs)))
    if pinned:
        version = int(pinned.lstrip("v"))
        if version not in versions:
            raise PromptError(
                f"prompt {name!r} has no version {pinned!r} (versions: {sorted(versions)} in "
                f"{versions[max(versions)].parent})"
            )
    else:
        version = max(versions)
    path = versions[version]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PromptError(f"{path}: not valid UTF-8 TOML ({exc})") from None
    missing = [key for key in ("version", "system", "instruction") if not isinstance(data.get(key), (str, int))]
    if missing:
        raise PromptError(f"{path}: missing {', '.join(missing)}")
    if data["version"] != version:
        raise PromptError(f"{path}: says version {data['version']} but is named v{version}.toml")
    return PromptSpec(
        name=name,
        version=version,
        system=unicodedata.normalize("NFC", data["system"].strip()),
        instruction=unicodedata.normalize("NFC", data["instruction"].strip()),
        source=path,
    )


def check_prompt_ref(ref: str) -> None:
    """Raise `PromptError` unless `ref` is a plain prompt name, optionally followed by `@N` or `@vN`."""
    if not PROMPT_REF.fullmatch(ref) or ".." in ref:
        raise PromptError(
            f"prompt {ref!r} is not a prompt name: use a name of letters, digits, '_', '-' and '.' "
            "starting with a letter or digit, without '..', optionally followed by @N or @vN (e.g. detailed-ko@1)"
        )


def _search_dirs(prompts_dir: Path) -> list[Path]:
    """The folders a prompt name is looked up in, in order: the site's `prompts_dir`, then the bundled prompts."""
    if Path(prompts_dir).resolve() == DEFAULT_PROMPTS_DIR:
        return [DEFAULT_PROMPTS_DIR]
    return [Path(prompts_dir), DEFAULT_PROMPTS_DIR]


def _versions(folder: Path) -> dict[int, Path]:
    """`{N: folder/vN.toml}` for the versions in `folder`; empty when it holds none (or is missing)."""
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.glob("v*.toml") if (m := re.fullmatch(r"v(\d+)\.toml", p.name))}


def _names(prompts_dir: Path) -> list[str]:
    """Prompt names in one folder: its subfolders that hold at least one `vN.toml`."""
    if not prompts_dir.is_dir():
        return []
    return sorted(p.name for p in prompts_dir.iterdir() if _versions(p))


def _offer(prompts_dir: Path) -> str:
    """`the ... prompts DIR (available: a, b)` for an error message; says so when the folder is missing."""
    kind = "bundled" if prompts_dir == DEFAULT_PROMPTS_DIR else "site"
    if not prompts_dir.is_dir():
        return f"the {kind} prompts {prompts_dir} (no such folder)"
    return f"the {kind} prompts {prompts_dir} (available: {', '.join(_names(prompts_dir)) or 'none'})"


def render(spec: PromptSpec, tokenizer: Any) -> RenderedPrompt:
    """Render `spec` with the tokenizer's chat template: system text, then the video, then the instruction."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": spec.system}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": spec.instruction}]},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if text.count(VIDEO_TOKEN) != 1:
        raise PromptError(f"the model's chat template rendered {text.count(VIDEO_TOKEN)} {VIDEO_TOKEN} tokens, expected 1")
    prefix = text[: text.index(VIDEO_TOKEN)]
    if spec.system not in prefix:
        raise PromptError("the model's chat template does not put the system text before the video")
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return RenderedPrompt(
        spec=spec,
        text=text,
        prefix_text=prefix,
        # The text is tokenized with the placeholder; vLLM expands that one token per video token.
        text_tokens=count(text) - 1 + _bos(tokenizer),
        prefix_tokens=count(prefix) + _bos(tokenizer),
    )


def _bos(tokenizer: Any) -> int:
    """1 when the tokenizer prepends BOS to a prompt (vLLM tokenizes with special tokens)."""
    ids = tokenizer("a")["input_ids"]
    return int(tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])


def frame_tokens(image_size: int, patch_size: int, spatial_pool_stride: int) -> int:
    """Tokens one frame costs in LLaVA-NeXT-Video: the patch grid pooled by `spatial_pool_stride`.

    Same arithmetic as vLLM's llava_next_video: 336 px / 14 px patches -> 24, pooled by 2 -> 144.
    It does not depend on the input frame size: the processor resizes every frame.
    """
    pooled = math.ceil((image_size // patch_size) / spatial_pool_stride)
    return pooled * pooled


def tokens_per_frame(hf_config: Any) -> int:
    """`frame_tokens` for a LLaVA-NeXT-Video config."""
    vision = hf_config.vision_config
    return frame_tokens(vision.image_size, vision.patch_size, hf_config.spatial_pool_stride)


def check_budget(
    rendered: RenderedPrompt,
    frames: int,
    frame_tokens: int,
    max_tokens: int,
    max_model_len: int,
    max_num_batched_tokens: int,
) -> int:
    """Return a request's prompt tokens, or raise `PromptError` when a clip cannot fit.

    A video larger than the context or than one scheduler step gives empty captions or an
    encoder-cache error in vLLM; refuse it before any work starts.
    """
    video_tokens = frames * frame_tokens
    prompt_tokens = rendered.text_tokens + video_tokens
    if prompt_tokens + max_tokens > max_model_len:
        most = (max_model_len - max_tokens - rendered.text_tokens) // frame_tokens
        raise PromptError(
            f"{frames} frames x {frame_tokens} tokens + {rendered.text_tokens} prompt tokens + "
            f"{max_tokens} output tokens = {prompt_tokens + max_tokens} > context {max_model_len}; "
            f"use at most {max(most, 0)} frames"
        )
    if video_tokens > max_num_batched_tokens:
        raise PromptError(
            f"one video is {video_tokens} tokens but max_num_batched_tokens is {max_num_batched_tokens}; "
            "raise max_num_batched_tokens or lower --frames"
        )
    return prompt_tokens
