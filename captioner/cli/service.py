"""`captioner worker`, `submit`, `status`, `cancel`, `health`, `beat`: the queue service."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from captioner.cli.common import app, checked_settings, echo_json, fail, job_store, setup_logging


@app.command()
def worker(
    model: Optional[str] = typer.Option(None, help="Model folder or hub id; 'demo' = built-in demo checkpoint."),
    adapter: Optional[str] = typer.Option(None, help="LoRA adapter folder; 'demo' = the demo adapter."),
    tier: Optional[str] = typer.Option(None, help="auto|cpu|t4|l4|a100-40|a100-80|h100."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a tier profile field: FIELD=VALUE."),
    name: Optional[str] = typer.Option(None, help="Worker name (default captioner-PID@HOST)."),
    metrics_port: Optional[int] = typer.Option(
        None, help="Serve Prometheus metrics on this port at /metrics (default CAPTIONER_METRICS_PORT; off if unset)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log engine details."),
) -> None:
    """Run one caption worker (one per GPU): load the engine once, then caption chunks from the queue."""
    from captioner.engine import EngineError
    from captioner.planning import ConfigError

    setup_logging(verbose)
    settings = checked_settings(model=model, adapter=adapter, tier=tier, sets=sets, metrics_port=metrics_port)
    from captioner.service import chunks_in_flight, tasks
    from captioner.service.celery_app import app_for

    runtime = tasks.use_settings(settings)
    try:
        runtime.start()  # before consuming: a worker that cannot caption must not take chunks
    except (ConfigError, EngineError) as exc:
        fail(str(exc))
    tasks.run_worker(
        app_for(settings),
        [
            "worker",
            f"--hostname={name or f'captioner-{os.getpid()}@%h'}",
            f"--queues={settings.queue}",
            "--pool=threads",  # one process, one engine; the next chunk decodes while this one is captioned
            f"--concurrency={chunks_in_flight(settings)}",
            "--loglevel=INFO",
        ]
    )


@app.command()
def submit(
    video_dirs: list[Path] = typer.Argument(
        ...,
        help="Folders to caption (under the allowed roots).",
        readable=False,  # checked by submit, one message
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for captions.jsonl and summary.json."),
    prompt: Optional[str] = typer.Option(None, help="Prompt name under prompts/, or name@version."),
    sampling: Optional[str] = typer.Option(None, help="default | deterministic (greedy, for evaluation)."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the worker's tier's)."),
    tier: Optional[str] = typer.Option(None, help="The workers' tier, which sizes the chunks."),
    chunk_size: Optional[int] = typer.Option(None, help="Videos per chunk (default: 2 x the tier's batch)."),
    settle_seconds: Optional[float] = typer.Option(
        None, help="Leave files modified more recently than this for a later job (default 60)."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait until the job is finished and print its status."),
) -> None:
    """Queue VIDEO_DIRS for the workers and print the job id. Exit status with --wait: 0 done, 1 not."""
    from captioner.service import SubmitError, submit as submit_job, wait as wait_job

    settings = checked_settings(
        prompt=prompt, sampling=sampling, frames=frames, tier=tier, chunk_size=chunk_size, settle_seconds=settle_seconds
    )
    try:
        job_id = submit_job(video_dirs, out, settings)
    except SubmitError as exc:
        fail(str(exc))
    typer.echo(job_id)
    if wait:

        def progress(current: dict) -> None:
            typer.echo(
                f"{current['state']}: {current['ok']} ok, {current['failed']} failed, "
                f"{current['skipped']} skipped, {current['pending']} pending",
                err=True,
            )

        final = wait_job(job_store(settings, patient=True), job_id, poll_s=2.0, on_poll=progress)
        echo_json(final, indent=2)
        raise typer.Exit(0 if final["state"] == "done" else 1)


@app.command()
def status(job_id: str = typer.Argument(..., help="Job id printed by `captioner submit`.")) -> None:
    """Print a job's state, counts (videos, ok, failed, skipped, pending), timings and workers as JSON."""
    from captioner.service import JobNotFound, status as job_status

    try:
        current = job_status(job_store(checked_settings()), job_id)
    except JobNotFound as exc:
        fail(str(exc))
    echo_json(current, indent=2)


@app.command()
def cancel(job_id: str = typer.Argument(..., help="Job id printed by `captioner submit`.")) -> None:
    """Cancel a job: chunks not started are skipped, running chunks stop after their current clip."""
    from captioner.service import JobNotFound, cancel as cancel_job

    try:
        current = cancel_job(job_store(checked_settings()), job_id)
    except JobNotFound as exc:
        fail(str(exc))
    echo_json(current, indent=2)


@app.command()
def health(
    worker_check: bool = typer.Option(
        True, "--worker/--no-worker", help="Also require this host's worker to serve metrics (engine loaded)."
    ),
) -> None:
    """Container health check: exit 0 if Redis answers and (with --worker) the local worker is ready, else 1."""
    import urllib.error
    import urllib.request

    from captioner.service import SubmitError, connect, ping

    settings = checked_settings()
    try:
        ping(connect(settings.broker_url, patient=False))
    except SubmitError as exc:
        fail(f"broker: {exc}", code=1)
    if worker_check:
        if settings.metrics_port is None:
            fail("no worker metrics to check: CAPTIONER_METRICS_PORT is not set", code=1)
        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        try:
            body = urllib.request.urlopen(url, timeout=10).read().decode()
        except (urllib.error.URLError, OSError) as exc:
            fail(f"worker not ready: {url}: {exc}", code=1)
        if "captioner_engine_loads_total" not in body:
            fail(f"{url} is not a captioner worker's metrics endpoint", code=1)
    typer.echo("ok")


@app.command()
def beat() -> None:
    """Run Celery beat: queue the nightly job of the watched folders on the configured crontab."""
    settings = checked_settings()
    if not settings.nightly_folders or settings.nightly_out is None:
        fail("no nightly job configured: set nightly_folders and nightly_out (CAPTIONER_* or CAPTIONER_CONFIG)")
    from captioner.service.celery_app import app_for

    app_for(settings).start(["beat", "--loglevel=INFO"])
