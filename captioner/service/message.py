"""What a worker reads from the broker and from Redis, checked before it is used.

A chunk message can come from anyone who can reach the broker, and a job's hash from anyone who
can write to Redis: nothing in either becomes a path, a count or a file name until it has passed
these checks. Job ids are the 32 hex digits `submit` makes; a job's output folder and summary name
are the kinds the service makes; every field has its type. What fails is refused with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from captioner.errors import CaptionerError

JOB_ID = re.compile(r"[0-9a-f]{32}")
SUMMARY_NAME = re.compile(r"nightly-\d{4}-\d{2}-\d{2}\.json")  # the only summary names the service gives
MAX_CHUNK_VIDEOS = 100_000  # far above any chunk size in use; bounds what one message can ask for
MAX_PATH_CHARS = 4096  # PATH_MAX


class MessageRefused(CaptionerError):
    """A chunk message or job record that fails the checks; the message says which and why."""


def new_job_id() -> str:
    """A fresh job id: 32 hex digits (the only form a worker accepts)."""
    return uuid.uuid4().hex


def chunk_digest(videos: list[str]) -> str:
    """A short digest of a chunk's video list, kept with the job at submit: a message naming the
    job's own folder and a real chunk index but other videos (a forged chunk) does not match it."""
    data = "\0".join(videos).encode("utf-8", "surrogatepass")  # names may hold undecodable bytes
    return base64.b64encode(hashlib.blake2b(data, digest_size=12).digest()).decode("ascii")


def is_job_id(value: object) -> bool:
    """Whether `value` has the form of a job id (so it is safe in Redis keys and file names)."""
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("holds a NUL character")
    return value


class ChunkMessage(BaseModel):
    """The arguments of one chunk task, type-checked (strict: no coercion of `"1"` into 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    job_id: str = Field(pattern=JOB_ID.pattern)
    index: int = Field(ge=0)
    videos: list[str] = Field(min_length=1, max_length=MAX_CHUNK_VIDEOS)
    out: str = Field(min_length=1, max_length=MAX_PATH_CHARS)
    options: dict[str, Any]

    @field_validator("videos")
    @classmethod
    def _paths(cls, videos: list[str]) -> list[str]:
        for video in videos:
            if not video or len(video) > MAX_PATH_CHARS:
                raise ValueError("a video path is empty or longer than PATH_MAX")
            _no_nul(video)
        return videos

    @field_validator("out")
    @classmethod
    def _out(cls, out: str) -> str:
        return _no_nul(out)

    @classmethod
    def read(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ChunkMessage:
        """The message from a task's arguments (JOB_ID, INDEX, VIDEOS, OUT, OPTIONS); `MessageRefused` if malformed."""
        names = ("job_id", "index", "videos", "out", "options")
        if len(args) > len(names) or set(kwargs) - set(names[len(args) :]):
            raise MessageRefused(f"chunk message refused: expected arguments {', '.join(names)}")
        fields = dict(zip(names, args)) | kwargs
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise MessageRefused(f"chunk message refused: {describe(exc)}") from None

    def args(self) -> list[Any]:
        """The task arguments that make this message again (to send the chunk again)."""
        return [self.job_id, self.index, list(self.videos), self.out, dict(self.options)]


class JobRecord(BaseModel):
    """The fields of a job's Redis hash a worker acts on, checked (the rest is only shown)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=JOB_ID.pattern)
    state: str
    out: str = Field(min_length=1, max_length=MAX_PATH_CHARS)
    options: dict[str, Any]
    chunks: int = Field(ge=0)
    summary: str = ""
    queue: str = ""

    @field_validator("summary")
    @classmethod
    def _summary(cls, name: str) -> str:
        if name and not SUMMARY_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a summary name the service makes")
        return name

    @field_validator("options", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("out")
    @classmethod
    def _out(cls, out: str) -> str:
        if not Path(out).is_absolute():
            raise ValueError("the output folder is not an absolute path")
        return _no_nul(out)

    @classmethod
    def read(cls, fields: dict[str, str]) -> JobRecord:
        """The checked record of a job hash; `MessageRefused` naming the bad field."""
        try:
            return cls.model_validate(fields)
        except (ValidationError, json.JSONDecodeError) as exc:
            reason = describe(exc) if isinstance(exc, ValidationError) else f"options: {exc}"
            raise MessageRefused(f"job record refused: {reason}") from None


def describe(exc: ValidationError) -> str:
    """A pydantic error as one short line per field (never the whole input: it may be huge or hostile)."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
