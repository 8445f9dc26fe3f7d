"""Build hook: the wheel carries the repository's data that the commands read.

Everything else is configured in pyproject.toml. `prompts/` stays the top-level home of the
versioned prompts in the repository, and the calibration references stay beside the clips and the
evaluation set they belong to; a build copies them into the `captioner` package (`BUNDLED`), so an
installed package needs no checkout. An editable install copies nothing: it reads the repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

ROOT = Path(__file__).resolve().parent
# Repository path -> path inside the built `captioner` package. Read by captioner/prompts.py
# (DEFAULT_PROMPTS_DIR) and captioner/quantize.py (DEFAULT_CALIBRATION); MANIFEST.in puts the
# same paths into the sdist, so a wheel built from it carries them too.
BUNDLED = {
    "prompts": "data/prompts",
    "samples/references.jsonl": "data/calibration/references.jsonl",
    "eval/sample_refs.jsonl": "data/calibration/sample_refs.jsonl",
}


class BuildPyWithData(build_py):
    """`build_py` that also copies `BUNDLED` into the built package."""

    def run(self) -> None:
        """Build the packages, then copy the repository data into the built `captioner` package."""
        super().run()
        if self.editable_mode:
            return
        package = Path(self.build_lib) / "captioner"
        for source, target in BUNDLED.items():
            src, dst = ROOT / source, package / target
            if not src.exists():  # a wheel without its prompts would install and then fail on every run
                raise FileError(f"{src}: missing; the wheel must carry it as captioner/{target}")
            if src.is_dir():
                # A build folder is reused between builds: a prompt removed from the repository must not linger.
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*", "__pycache__"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildPyWithData})
