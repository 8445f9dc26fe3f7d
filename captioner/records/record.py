"""The record type: one line per clip (or per clip and adapter), and the key that makes records comparable.

`CaptionRecord` is what every writer writes and what the JSON lines hold; `VersionKey` is what
makes two captions of one video comparable (model, adapter and prompt version); `Provenance` is
how a plan stamps its versions on a record; `caption_record` and `failed_record` are the only two
ways a record is built (from a generation, or from a failure's reason).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, astuple, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from captioner.sources import raw_name, record_path, safe_text, video_id
from captioner.textcheck import text_flags

if TYPE_CHECKING:  # types only: the record stage never runs the frame stage or the engine
    from captioner.engine.protocol import Generation
    from captioner.frames import ClipFrames
    from captioner.windows import Window


@dataclass
class CaptionRecord:
    """The outcome for one clip."""

    video: str
    status: Literal["ok", "failed"]
    caption: str
    error: str | None
    frames: int
    model: str
    adapter: str | None
    prompt: dict[str, Any]
    adapter_sha: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    tier: str | None = None
    sampling: str | None = None
    decode_s: float | None = None
    # How the frames were taken (see `frames.ClipFrames.facts`): times in seconds from the first
    # shown frame, the largest distance from a target as a share of a segment, decord or pyav,
    # and what was corrected ("rotation 90 applied") or worked around.
    frame_times: list[float] | None = None
    frame_shift_max: float | None = None
    decoder: str | None = None
    notes: list[str] = field(default_factory=list)
    # What `textcheck.text_flags` found wrong with the caption's characters ("replacement_char",
    # "mojibake"). Records written before this field have no such key; readers use .get.
    text_flags: list[str] = field(default_factory=list)
    video_raw: str | None = None  # base64 of the path's bytes when `video` cannot hold them (see sources)
    # The time range of a long take this caption is of (`windows.Window.as_json`: index, start_s,
    # end_s); None: the whole file. With the path's bytes it is the record's identity; records
    # written before windows have no such key, read as None.
    window: dict[str, Any] | None = None
    bytes_read: int | None = None  # bytes of the file the frame stage read for this record (probe + decode)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def path(self) -> Path:
        """The file this record is about, exactly (`video` only shows a non-UTF-8 name; see `sources`)."""
        return record_path({"video": self.video, "video_raw": self.video_raw})

    def to_json(self) -> str:
        """One line of UTF-8 JSON (Korean kept readable; undecodable name bytes shown as \\xNN)."""
        return json.dumps(valid_utf8(asdict(self)), ensure_ascii=False)


def valid_utf8(value: Any) -> Any:
    """`value` with every string made valid UTF-8 (decoder errors may quote undecodable file names)."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, list):
        return [valid_utf8(item) for item in value]
    if isinstance(value, dict):
        return {key: valid_utf8(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class VersionKey:
    """What makes two captions of the same video comparable: model, adapter and prompt version."""

    model: str
    adapter: str | None
    adapter_sha: str | None
    prompt_name: str
    prompt_version: int
    prompt_sha: str

    @classmethod
    def of(cls, record: dict[str, Any]) -> VersionKey:
        """The version key of a record (as read from JSON)."""
        prompt = record.get("prompt") or {}
        return cls(
            record.get("model", ""),
            record.get("adapter"),
            record.get("adapter_sha"),
            prompt.get("name", ""),
            prompt.get("version", 0),
            prompt.get("sha", ""),
        )

    def digest(self) -> str:
        """A short stable id of this key, for Redis keys and file names."""
        text = json.dumps(astuple(self), ensure_ascii=False)
        return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()

    def label(self) -> str:
        """How a person reads it: "model | adapter | prompt name@version"."""
        return f"{self.model or '?'} | {self.adapter or 'no adapter'} | prompt {self.prompt_name or '?'}@{self.prompt_version}"


@dataclass(frozen=True)
class Provenance:
    """How the captions of one adapter of a plan are made: what every record of it carries."""

    model: str
    adapter: str | None
    adapter_sha: str | None
    prompt: dict[str, Any]  # the prompt's identity: {"name", "version", "sha"}
    tier: str
    frames: int
    sampling: str

    @property
    def key(self) -> VersionKey:
        """The version key of the records made this way."""
        p = self.prompt
        return VersionKey(self.model, self.adapter, self.adapter_sha, p["name"], p["version"], p["sha"])

    def stamp(self, video: Path | str, **fields: Any) -> CaptionRecord:
        """A record of the file `video` with these versions and `fields` (its text flags computed)."""
        return CaptionRecord(
            video=video_id(video),
            video_raw=raw_name(video),
            frames=self.frames,
            model=self.model,
            adapter=self.adapter,
            adapter_sha=self.adapter_sha,
            prompt=dict(self.prompt),
            tier=self.tier,
            sampling=self.sampling,
            text_flags=text_flags(fields.get("caption")),
            **fields,
        )


def failed_record(made: Provenance, video: Path | str, reason: str, window: Window | None = None) -> CaptionRecord:
    """The record of a clip (a file, or its `window`) that has no caption, with the reason (a decode failure, ...)."""
    return made.stamp(
        video, status="failed", caption="", error=reason, window=None if window is None else window.as_json()
    )


def caption_record(made: Provenance, clip: ClipFrames, gen: Generation) -> CaptionRecord:
    """The record of one clip captioned by the engine (failed when the engine erred or wrote nothing)."""
    failed = gen.error is not None or not gen.text
    return made.stamp(
        Path(clip.video),
        status="failed" if failed else "ok",
        caption="" if failed else gen.text,
        error=gen.error or ("the model returned an empty caption" if failed else None),
        prompt_tokens=gen.prompt_tokens,
        cached_tokens=gen.cached_tokens,
        output_tokens=gen.output_tokens,
        finish_reason=gen.finish_reason,
        decode_s=round(clip.decode_s, 4),
        **clip.facts(),
    )
