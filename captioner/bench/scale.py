"""`captioner bench-service`: the service at fleet scale, on one machine.

A job of `videos` files (hard links to one small clip, in folders of 1,000) goes through a real
Redis server and real Celery worker processes. The workers run the service's real code with a
stand-in engine and decoder (`captioner.bench.standins`, named in the output), so the figures are
the service's own costs: submitting, per-chunk bookkeeping as the output grows, Redis memory,
finishing the job, `status`, and handing a SIGKILLed worker's chunks to another worker with the
default heartbeat settings. Beside it, with the real engine on the same clips: the queue path's
throughput against `captioner run`'s, with chunks of 4 and the default chunk size.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from captioner.bench.fleet import (
    CLI,
    STAND_IN_WORKER,
    RedisServer,
    WorkerProcesses,
    make_links,
    source_clip,
    wait_alive,
    wait_done,
    worker_env,
)
from captioner.config import Settings
from captioner.records import PARTS_DIR, read_output
from captioner.sources import record_key


def run_scale(
    settings: Settings, work: Path, videos: int, chunk: int, log: Callable[..., None] = print
) -> dict[str, Any]:
    """The stand-in measurements (see the module docstring); `work` holds links, outputs and logs."""
    from captioner.service import JobStore, chunk_size

    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    links_s = make_links(source_clip(work), work / "videos", videos)
    log(f"{videos:,} hard links ready ({links_s:.1f} s)")
    server = RedisServer(work / "redis").start()
    result: dict[str, Any] = {"videos": videos, "chunk_size": chunk, "stand_ins": _stand_in_names()}
    workers = WorkerProcesses(worker_env(settings, server.url, work, queue="scale"), work / "logs")
    try:
        base = settings.model_copy(update=dict(broker_url=server.url, allowed_roots=[work], queue="scale",
                                               chunk_size=chunk, settle_seconds=0))  # fmt: skip
        store = JobStore.connect(base)
        for i in (1, 2):
            workers.start(f"scale-w{i}@%h", [*STAND_IN_WORKER, f"scale-w{i}@%h"])
        wait_alive(server.client, 2)
        result.update(_whole_job(base, store, server, work, videos, log))
        workers.stop()
        result["bookkeeping"] = _bookkeeping(base, store, work, work / "out", chunk_size(base.model_copy(update=dict(
            chunk_size=None))), log)  # fmt: skip
        result["recovery"] = _recovery(base, store, workers, work, log)
    finally:
        workers.stop()
        server.stop()
    return result


def _whole_job(settings: Settings, store: Any, server: RedisServer, work: Path, videos: int,
               log: Callable) -> dict[str, Any]:
    """Submit every link as one job into `work/out` and wait for it: its seconds, `status`'s, Redis bytes."""
    from captioner.service import submit

    empty = server.used()
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    job_id = submit([work / "videos"], out, settings)
    submit_s = round(time.perf_counter() - started, 2)
    queued_bytes = server.used() - empty
    log(f"submitted {videos:,} videos in {submit_s} s")
    latencies: list[float] = []
    peak = 0

    def sample() -> None:
        nonlocal peak
        peak = max(peak, server.used() - empty)

    started = time.perf_counter()
    current = wait_done(store, job_id, 4 * 3600, latencies, on_poll=sample)
    job_s = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    done_bytes = server.used() - empty
    log(f"job done in {job_s:.0f} s; end of job {summary.get('finish_s')} s")
    return dict(
        submit_s=submit_s, job_state=current["state"], job_ok=current["ok"], job_seconds=round(job_s, 1),
        videos_per_s=round(videos / job_s, 1), end_of_job_s=summary.get("finish_s"),
        status_s_median=round(statistics.median(latencies), 4), status_s_max=round(max(latencies), 4),
        status_calls=len(latencies),
        redis_bytes_per_video_queued=round(queued_bytes / videos, 1),
        redis_bytes_per_video_peak=round(max(peak, queued_bytes, done_bytes) / videos, 1),
        redis_bytes_per_video_done=round(done_bytes / videos, 1),
    )  # fmt: skip


def _bookkeeping(settings: Settings, store: Any, work: Path, full: Path, chunk: int, log: Callable) -> dict[str, Any]:
    """Per-chunk seconds of `run_chunk` (stand-ins: all of it is bookkeeping) with 1k, 100k and all records."""
    from captioner.bench.standins import StandInDecoder, StandInEngine
    from captioner.service import WorkerRuntime, enqueue, job_options, run_chunk

    merged = sorted((full / PARTS_DIR).glob("*.jsonl"))[0]
    total = sum(1 for _ in merged.open("rb"))
    runtime = WorkerRuntime(
        settings.model_copy(update=dict(queue="scale-idle", chunk_size=chunk)),  # a queue no worker reads
        load=lambda plan: StandInEngine(plan), make_decoder=lambda plan: StandInDecoder(plan.frame_spec),
    )  # fmt: skip
    runtime.start_heartbeat()
    options = job_options(settings)
    rounds = 5
    fresh = work / "fresh"
    make_links(source_clip(work), fresh, 3 * rounds * chunk)
    new_videos = sorted(fresh.glob("*/*.mp4"))
    results = {}
    try:
        for n, label in [(1000, "1k"), (100_000, "100k"), (total, "all")]:
            n = min(n, total)
            out = full if n == total else _earlier_output(merged, work / f"out-{label}", n)
            batch = new_videos[: rounds * chunk]
            new_videos = new_videos[rounds * chunk :]
            job_id = enqueue(store, runtime.settings, [fresh], out, batch, options)
            plan = runtime.plan(options)
            store.drop_index(out, plan.key)  # as if Redis had lost it: the one O(records) rebuild
            started = time.perf_counter()
            store.ensure_index(out, plan.key)
            rebuild_s = time.perf_counter() - started
            seconds = []
            for index in range(rounds):
                videos = [str(v) for v in batch[index * chunk : (index + 1) * chunk]]
                started = time.perf_counter()
                run_chunk(runtime, job_id, index, videos, str(out), options.model_dump(exclude_none=True),
                          host="bench", last_attempt=False)  # fmt: skip
                seconds.append(time.perf_counter() - started)
            results[label] = {
                "records": n, "chunk_s_median": round(statistics.median(seconds), 4),
                "chunk_s_max": round(max(seconds), 4), "index_rebuild_s": round(rebuild_s, 3),
            }  # fmt: skip
            log(f"bookkeeping with {n:,} records: {results[label]}")
    finally:
        runtime.close()
    flat = results["all"]["chunk_s_median"] / results["1k"]["chunk_s_median"]
    return {"chunk": chunk, "by_records": results, "all_over_1k": round(flat, 2)}


def _earlier_output(merged: Path, out: Path, records: int) -> Path:
    """A fresh output folder holding the first `records` records of `merged` as one earlier part."""
    shutil.rmtree(out, ignore_errors=True)
    (out / PARTS_DIR).mkdir(parents=True)
    with merged.open("rb") as src, (out / PARTS_DIR / "earlier.jsonl").open("wb") as dst:
        for _, line in zip(range(records), src):
            dst.write(line)
    return out


def _recovery(settings: Settings, store: Any, workers: WorkerProcesses, work: Path, log: Callable) -> dict[str, Any]:
    """SIGKILL a worker mid-chunk with the default heartbeat settings; seconds until its chunks are done."""
    from captioner.service import submit

    defaults = Settings()
    env = {"CAPTIONER_QUEUE": "scale-recovery"}
    for i in (1, 2):
        workers.start(f"rec-w{i}@%h", [*STAND_IN_WORKER, f"rec-w{i}@%h", "0.5"], env)
    wait_alive(store.redis, 2)
    folder = work / "recovery-videos"
    make_links(source_clip(work), folder, 24)
    out = work / "out-recovery"
    shutil.rmtree(out, ignore_errors=True)
    # 6 chunks of 4 clips at 0.5 s a clip: each worker holds two, the killed one's wait for the heartbeat.
    job = submit([folder], out, settings.model_copy(update=dict(queue="scale-recovery", chunk_size=4)))
    victim = next(iter(workers.procs))
    host = victim.replace("%h", socket.gethostname())
    while not any(entry["host"] == host for entry in store.running(job).values()):
        time.sleep(0.2)
    time.sleep(1.0)  # mid-chunk
    held = [f for f, e in store.running(job).items() if e["host"] == host]
    workers.kill(victim)
    killed = time.perf_counter()
    final = wait_done(store, job, timeout=900)
    seconds = time.perf_counter() - killed
    records = read_output(out)
    videos = {record_key(r) for r in records}
    workers.stop()
    log(f"recovery: {len(held)} chunks of the killed worker done {seconds:.0f} s after the kill")
    return {
        "heartbeat_s": defaults.heartbeat_s, "dead_after_s": defaults.dead_after_s, "chunks_held": len(held),
        "seconds_from_kill_to_done": round(seconds, 1), "job_state": final["state"],
        "records": len(records), "videos": len(videos), "one_record_each": len(records) == len(videos) == final["ok"],
    }  # fmt: skip


def queue_vs_run(settings: Settings, work: Path, clips: int, chunk_sizes: list[int], log: Callable = print) -> dict:
    """Real engine: the queue path's throughput over `captioner run`'s on the same clips.

    Both on a loaded engine that has captioned before (a worker is long-lived; a long run pays its
    start once): one worker process, warmed by a first job, then a job per chunk size; then
    `caption_folders` in this process on a loaded engine, after a warm-up run of its own.
    """
    work = work.resolve()
    folder, warm = work / "real-clips", work / "warm-clips"
    _settled_clips(folder, clips)
    _settled_clips(warm, 4)
    result: dict[str, Any] = {"clips": clips}
    queue = _queue_runs(settings, work, folder, warm, clips, chunk_sizes, log)
    result["run"] = _local_run(settings, work, [warm, folder], clips)
    log(f"captioner run: {result['run']}")
    for label, figures in queue.items():
        figures["over_run"] = round(figures["videos_per_s"] / result["run"]["videos_per_s"], 3)
        result[label] = figures
    return result


def _settled_clips(folder: Path, count: int) -> None:
    """`count` small clips in `folder` (written once), dated an hour back so no run waits for them to settle."""
    from captioner.demo.scenes import write_clips

    if not folder.exists():
        write_clips(folder, count, seconds=2, fps=15, width=320, height=180)
    old = time.time() - 3600
    for clip in folder.glob("*.mp4"):
        os.utime(clip, (old, old))


def _queue_runs(settings: Settings, work: Path, folder: Path, warm: Path, clips: int, chunk_sizes: list[int],
                log: Callable) -> dict[str, dict[str, Any]]:
    """A real worker per chunk size (0: the default), warmed by a first job; the seconds of a job over `folder`."""
    from captioner.service import JobStore, chunks_in_flight, submit

    server = RedisServer(work / "redis-real").start()
    workers = WorkerProcesses(worker_env(settings, server.url, work, queue="real"), work / "logs")
    queue: dict[str, dict[str, Any]] = {}
    try:
        base = settings.model_copy(update=dict(broker_url=server.url, allowed_roots=[work], queue="real",
                                               settle_seconds=0))  # fmt: skip
        store = JobStore.connect(base)
        for size in chunk_sizes:
            # A worker configured like its submitters: the chunk size sets how many chunks it holds.
            sized = {"CAPTIONER_CHUNK_SIZE": str(size)} if size else {}
            name = f"real-{size or 'default'}@%h"
            workers.start(name, [*CLI, "worker", "--name", name], sized)
            wait_alive(server.client, 1, timeout=600)
            settings_for = base.model_copy(update=dict(chunk_size=size or None))
            # A warm-up that finds its clips done (a reused --work) would leave the engine cold.
            shutil.rmtree(work / f"queue-warm-out-{size}", ignore_errors=True)
            wait_done(store, submit([warm], work / f"queue-warm-out-{size}", settings_for), timeout=600)
            out = work / f"queue-out-{size or 'default'}"
            shutil.rmtree(out, ignore_errors=True)
            final = wait_done(store, submit([folder], out, settings_for), timeout=1800)
            workers.stop()
            server.client.delete(*server.client.keys("captioner:alive:*") or ["-"])
            seconds = final["timings"]["running_s"]
            label = f"chunk_{size}" if size else f"chunk_default_{-(-clips // final['chunks'])}"
            queue[label] = {
                "chunks": final["chunks"], "chunks_in_flight": chunks_in_flight(settings_for), "seconds": seconds,
                "videos_per_s": round(clips / seconds, 3), "ok": final["ok"],
            }  # fmt: skip
            log(f"queue, {label}: {queue[label]}")
    finally:
        workers.stop()
        server.stop()
    return queue


def _local_run(settings: Settings, work: Path, folders: list[Path], clips: int) -> dict[str, Any]:
    """`caption_folders` on each folder in turn with one loaded engine: the last one's figures (the first warms up)."""
    from captioner.captioning import caption_folders
    from captioner.planning import load_engine, make_plan

    local = settings.model_copy(update=dict(settle_seconds=0))
    engine = load_engine(make_plan(local))
    for target in folders:
        out = work / f"run-out-{target.name}"
        shutil.rmtree(out, ignore_errors=True)
        summary = caption_folders([target], out, local, engine=engine)
    return {"seconds": summary["seconds"], "videos_per_s": round(clips / summary["seconds"], 3), "ok": summary["ok"]}


def _stand_in_names() -> dict[str, str]:
    """What the output says replaced the engine and the decoder."""
    from captioner.bench.standins import STAND_IN_DECODER, STAND_IN_ENGINE

    return {"engine": STAND_IN_ENGINE, "decoder": STAND_IN_DECODER}


def scale_table(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows (measure, result) for the console and the README."""
    scale, rows = result.get("scale") or {}, []
    if scale:
        book = scale["bookkeeping"]["by_records"]
        rec = scale["recovery"]
        rows += [
            ("videos in the job (stand-in engine and decoder)", f"{scale['videos']:,}"),
            ("submit", f"{scale['submit_s']} s"),
            ("per-chunk bookkeeping, 1k / 100k / all records",
             " / ".join(f"{book[k]['chunk_s_median']:.4f}" for k in ("1k", "100k", "all"))
             + f" s (all/1k {scale['bookkeeping']['all_over_1k']}x, chunk {scale['bookkeeping']['chunk']})"),
            ("done-index rebuild, all records (once)", f"{book['all']['index_rebuild_s']} s"),
            ("Redis bytes per video: queued / peak / done",
             f"{scale['redis_bytes_per_video_queued']} / {scale['redis_bytes_per_video_peak']} / "
             f"{scale['redis_bytes_per_video_done']}"),
            ("whole job", f"{scale['job_seconds']} s ({scale['videos_per_s']} videos/s)"),
            ("end of job (merge parts, summary)", f"{scale['end_of_job_s']} s"),
            ("status, median / max", f"{scale['status_s_median']} / {scale['status_s_max']} s"),
            ("SIGKILLed worker's chunks done after", f"{rec['seconds_from_kill_to_done']} s (dead after "
             f"{rec['dead_after_s']:g} s; one record each: {rec['one_record_each']})"),
        ]  # fmt: skip
    real = result.get("real") or {}
    if real:
        rows.append(("captioner run (real engine)", f"{real['run']['videos_per_s']} videos/s"))
        for key, value in real.items():
            if key.startswith("chunk_"):
                rows.append((f"queue, {key.replace('_', ' ')}", f"{value['videos_per_s']} videos/s = "
                             f"{value['over_run']}x run"))  # fmt: skip
    return rows
