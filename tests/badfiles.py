"""Bad inputs for the frame stage, written by the tests (nothing is downloaded)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from captioner.demo.scenes import write_clip


def audio_only(path: Path) -> Path:
    """An MP4 container with one AAC audio stream and no video."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_bad_files(folder: Path, source_clip: Path) -> dict[str, Path]:
    """Every kind of bad input the pipeline must survive, keyed by a short name."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "empty": folder / "empty.mp4",
        "text": folder / "notes.mp4",
        "image": folder / "picture.mov",
        "truncated": folder / "truncated.mp4",
        "truncated_faststart": folder / "truncated_faststart.mkv",
        "audio": folder / "audio_only.mp4",
        "directory": folder / "folder.avi",
        "dangling": folder / "dangling.webm",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("이것은 영상이 아닙니다. just text\n", encoding="utf-8")
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(folders_png := folder / "tmp.png")
    files["image"].write_bytes(folders_png.read_bytes())
    folders_png.unlink()
    data = source_clip.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    # Matroska keeps its index up front, so a cut file still opens and fails later, mid-stream.
    full = write_clip(folder / "full.mkv", "city", seconds=3, fps=10, width=160, height=96)
    cut = full.read_bytes()
    files["truncated_faststart"].write_bytes(cut[: len(cut) // 3])
    full.unlink()
    audio_only(files["audio"])
    files["directory"].mkdir(exist_ok=True)
    os.symlink(folder / "missing-target.mp4", files["dangling"])
    return files


# Decoders for FrameDecoder's `decode` hook: they run in its real worker processes.
def hanging_decode(path: Path, spec):
    """Never returns for clips named *hang*; decodes the others normally."""
    from captioner.frames import decode_clip

    if "hang" in path.name:
        time.sleep(3600)
    return decode_clip(path, spec)


def crashing_decode(path: Path, spec):
    """Kills its own process for clips named *crash*, as a segfaulting decoder would."""
    from captioner.frames import decode_clip

    if "crash" in path.name:
        os._exit(139)
    return decode_clip(path, spec)
