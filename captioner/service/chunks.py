"""How a job is cut into chunks, and how many chunks a worker holds at once."""

from __future__ import annotations

import math

from captioner.config import Settings
from captioner.tiers import resolve_profile


def _batch(settings: Settings) -> int:
    profile = resolve_profile(settings.tier, settings.profile)
    return profile.batch_size or profile.max_num_seqs or profile.max_clips


def chunk_size(settings: Settings) -> int:
    """Videos per chunk: `chunk_size`, else two of the tier's largest batches (decoding runs a batch ahead).

    The batch itself is sized on the worker, from its model and memory; the submitter knows the
    tier's ceiling (`max_clips`), or the batch when the profile sets one.
    """
    return settings.chunk_size or 2 * _batch(settings)


def chunks_in_flight(settings: Settings) -> int:
    """Chunks a worker holds at once: `chunks_in_flight`, else enough chunks of `chunk_size` for
    three batches (two decoding while one is captioned), at least two.

    With the default chunk (two batches) that is 2; workers of a fleet that queues chunks of 4
    clips (`CAPTIONER_CHUNK_SIZE=4`) hold 12, so the engine still gets full batches.
    """
    return settings.chunks_in_flight or max(2, math.ceil(3 * _batch(settings) / chunk_size(settings)))
