"""Shared fixtures: one demo checkpoint and one real vLLM engine for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from captioner.config import Settings
from captioner.demo.scenes import write_clips


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    """CAPTIONER_HOME for the session (the demo checkpoint is built here once), also for subprocesses."""
    path = tmp_path_factory.mktemp("home")
    os.environ["CAPTIONER_HOME"] = str(path)
    from captioner.demo import build_demo_model

    # The random adapter: the suite's tests need an adapter that changes outputs, not a trained one
    # (test_train trains its own; `make demo` and `captioner demo-model` train the demo adapter).
    build_demo_model(path / "demo", train_adapter=False)
    return path


@pytest.fixture(scope="session")
def settings(home) -> Settings:
    """Demo model and adapter on the CPU tier, greedy decoding so outputs are repeatable."""
    return Settings(model="demo", adapter="demo", tier="cpu", sampling="deterministic", home=home)


@pytest.fixture(scope="session")
def plan(settings):
    from captioner.planning import make_plan

    return make_plan(settings)


@pytest.fixture(scope="session")
def engine(plan):
    """The real vLLM engine on the demo checkpoint with its LoRA adapter, loaded once.

    Modules that build an engine of their own (`test_train`) tear down vLLM's process-wide
    parallel state when theirs goes, so modules using this one must run before them
    (pytest runs files in name order: `test_pipeline_windows` before `test_train`).
    """
    from captioner.planning import load_engine

    return load_engine(plan)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """Five small real H.264 clips."""
    folder = tmp_path_factory.mktemp("clips")
    write_clips(folder, 5, seconds=2, fps=10, width=160, height=96)
    return folder


# The service tests' Redis and allowed root: one per test module (each starts its own workers).
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The allowed root of the module's submissions."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A redis-server of the module's own, persisting to an append-only file (it survives a restart)."""
    from tests.service_support import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
