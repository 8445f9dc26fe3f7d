"""All configuration in one typed place.

Precedence, highest first: CLI flags, `CAPTIONER_*` environment variables, defaults here.
Tier profile fields are overridden with `--set FIELD=VALUE` or `CAPTIONER_PROFILE__FIELD=VALUE`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from captioner.prompts import DEFAULT_PROMPTS_DIR

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


def default_home() -> Path:
    """Where the demo checkpoint is cached: $CAPTIONER_HOME, else ~/.cache/captioner."""
    return Path(os.environ.get("CAPTIONER_HOME", Path.home() / ".cache" / "captioner"))


class Settings(BaseSettings):
    """Settings for captioning runs and workers."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_", env_nested_delimiter="__", extra="ignore")

    model: str = Field(DEMO, description="Model folder or hub id; 'demo' = the built-in random-weight checkpoint.")
    adapter: str | None = Field(None, description="LoRA adapter folder; 'demo' = the demo adapter.")
    tier: Literal["auto", "cpu", "t4", "l4", "a100", "h100"] = "auto"
    frames: int | None = Field(None, gt=0, description="Frames per clip; default from the tier.")
    prompt: str = Field("detailed-ko", description="Prompt name, or name@version.")
    prompts_dir: Path = DEFAULT_PROMPTS_DIR
    sampling: Literal["default", "deterministic"] = "default"
    seed: int = 0
    decode_timeout: float = Field(60.0, gt=0, description="Seconds before a clip's decoder process is killed.")
    home: Path = Field(default_factory=default_home)
    profile: dict[str, Any] = Field(default_factory=dict, description="Overrides of tier profile fields.")

    def sampling_params(self) -> Sampling:
        """The sampling preset in force."""
        return SAMPLING_PRESETS[self.sampling]

    @property
    def demo_dir(self) -> Path:
        """Folder of the built-in demo checkpoint."""
        return self.home / "demo"
