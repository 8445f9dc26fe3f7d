"""The Celery application of the captioning service: Redis broker, JSON messages only.

`make_app(settings)` builds it; its tasks live in `captioner.service.tasks`. The deployment
entry point `workers.app` (for `celery -A workers.app ...`) only builds the app from the
environment. Everything is configured from `captioner.config.Settings` (`CAPTIONER_*`
variables, or the TOML file named by `CAPTIONER_CONFIG`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.schedules import crontab

from captioner.config import Settings
from captioner.service.chunks import chunks_in_flight
from captioner.service.store import secure_url

CHUNK_TASK = "captioner.caption_chunk"
NIGHTLY_TASK = "captioner.nightly"
# kombu's Redis transport serves priority 0 first. Chunks go at a lower priority, so a chunk sent
# again because its worker died is taken before the rest of the queue (`RECOVERED_PRIORITY`).
CHUNK_PRIORITY = 6
RECOVERED_PRIORITY = 0


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for the service (see the README's "Running as a service")."""
    # The broker redelivers a vanished worker's chunk once it has been unacknowledged for
    # `visibility_timeout`; sweep for such chunks about ten times per timeout (at most every minute).
    # That is the second line: heartbeats hand a dead worker's chunk on within minutes.
    restore_every = max(1, min(60, settings.visibility_timeout // 10))
    config: dict[str, Any] = dict(
        broker_url=secure_url(settings.broker_url),
        result_backend=secure_url(settings.store_url),
        # JSON only: a pickled message would run code in the worker.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # One process per GPU holding one engine; never a forking pool (it breaks CUDA and vLLM).
        # Threads: the next chunk decodes while this one is captioned (the engine takes one at a time).
        worker_pool="threads",
        worker_concurrency=chunks_in_flight(settings),
        worker_prefetch_multiplier=1,  # hold only the chunks in flight: the others stay for other workers
        # A chunk is acknowledged when done, so a worker killed mid-chunk loses nothing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=settings.queue,
        task_routes={CHUNK_TASK: {"queue": settings.queue}, NIGHTLY_TASK: {"queue": settings.queue}},
        task_ignore_result=True,  # job state lives in our own Redis hash (captioner.service.store)
        result_expires=settings.job_ttl,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 5,
            "socket_timeout": 30,  # a vanished Redis must not hang a publish forever
            "health_check_interval": 10,
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        # Redis may be down when a worker starts or restart under it: keep reconnecting.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Celery 6's default: a late-acked task cut off from the broker cannot be acked, so it is
        # redelivered anyway.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Events for Flower.
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone=settings.timezone,
        enable_utc=True,
        beat_schedule=beat_schedule(settings),
        beat_schedule_filename=str(settings.home / "celerybeat-schedule"),
    )
    return config


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """The nightly entry (when watched folders are configured) for Celery beat."""
    if not settings.nightly_folders or settings.nightly_out is None:
        return {}
    return {
        "captioner-nightly": {
            "task": NIGHTLY_TASK,
            "schedule": crontab.from_string(settings.nightly_schedule),
            # A night missed (no worker up for hours) is not worth running late the next day.
            "options": {"queue": settings.queue, "expires": 12 * 3600},
        }
    }


def make_app(settings: Settings) -> Celery:
    """A Celery app configured from `settings`, with the service's tasks."""
    celery = Celery("captioner", include=["captioner.service.tasks"], set_as_current=False)
    celery.conf.update(celery_config(settings))
    return celery


_apps: dict[tuple, Celery] = {}


def _identity(settings: Settings) -> tuple:
    # What the messages' route and the broker connection depend on.
    return (
        settings.broker_url, settings.store_url, settings.queue, settings.visibility_timeout, settings.job_ttl,
        chunks_in_flight(settings),
    )  # fmt: skip


def app_for(settings: Settings) -> Celery:
    """The app for `settings` (one per broker, queue and timeouts; built on first use)."""
    key = _identity(settings)
    if key not in _apps:
        _apps[key] = make_app(settings)
    return _apps[key]
