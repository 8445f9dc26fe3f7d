"""Probe time and bytes read for a 2-hour take, from its index and by a full packet scan.

    python benchmarks/probe_index.py [SECONDS]

Writes a 2-hour MP4 take (96x64 with grain, 5 fps, about 5 KB a frame: packets of one 10 s take
copied with shifted timestamps, `captioner.bench.longtakes`), then probes it both ways, with the
file's pages dropped from the page cache first ("cold-ish": posix_fadvise, not the whole cache)
and again warm. Bytes are this process's `rchar` (what FFmpeg asked the kernel for).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from captioner.bench.longtakes import write_long_take
from captioner.demo.scenes import write_clip
from captioner.frames.probe import probe, process_bytes_read


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = write_clip(Path(folder) / "grainy.mp4", "nature", seconds=10, fps=5, width=96, height=64,
                            grain=40, crf=10, keyframe_interval=5)  # fmt: skip
        take = write_long_take(source, Path(folder) / "take.mp4", seconds)
        size = take.stat().st_size
        print(f"take: {seconds:g} s, {size:,} bytes")
        for use_index in (True, False):
            for state in ("cold-ish", "warm"):
                if state == "cold-ish":
                    drop_from_page_cache(take)
                before, started = process_bytes_read(), time.perf_counter()
                info = probe(take, use_index=use_index)
                took, read = time.perf_counter() - started, process_bytes_read() - before
                print(f"{'index' if use_index else 'scan':5} {state:8}: {took:.3f} s, {read:,} bytes "
                      f"({read / size:.2%}), {info.frames:,} frames")  # fmt: skip


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 7200.0)
