"""The wheel a fleet installs: built from this checkout, installed outside it, captioning a clip without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from captioner.demo.scenes import write_clips
from captioner.prompts import load_prompt

CHECKOUT = Path(__file__).resolve().parents[1]
SITE_PROMPT = "site-ko"


def _run(args: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], check=False, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv outside the checkout holding the built wheel, given the checkout venv's dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build folders go to tmp: none is written into the checkout, and no earlier build's leftovers
    # (setuptools reuses build/lib) can slip into the wheel.
    build_cfg = tmp / "build.cfg"
    build_cfg.write_text(f"[build]\nbuild_base = {tmp / 'build'}\n[egg_info]\negg_base = {tmp}\n", encoding="utf-8")
    # Offline: the build backend is the setuptools of this venv (the `test` extra), not one from an index.
    _run(
        [sys.executable, "-m", "pip", "wheel", CHECKOUT, "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "-w", tmp / "dist"],
        env={**os.environ, "DIST_EXTRA_CONFIG": str(build_cfg)},
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("captioner-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    # Installed before the dependencies are visible, so pip sees no other `captioner` (the checkout's
    # editable one) that it could think to replace.
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
          "--quiet", wheel])  # fmt: skip
    # The dependencies: a path in a .pth file joins sys.path, but the .pth files inside it (the
    # editable install's finder among them) are not processed, so the checkout stays out of reach.
    purelib = Path(_run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                   .stdout.strip())  # fmt: skip
    deps = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    (purelib / "checkout-deps.pth").write_text("".join(f"{path}\n" for path in deps), encoding="utf-8")
    return venv


def test_installed_wheel_captions_with_its_bundled_prompt_and_a_site_prompt(venv, home, tmp_path):
    # Only the demo checkpoint's home from the session: no settings (a prompts dir, a config file) from outside.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONER_", "PYTHONPATH"))}
    env["CAPTIONER_HOME"] = str(home)
    code = (
        "import json, captioner, captioner.prompts as p, captioner.quantize as q; "
        "print(json.dumps([captioner.__file__, str(p.DEFAULT_PROMPTS_DIR), [str(c) for c in q.DEFAULT_CALIBRATION]]))"
    )
    where = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=env)
    package, prompts_dir, calibration = json.loads(where.stdout)
    assert Path(package).is_relative_to(venv) and not Path(package).is_relative_to(CHECKOUT / "captioner"), package
    assert Path(prompts_dir).is_relative_to(venv), prompts_dir
    assert all(Path(c).is_relative_to(venv) and Path(c).is_file() for c in calibration), calibration

    # A site's own prompt, beside the bundled ones.
    site = tmp_path / "site-prompts"
    (site / SITE_PROMPT).mkdir(parents=True)
    bundled = load_prompt("detailed-ko", CHECKOUT / "prompts")  # the checkout's current version
    text = bundled.source.read_text(encoding="utf-8")
    (site / SITE_PROMPT / "v1.toml").write_text(text.replace("자세히", "빛과 움직임을 자세히"), encoding="utf-8")
    site_prompt = load_prompt(SITE_PROMPT, site)
    assert site_prompt.digest != bundled.digest
    env["CAPTIONER_PROMPTS_DIR"] = str(site)

    write_clips(tmp_path / "clips", 1, seconds=1, fps=10, width=128, height=72)
    args = [venv / "bin" / "captioner", "run", "clips", "--out", "out", "--adapter", "demo", "--tier", "cpu",
            "--sampling", "deterministic", "--settle-seconds", "0"]  # fmt: skip
    summary = json.loads(_run(args, cwd=tmp_path, env=env).stdout)  # cwd outside the checkout
    assert summary["ok"] == 1 and summary["failed"] == 0, summary
    captions = tmp_path / "out" / "captions.jsonl"
    (record,) = [json.loads(line) for line in captions.read_text(encoding="utf-8").splitlines() if line]
    assert record["status"] == "ok" and record["caption"]
    assert record["prompt"] == bundled.identity()  # name, version and sha of the checkout's prompts/

    # `--prompt site-ko` resolves the site's prompt. Its run is shown the clip as already captioned
    # with that prompt (a record as the first run wrote it, with the site prompt's identity), so it
    # plans (finds, renders and budgets the prompt) and keys resume on it without a second engine load.
    with captions.open("a", encoding="utf-8") as f:
        f.write(json.dumps({**record, "prompt": site_prompt.identity()}, ensure_ascii=False) + "\n")
    site_summary = json.loads(_run([*args, "--prompt", SITE_PROMPT], cwd=tmp_path, env=env).stdout)
    assert site_summary["prompt"] == site_prompt.identity()
    assert (site_summary["skipped"], site_summary["ok"], site_summary["failed"]) == (1, 0, 0)
