"""The service's exceptions, shared by its modules."""

from __future__ import annotations

from captioner.errors import CaptionerError


class SubmitError(CaptionerError):
    """A job that cannot be accepted; the message says why. Nothing has been queued."""


class JobNotFound(CaptionerError):
    """No such job (never submitted, or expired after `job_ttl`)."""


class RetryChunk(CaptionerError):
    """The chunk failed in a way worth another try (engine died, worker error); Celery retries it."""


class ChunkBusy(CaptionerError):
    """Another delivery of the chunk runs now (a duplicate message); this one is sent again later."""
