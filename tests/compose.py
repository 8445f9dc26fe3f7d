"""The service commands of docker/compose.yaml, so the tests run exactly what the containers run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker" / "compose.yaml"
# The images' ENTRYPOINT (docker/*.Dockerfile); the tests run the same CLI from this checkout.
IMAGE_ENTRYPOINT = ["captioner"]
CLI = [sys.executable, "-m", "captioner.cli"]


def services() -> dict[str, dict[str, Any]]:
    """compose.yaml's services, with its YAML anchors and merge keys resolved."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]


def captioner_args(service: str) -> list[str]:
    """The `captioner` arguments a service's container runs (its `command`)."""
    spec = services()[service]
    assert spec.get("entrypoint", IMAGE_ENTRYPOINT) == IMAGE_ENTRYPOINT, f"{service} does not run captioner"
    return list(spec["command"])


def healthcheck_args(service: str) -> list[str]:
    """The `captioner` arguments of a service's health check (`CMD captioner ...`)."""
    test = services()[service]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "captioner"], test
    return list(test[2:])


def with_option(args: list[str], option: str, value: str) -> list[str]:
    """`args` with the value of `option` replaced (e.g. a worker's --name)."""
    i = args.index(option)
    return [*args[: i + 1], value, *args[i + 2 :]]
