"""What the fault benchmark (`captioner.bench.faults`) works in, sends, and checks at the end.

- `Layout`: the folders of a run: the allowed root (videos, the output folder), and beside it the
  targets of the hostile messages, Redis's files and the logs;
- `hostile_messages`: chunk messages no `submit` would send (a job id climbing out of the output
  folder, a job that does not exist, an output folder or videos outside the allowed roots, wrong
  types, a prompt that is a path);
- `end_state`: the invariants after the job: one `ok` record per video, nothing left running,
  claimed or queued, no file outside the root, no temporary file in the output folder;
- `fault_table`: the rows of the console and README table.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from captioner.bench.fleet import queued
from captioner.records import PARTS_DIR, read_output
from captioner.sources import video_id

VICTIM = "../../../victim"  # a job id that, joined under out/parts/, names a folder beside the root


@dataclass(frozen=True)
class Layout:
    """The folders of a fault run under `base` (see the module docstring)."""

    base: Path

    @property
    def root(self) -> Path:
        """The one allowed root: videos and output folder."""
        return self.base / "root"

    @property
    def videos(self) -> Path:
        """The job's videos (hard links)."""
        return self.root / "videos"

    @property
    def out(self) -> Path:
        """The job's output folder (a tmpfs mount point when the benchmark may mount)."""
        return self.root / "out"

    @property
    def outside(self) -> Path:
        """A folder beside the root holding a real clip, named by a hostile message."""
        return self.base / "outside"

    @property
    def outside_out(self) -> Path:
        """An output folder outside the root, named by a hostile message (must never appear)."""
        return self.base / "outside-out"

    @property
    def kept(self) -> list[Path]:
        """Folders outside the root the benchmark itself writes to (left out of the outside-files check)."""
        return [self.base / name for name in ("redis", "logs", "out-after")]

    def files_outside(self) -> set[str]:
        """Every file under `base` but outside the root and the benchmark's own folders."""
        found = set()
        for folder, dirs, files in os.walk(self.base):
            here = Path(folder)
            if here == self.root or here in self.kept:
                dirs[:] = []
                continue
            found.update(str(here / name) for name in files)
        return found


def mount_tmpfs(folder: Path, megabytes: int) -> str | None:
    """Mount a tmpfs of `megabytes` on `folder`; None when done, else why not (not root, no `mount`)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except OSError as exc:
        return f"skipped: cannot mount ({exc})"
    return None if done.returncode == 0 else f"skipped: cannot mount ({done.stderr.strip() or done.returncode})"


def unmount(folder: Path) -> None:
    """Unmount whatever is mounted on `folder` (lazily: a file may still be open in it)."""
    mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    while str(folder) in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
        mounted.remove(str(folder))


def hostile_messages(job_id: str, chunks: int, round_: int, layout: Layout, video: str,
                     options: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """(case, task arguments) of one round of hostile chunk messages for job `job_id` of `chunks` chunks.

    Most name the job's last chunk, likely still queued: a message taken for it would replace the
    real chunk's work (its videos would then lack a record), which the end state shows.
    """
    last = chunks - 1
    out = str(layout.out)
    outside_clip = str(layout.outside / "clip.mp4")
    return [
        ("job id climbing out of the output folder", [VICTIM, 0, [video], out, options]),
        ("job that does not exist", [uuid.uuid4().hex, 0, [video], out, options]),
        ("output folder outside the roots", [job_id, last, [video], str(layout.outside_out), options]),
        ("video outside the roots", [job_id, last, [outside_clip], out, options]),
        ("videos of the wrong type", [job_id, last, [123], out, options]),
        ("chunk index of the wrong type", [job_id, "x", [video], out, options]),
        ("chunk index past the job's chunks", [job_id, chunks + 1000 + round_, [video], out, options]),
        ("prompt given as a path", [job_id, last, [video], out, dict(options, prompt="../../../etc/passwd")]),
    ]


def temp_files(out: Path) -> list[str]:
    """Temporary files (`*.tmp`) and unmerged chunk parts (`parts/JOB/...`) under `out`."""
    found = []
    for folder, _, files in os.walk(out):
        unmerged = Path(folder).parent == out / PARTS_DIR
        found += [str(Path(folder) / name) for name in files if name.endswith(".tmp") or unmerged]
    return sorted(found)


def service_state(client: redis.Redis, queue: str) -> dict[str, int]:
    """What the service holds in Redis: jobs queued or running, claims, running chunks, messages left."""
    jobs = [key for key in client.scan_iter("captioner:job:*") if key.endswith("}")]
    states = [client.hget(key, "state") for key in jobs]
    claims = sum(client.hlen(key) for key in client.scan_iter("captioner:claims:*"))
    return {
        "jobs_running": sum(1 for state in states if state in ("queued", "running")),
        "claims_held": claims,
        "running_entries": client.hlen("captioner:running"),
        "queued_messages": queued(client, queue),
        "unacked_messages": client.hlen("unacked"),
    }


def record_counts(out: Path, videos: list[Path]) -> dict[str, Any]:
    """Per video of the job: how many `ok` records the output folder holds; and records of other videos."""
    records = read_output(out)
    wanted = {video_id(v) for v in videos}
    ok = Counter(r["video"] for r in records if r.get("status") == "ok")
    counts = Counter(ok.get(v, 0) for v in wanted)
    return {
        "videos": len(wanted),
        "videos_with_one_ok": counts.get(1, 0),
        "videos_without_ok": counts.get(0, 0),
        "videos_with_several_ok": sum(n for times, n in counts.items() if times > 1),
        "failed_records": sum(1 for r in records if r.get("status") != "ok"),
        "records_of_other_videos": sorted({r["video"] for r in records if r["video"] not in wanted}),
    }


def end_state(client: redis.Redis, queue: str, layout: Layout, videos: list[Path],
              outside_before: set[str]) -> dict[str, Any]:
    """The end-state figures (see the module docstring) and whether each invariant holds."""
    state: dict[str, Any] = record_counts(layout.out, videos)
    state.update(service_state(client, queue))
    state["files_outside_root"] = sorted(layout.files_outside() - outside_before)
    state["temp_files"] = temp_files(layout.out)
    state["invariants"] = {
        "one_ok_record_each": state["videos_with_one_ok"] == state["videos"],
        "no_job_running": state["jobs_running"] == 0,
        "no_claim_held": state["claims_held"] == 0,
        "no_running_entry": state["running_entries"] == 0,
        "no_file_outside_root": not state["files_outside_root"],
        "no_temp_file": not state["temp_files"],
    }
    return state


def fault_table(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows (measure, result) for the console and the README."""
    end, job = result["end_state"], result["job"]
    kinds = ", ".join(f"{kind} {n}" for kind, n in result["faults_by_kind"].items())
    last = result["seconds_from_last_fault_to_end"]
    return [
        ("videos, chunks, workers (stand-in engine and decoder)",
         f"{result['videos']:,} videos, {result['chunks']} chunks of {result['chunk_size']}, "
         f"{result['workers']} workers"),
        ("faults injected (seed)", f"{kinds} ({result['seed']})"),
        ("job", f"{job['state']} after {job['seconds']} s"),
        ("workers that exited by themselves (started again)", str(len(result["workers_exited_by_themselves"]))),
        ("videos with exactly one ok record", f"{end['videos_with_one_ok']:,} of {end['videos']:,} "
         f"({end['videos_without_ok']} none, {end['videos_with_several_ok']} several)"),
        ("records of videos not in the job", str(len(end["records_of_other_videos"]))),
        ("jobs left running / claims held / running entries",
         f"{end['jobs_running']} / {end['claims_held']} / {end['running_entries']}"),
        ("files created outside the root / temp files left",
         f"{len(end['files_outside_root'])} / {len(end['temp_files'])}"),
        ("seconds from the last fault to the job's end", "-" if last is None else f"{last} s"),
    ]  # fmt: skip
