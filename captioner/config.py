"""All configuration in one typed place.

Precedence, highest first: CLI flags, `CAPTIONER_*` environment variables, the TOML file named by
`CAPTIONER_CONFIG` (if set), defaults here.
Tier profile fields are overridden with `--set FIELD=VALUE` or `CAPTIONER_PROFILE__FIELD=VALUE`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from captioner.prompts import DEFAULT_PROMPTS_DIR

if TYPE_CHECKING:
    from captioner.windows import WindowPolicy

DEMO = "demo"  # --model demo / --adapter demo: the built-in random-weight checkpoint


class Sampling(BaseModel):
    """vLLM sampling parameters for one preset."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0  # 0 = off in vLLM
    repetition_penalty: float = 1.0
    max_tokens: int = 256
    min_tokens: int = 0


SAMPLING_PRESETS: dict[str, Sampling] = {
    # Korean description: some variety, and a floor on length so captions are not one-liners.
    "default": Sampling(temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.1, max_tokens=256, min_tokens=50),
    # Evaluation runs: greedy, so two runs of the same model score the same.
    "deterministic": Sampling(temperature=0.0, repetition_penalty=1.1, max_tokens=256, min_tokens=50),
}


CONFIG_ENV = "CAPTIONER_CONFIG"  # names an optional TOML file with any of the settings below
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Safe by default: a folder that exists only where an administrator made it for captioning.
DEFAULT_ALLOWED_ROOTS = (Path("/srv/captioner"),)
# A reference caption is 0.1-2 KB: a line (record) a thousand times that is a wrong file, and is
# refused before it costs seconds and gigabytes; a whole file holds about a million clips' worth.
REFERENCE_MAX_LINE_BYTES = 1 << 20
REFERENCE_MAX_FILE_BYTES = 1 << 30

PathList = Annotated[list[Path], NoDecode]  # from the environment: paths separated by ':'


def default_home() -> Path:
    """Where the demo checkpoint is cached: $CAPTIONER_HOME, else ~/.cache/captioner."""
    return Path(os.environ.get("CAPTIONER_HOME", Path.home() / ".cache" / "captioner"))


class Settings(BaseSettings):
    """Settings for captioning runs and workers."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_", env_nested_delimiter="__", extra="ignore")

    model: str = Field(DEMO, description="Model folder or hub id; 'demo' = the built-in random-weight checkpoint.")
    adapter: str | None = Field(
        None, description="LoRA adapter folder; 'demo' = the demo adapter; 'none' = no adapter (e.g. merged by quantize)."
    )
    compare_adapters: list[str] = Field(
        default_factory=list,
        description="More adapters captioned side by side with `adapter` ('none' = the base model): each clip is "
        "decoded once and gets one record per adapter (`captioner run --adapter A --adapter B`).",
    )
    tier: Literal["auto", "cpu", "t4", "l4", "a100-40", "a100-80", "h100"] = "auto"
    frames: int | None = Field(None, gt=0, description="Frames per clip; default from the tier.")
    prompt: str = Field("detailed-ko", description="Prompt name, or name@version.")
    prompts_dir: Path = DEFAULT_PROMPTS_DIR
    sampling: Literal["default", "deterministic"] = "default"
    seed: int = 0
    decode_timeout: float = Field(60.0, gt=0, description="Seconds before a clip's decoder process is killed.")
    # A file without an index (MPEG-TS, raw streams) is probed by reading every packet: bounded here.
    probe_max_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="Bytes the packet scan of a file without an index may read."
    )
    probe_max_seconds: float = Field(
        20.0, gt=0, description="Seconds the packet scan of a file without an index may take."
    )
    # Caps decided from a clip's probe, before decoding (defaults as in captioner/frames/decode.py).
    max_display_pixels: int = Field(
        7680 * 4320, gt=0, description="Pixels a frame may have as shown (or as coded, if larger); default 8K UHD."
    )
    max_aspect: float = Field(
        10.0, ge=1, description="Long side / short side a frame may have as shown (32:9 panoramas are 3.6)."
    )
    max_frames: int = Field(64, gt=0, description="Frames per clip a decoder may be asked for (tiers take 8-32).")
    decoder_memory_mb: int = Field(
        4096, ge=0, description="MiB of address space a decoder process may add once its libraries are loaded; "
        "a clip past it fails alone; 0 = no limit."
    )
    keyframe_tolerance: float = Field(
        0.25, ge=0, le=0.5, description="A target frame is served by its nearest keyframe within this share of a "
        "segment (cheaper to decode); 0 = exact frames."
    )
    windows: str = Field(
        "auto", description="How files are cut into windows captioned apart: auto (files longer than "
        "window_auto_max_s get fixed windows of window_seconds), none (one caption per file), "
        "fixed:SECONDS[:OVERLAP], or shots."
    )
    window_auto_max_s: float = Field(60.0, ge=0, description="--windows auto: files up to this length get one caption.")
    window_seconds: float = Field(30.0, gt=0, description="--windows auto and shots: the length of a fixed window.")
    settle_seconds: float = Field(
        60.0, ge=0, description="Files modified more recently than this may still be copying: nightly and queued "
        "jobs leave them for the next run, `captioner run` warns (or waits with --wait-settled)."
    )
    home: Path = Field(default_factory=default_home)
    profile: dict[str, Any] = Field(default_factory=dict, description="Overrides of tier profile fields.")
    reference_max_line_bytes: int = Field(
        REFERENCE_MAX_LINE_BYTES, gt=0, description="Largest reference JSONL line, CSV line or field, or AI-Hub "
        "label file (`captioner eval --refs`); a larger one is reported with its file and line."
    )
    reference_max_file_bytes: int = Field(
        REFERENCE_MAX_FILE_BYTES, gt=0, description="Largest references file (or AI-Hub label folder, all files)."
    )

    # Service (`captioner worker | submit | status | cancel | beat`).
    broker_url: str = Field(DEFAULT_REDIS_URL, description="Celery broker: redis:// or rediss:// (TLS) URL.")
    result_backend: str | None = Field(None, description="Redis URL for job state and results; default broker_url.")
    queue: str = Field("captioner", description="Queue of caption chunks; one queue per model/adapter.")
    allowed_roots: PathList = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_ROOTS),
        description="Submitted folders and output folders must lie under one of these.",
    )
    output_roots: PathList = Field(
        default_factory=list,
        description="Output folders must lie under one of these (e.g. not under a read-only videos mount); "
        "empty: the allowed roots.",
    )
    chunk_size: int | None = Field(None, gt=0, description="Videos per queued chunk; default 2 x the tier's batch.")
    job_ttl: int = Field(7 * 24 * 3600, gt=0, description="Seconds a finished job's state is kept in Redis.")
    visibility_timeout: int = Field(
        3600, gt=0, description="Seconds after which a chunk of a vanished worker is redelivered; > longest chunk."
    )
    chunk_retries: int = Field(3, ge=0, description="Retries of a chunk after an engine or worker error.")
    chunks_in_flight: int | None = Field(
        None, ge=1, le=64, description="Chunks a worker holds at once (they decode while the engine captions, and "
        "their batches are merged); default: enough chunks of chunk_size for three batches, at least 2."
    )
    heartbeat_s: float = Field(15.0, gt=0, description="Seconds between a worker's heartbeats.")
    dead_after_s: float = Field(
        90.0, gt=0, description="A worker silent this long is dead: its chunks are sent to another worker."
    )
    nightly_folders: PathList = Field(default_factory=list, description="Folders captioned by the nightly job.")
    nightly_out: Path | None = Field(None, description="Output folder of the nightly job.")
    nightly_schedule: str = Field("0 2 * * *", description="Crontab (minute hour day month weekday), nightly job.")
    timezone: str = Field("UTC", description="Time zone of the nightly schedule and of dated summaries.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Workers serve Prometheus metrics on this port (/metrics); None = off."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the metrics endpoint listens on (0.0.0.0 in containers)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags over environment over the optional TOML file named by `CAPTIONER_CONFIG`."""
        sources = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            path = Path(config_file).expanduser()
            if not path.is_file():  # a typo must not silently fall back to defaults (e.g. the broker)
                raise ValueError(f"{CONFIG_ENV}={config_file}: no such config file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return (*sources, file_secret_settings)

    @field_validator("allowed_roots", "output_roots", "nightly_folders", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: "/a:/b"
            return [part for part in value.split(":") if part.strip()]
        return value

    @field_validator("tier", mode="before")
    @classmethod
    def _renamed_tier(cls, value: Any) -> Any:
        from captioner.tiers import RENAMED_TIERS

        if value in RENAMED_TIERS:
            raise ValueError(f"tier {value!r} is now {RENAMED_TIERS[value]}")
        return value

    @field_validator("windows")
    @classmethod
    def _known_windows(cls, value: str) -> str:
        from captioner.errors import ConfigError
        from captioner.windows import WindowPolicy

        try:
            WindowPolicy.parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("adapter", mode="before")
    @classmethod
    def _no_adapter(cls, value: Any) -> Any:
        # An environment variable cannot be unset from a compose file or a TOML override: "none" can.
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("nightly_schedule")
    @classmethod
    def _five_crontab_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"{value!r}: a crontab needs five fields (minute hour day-of-month month day-of-week)")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{value!r}: unknown time zone ({exc})") from None
        return value

    @property
    def store_url(self) -> str:
        """Redis URL of the job state (the result store)."""
        return self.result_backend or self.broker_url

    def sampling_params(self) -> Sampling:
        """The sampling preset in force."""
        return SAMPLING_PRESETS[self.sampling]

    @property
    def demo_dir(self) -> Path:
        """Folder of the built-in demo checkpoint."""
        return self.home / "demo"

    @property
    def writable_roots(self) -> list[Path]:
        """Where output folders may be: `output_roots`, else `allowed_roots`."""
        return self.output_roots or self.allowed_roots

    def window_policy(self) -> WindowPolicy:
        """The windows policy in force (`windows` with its auto threshold and window length)."""
        from captioner.windows import WindowPolicy

        return WindowPolicy.parse(self.windows, self.window_auto_max_s, self.window_seconds)

    @property
    def uses_demo(self) -> bool:
        """True when the model or an adapter is the built-in demo checkpoint's (an entry point builds it first)."""
        return self.model == DEMO or DEMO in (self.adapter, *self.compare_adapters)
