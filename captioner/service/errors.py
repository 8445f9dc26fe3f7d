"""The service's exceptions, shared by its modules."""

from __future__ import annotations


class SubmitError(Exception):
    """A job that cannot be accepted; the message says why. Nothing has been queued."""


class JobNotFound(Exception):
    """No such job (never submitted, or expired after `job_ttl`)."""


class RetryChunk(Exception):
    """The chunk failed in a way worth another try (engine died, worker error); Celery retries it."""
