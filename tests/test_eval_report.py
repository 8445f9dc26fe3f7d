"""The HTML report opened in headless Chromium: sections present, every image decodes, offline."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from captioner.evaluation.command import run_eval

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Appended to a copy of the report: after load, record every image's decoded width and
# every section id in a <pre>, which --dump-dom then prints.
PROBE = """
<script>
window.addEventListener('load', () => {
  const out = {images: [], sections: []};
  for (const img of document.images) {
    out.images.push({alt: img.alt, ok: img.complete && img.naturalWidth > 0, width: img.naturalWidth});
  }
  for (const s of document.querySelectorAll('section')) out.sections.push(s.id);
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is needed for this test: install it with `apt-get install -y chromium`")
    return path


def write_clip(path: Path, color: tuple[int, int, int], frames: int = 12) -> None:
    """A small real H.264 MP4 with a moving bar, written with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=6)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            img = np.zeros((64, 96, 3), np.uint8)
            img[:] = color
            img[:, (i * 7) % 96 :][:, :12] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def caption_record(video: Path, caption: str) -> dict:
    return {"video": str(video), "status": "ok", "caption": caption, "error": None, "frames": 8,
            "model": "m", "adapter": None, "prompt": {"name": "detailed", "version": 1}}  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("report")
    clips = {
        "sea": ((20, 60, 200), "푸른 바다 위로 하얀 파도가 부서진다."),
        "forest": ((20, 160, 40), "울창한 숲 사이로 계곡물이 흐른다."),
        "city": ((200, 120, 20), "도시의 거리에 사람들이 걸어간다."),
    }
    for name, (color, _) in clips.items():
        write_clip(work / f"{name}.mp4", color)
    (work / "corrupt.mp4").write_bytes(b"this is not a video" * 50)
    refs = [
        {"video": f"{n}.mp4", "references": [r], "category": "도시" if n == "city" else "자연"}
        for n, (_, r) in clips.items()
    ]
    refs += [
        {"video": "corrupt.mp4", "references": ["고층 빌딩 사이로 해가 진다."], "category": "도시"},
        {"video": "missing.mp4", "references": ["한옥 지붕 위로 눈이 내린다."], "category": "건축물"},
    ]
    (work / "refs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refs), encoding="utf-8")
    run = [caption_record(work / f"{n}.mp4", r) for n, (_, r) in clips.items()]
    run += [caption_record(work / "corrupt.mp4", "강아지"), caption_record(work / "missing.mp4", "고양이")]
    base = [caption_record(work / f"{n}.mp4", "이 영상은 풍경을 보여준다.") for n in list(clips) + ["corrupt", "missing"]]
    for name, rows in (("run.jsonl", run), ("base.jsonl", base)):
        (work / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run_eval(work / "run.jsonl", work / "refs.jsonl", work / "out", against=work / "base.jsonl", worst_best=3)
    return work / "out" / "report.html"


def dump_dom(page: Path, profile: Path) -> str:
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_in_headless_chromium(report, tmp_path):
    source = report.read_text(encoding="utf-8")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(source.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = dump_dom(probe_page, tmp_path / "profile")
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert match, "the page did not finish loading in Chromium"
    probe = json.loads(html.unescape(match.group(1)))

    for section in ("summary", "warnings", "comparison", "categories", "distributions", "diversity",
                    "worst", "best", "changes", "missing", "unreferenced", "versions", "config"):  # fmt: skip
        assert section in probe["sections"], section

    broken = [img for img in probe["images"] if not img["ok"]]
    assert not broken, broken
    alts = {img["alt"] for img in probe["images"]}
    assert {"METEOR histogram", "caption length histogram"} <= alts
    assert any(a.startswith("per-clip METEOR") for a in alts)
    # One frame strip per decodable clip; the two bad videos get placeholders instead.
    assert {a for a in alts if a.startswith("frames of ")} == {"frames of sea", "frames of forest", "frames of city"}
    strip_widths = {img["width"] for img in probe["images"] if img["alt"].startswith("frames of ")}
    assert strip_widths == {6 * 96}  # six frames side by side
    assert f"No frames: video not found: {report.parent.parent / 'missing.mp4'}" in html.unescape(dom)
    assert "No frames: cannot read frames:" in dom and "corrupt.mp4" in dom

    # Captions beside references, in Korean.
    assert "푸른 바다 위로 하얀 파도가 부서진다." in dom
    # Everything is inline: nothing to fetch from a network.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", source)
    assert "url(http" not in source and "@import" not in source
