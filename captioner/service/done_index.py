"""The done-index: which videos of an output folder already have an `ok` record of a version, in Redis.

Checking a chunk's videos against it costs O(chunk), however many records the folder holds; only a
rebuild from the folder's files costs O(records), and happens only when the index is missing or the
files changed behind the service.

Keys, per output folder OUT and version VERSION (`folder_key`, `VersionKey.digest`):

- `captioner:done:OUT:VERSION` set: videos (`video_key`, of the exact path bytes) with an `ok` record of VERSION;
- `...:sig`: which state of the folder's files (`folder_signature`) the set was rebuilt from;
- `...:rebuilding` flag and `...:new` set: a rebuild under way, and what it has gathered so far;
- `captioner:claims:OUT:VERSION` hash: video -> the chunk captioning it now (see `JobStore.claim`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import redis

from captioner.records import CAPTIONS_FILE, PARTS_DIR, VersionKey, ok_videos, read_output
from captioner.service.redis_scripts import SWAP
from captioner.sources import video_bytes

log = logging.getLogger(__name__)

BATCH = 10_000  # members per Redis command when a set is filled or queried in bulk
# How the members of a done set are made, part of every `folder_signature`: a new value rebuilds each
# index once, on its first `ensure`. "keys2" (issue 20): a non-UTF-8 name's key hashes its bytes; its
# old key hashed its "\\xNN" text, which is the new key of a name spelling that text, so an old
# member would mark that other video done. Valid UTF-8 names keep their keys (see `video_key`).
INDEX_FORMAT = "keys2"


def video_key(video: Path | str | bytes) -> str:
    """How Redis names a video: 80 bits of a hash of its path's exact bytes, as 14 characters (any file name, small).

    `video` is a path or a video's identity (`sources.video_bytes`, `sources.record_key`): the same
    video gives the same key either way, which is what lets a rebuild from the records files agree
    with the keys workers compute from paths. Pass a path (`CaptionRecord.path`), never a record's
    `video` text: for a non-UTF-8 name that text is not the name.
    """
    # Before issue 20 this hashed the UTF-8 of `video_id(video)` (undecodable bytes as "\xNN"
    # text), so a name holding the byte 0xff and one holding the characters "\xff" shared a key.
    # For a name whose bytes are valid UTF-8, `video_id`'s text encodes back to exactly those
    # bytes: its key is unchanged, so a running deployment's claims and done members stay valid
    # across the upgrade. Only non-UTF-8 names get new keys; each done set is rebuilt once
    # (`INDEX_FORMAT`) so that their old members go.
    digest = hashlib.blake2b(video_bytes(video), digest_size=10).digest()
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def folder_key(out_dir: Path | str) -> str:
    """How Redis names an output folder."""
    return hashlib.blake2b(str(out_dir).encode("utf-8"), digest_size=8).hexdigest()


def batches(items: list[str]) -> Iterator[list[str]]:
    """`items` in slices of `BATCH`, so no single Redis command carries a million arguments."""
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def folder_signature(out_dir: Path) -> str:
    """What changes when an output folder's files change behind the service: `captions.jsonl`
    (size, time, inode) and the `parts/` folder's identity (deleted or replaced); and `INDEX_FORMAT`."""
    facts = [INDEX_FORMAT]
    for path in (out_dir / CAPTIONS_FILE, out_dir / PARTS_DIR):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            facts.append("-")
            continue
        facts.append(f"{st.st_ino}" if path.name == PARTS_DIR else f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return "|".join(facts)


class IndexKeys(NamedTuple):
    """The Redis keys of one output folder's done-index and claims for one version."""

    done: str
    claims: str
    rebuilding: str
    fresh: str
    sig: str

    @classmethod
    def of(cls, out_dir: Path, key: VersionKey) -> IndexKeys:
        """The keys of (`out_dir`, `key`)."""
        base = f"captioner:done:{folder_key(out_dir)}:{key.digest()}"
        claims = f"captioner:claims:{folder_key(out_dir)}:{key.digest()}"
        return cls(base, claims, base + ":rebuilding", base + ":new", base + ":sig")


class DoneIndex:
    """The done-index of every output folder (see the module docstring); `lock` is the store's shared lock."""

    def __init__(self, client: redis.Redis, lock: Callable[[str, int], Any]) -> None:
        self.redis = client
        self.lock = lock
        self._swap = client.register_script(SWAP)

    def ensure(self, out_dir: Path, key: VersionKey) -> None:
        """Make sure the done-index of (`out_dir`, `key`) reflects the folder's files; O(1) when it does.

        Part files are indexed by the workers that publish them. The index is rebuilt from the
        files (O(records), logged) when it is missing (Redis lost it, first use) or when
        `captions.jsonl` or the `parts/` folder changed behind the service (`captioner run`,
        files deleted or restored by hand).
        """
        keys = IndexKeys.of(out_dir, key)
        if self.redis.get(keys.sig) == folder_signature(out_dir):
            return
        with self.lock(f"index:{folder_key(out_dir)}:{key.digest()}", 3600):
            sig = folder_signature(out_dir)
            if self.redis.get(keys.sig) != sig:  # another worker may have rebuilt it while we waited
                self._rebuild(out_dir, key, keys, sig)

    def _rebuild(self, out_dir: Path, key: VersionKey, keys: IndexKeys, sig: str) -> None:
        started = time.perf_counter()
        # While rebuilding, publishers add to the new set too, so nothing published meanwhile is lost.
        self.redis.set(keys.rebuilding, "1", ex=3600)
        self.redis.delete(keys.fresh)
        records = read_output(out_dir)
        members = [video_key(identity) for identity in ok_videos(records, key)]  # the keys paths give
        for batch in batches(members):
            self.redis.sadd(keys.fresh, *batch)
        self._swap(keys=[keys.done, keys.fresh, keys.sig, keys.rebuilding], args=[sig])
        log.info(
            "done-index of %s (%s): rebuilt from %d records, %d done, in %.2f s",
            out_dir, key.label(), len(records), len(members), time.perf_counter() - started,
        )  # fmt: skip

    def drop(self, out_dir: Path, key: VersionKey) -> None:
        """Forget the done-index of (`out_dir`, `key`); the next `ensure` rebuilds it from the files."""
        keys = IndexKeys.of(out_dir, key)
        self.redis.delete(keys.done, keys.sig)

    def done(self, out_dir: Path, key: VersionKey, videos: Iterable[Path | str]) -> list[bool]:
        """For each video, whether it has an `ok` record of `key` in `out_dir` (call `ensure` first)."""
        flags: list[bool] = []
        for batch in batches([video_key(v) for v in videos]):
            flags += [bool(flag) for flag in self.redis.smismember(IndexKeys.of(out_dir, key).done, batch)]
        return flags
