"""Planning a run: everything resolved and checked before the first clip is touched.

`make_plan` resolves the model, the adapters, the tier profile, the prompt and the frames, checks the
token budget and sizes the KV cache, and raises `ConfigError` with one clear message when the run
cannot start. `load_engine` builds the vLLM engine a plan describes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.adapters import Adapter, resolve_adapters
from captioner.config import DEMO, Settings
from captioner.engine import Engine
from captioner.errors import ConfigError
from captioner.frames import FrameSpec
from captioner.prompts import PromptError, RenderedPrompt, check_budget, load_prompt, render, tokens_per_frame
from captioner.records import Provenance, VersionKey
from captioner.sizing import ModelShape, Sizing, SizingError, concurrency, disagreement_warning, size
from captioner.tiers import TierProfile, cuda_device, resolve_profile
from captioner.windows import WindowPolicy

if TYPE_CHECKING:
    from captioner.engine.vllm_engine import CaptionEngine

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")




@dataclass
class Plan:
    """Everything resolved and checked before the first clip is touched."""

    settings: Settings
    model: str
    adapters: tuple[Adapter, ...]  # the first is the run's adapter; more are captioned side by side
    profile: TierProfile
    frames: int
    frame_size: int
    frame_tokens: int
    prompt: RenderedPrompt
    prompt_tokens: int
    shape: ModelShape  # what the KV cache arithmetic reads from the model's config
    sizing: Sizing  # the KV cache and clips in flight; `profile` carries its max_num_seqs and batch_size
    windows: WindowPolicy = field(default_factory=WindowPolicy)  # how files are cut into windows captioned apart

    def made(self, adapter: Adapter | None = None) -> Provenance:
        """How `adapter`'s captions (default: the first adapter's) are made in this plan: what its records carry."""
        adapter = adapter or self.adapters[0]
        return Provenance(
            model=self.model,
            adapter=adapter.name,
            adapter_sha=adapter.sha,
            prompt=self.prompt.spec.identity(),
            tier=self.profile.name,
            frames=self.frames,
            sampling=self.settings.sampling,
        )

    def versions(self) -> dict[str, Any]:
        """What a summary states about how its captions were made."""
        names = [a.name for a in self.adapters]
        return {
            "model": self.model,
            "adapter": names[0],
            **({"adapters": names} if len(names) > 1 else {}),
            "prompt": self.prompt.spec.identity(),
            "tier": self.profile.name,
            "frames": self.frames,
            "sampling": self.settings.sampling,
        }

    @property
    def frame_spec(self) -> FrameSpec:
        """What the frame stage takes from every clip for this plan."""
        return frame_spec_for(self.settings, self.frames, self.frame_size)

    def key_for(self, adapter: Adapter) -> VersionKey:
        """The version key of the records `adapter` writes in this plan."""
        return self.made(adapter).key

    @property
    def key(self) -> VersionKey:
        """The version key of the (first) adapter's records."""
        return self.key_for(self.adapters[0])


def frame_spec_for(settings: Settings, frames: int, frame_size: int) -> FrameSpec:
    """`frames` frames of short side `frame_size`, with the settings' keyframe tolerance and caps."""
    s = settings
    return FrameSpec(frames, frame_size, s.keyframe_tolerance, max_display_pixels=s.max_display_pixels,
                     max_aspect=s.max_aspect, max_frames=s.max_frames, decoder_memory_mb=s.decoder_memory_mb,
                     probe_max_bytes=s.probe_max_bytes, probe_max_seconds=s.probe_max_seconds)


def resolve_model(settings: Settings) -> str:
    """The model folder (resolved) or hub id `settings.model` names; `ConfigError` when it cannot be used.

    The demo checkpoint is built by the entry points that need it (`demo.ensure_demo_model`), never here:
    making a plan only reads.
    """
    if settings.model == DEMO:
        base = settings.demo_dir / "base"
        if not (base / "config.json").is_file():
            raise ConfigError(f"{base}: the demo checkpoint is not built; `captioner demo-model` builds it")
        return str(base.resolve())
    path = Path(settings.model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: model folder has no config.json")
        return str(path.resolve())
    if path.exists():
        raise ConfigError(f"{path}: model must be a folder (a Hugging Face checkpoint), not a file")
    if _HUB_ID.match(settings.model) and not settings.model.startswith("."):
        return settings.model  # a hub id, resolved by transformers/vLLM on a machine that can reach it
    raise ConfigError(f"{path}: model folder does not exist")


def model_frame_size(settings: Settings) -> int:
    """The side of the square frames the model takes, read from its config.json alone (no weights, no tokenizer)."""
    model = resolve_model(settings)
    config = Path(model) / "config.json"
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["vision_config"]["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = f"no vision_config.image_size ({exc}); give the frame size with --frame-size"
        raise ConfigError(f"{config}: {reason}") from None


def model_facts(settings: Settings) -> tuple[str, Any, RenderedPrompt, ModelShape]:
    """The model (resolved), its transformers config, the prompt rendered for it, and its shape for sizing.

    Reads the checkpoint's config and tokenizer only; `ConfigError` when they cannot be read, are not
    LLaVA-NeXT-Video's, or the prompt does not render.
    """
    model = resolve_model(settings)
    return (model, *_load_model(model, settings))


def _load_model(model: str, settings: Settings) -> tuple[Any, RenderedPrompt, ModelShape]:
    from captioner import compat

    compat.apply()  # transformers may import the broken CUDA-only audio/video packages
    from transformers import AutoConfig, AutoTokenizer

    try:
        hf_config = AutoConfig.from_pretrained(model)
        tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the user needs the model and why
        raise ConfigError(f"{model}: cannot load the model's config and tokenizer ({exc})") from None
    if not hasattr(hf_config, "spatial_pool_stride"):
        raise ConfigError(f"{model}: not a LLaVA-NeXT-Video checkpoint (model_type {hf_config.model_type!r})")
    try:
        prompt = render(load_prompt(settings.prompt, settings.prompts_dir), tokenizer)
        shape = ModelShape.from_config(hf_config.to_dict())
    except (PromptError, SizingError) as exc:
        raise ConfigError(f"{model}: {exc}" if isinstance(exc, SizingError) else str(exc)) from None
    return hf_config, prompt, shape


def make_plan(settings: Settings) -> Plan:
    """Resolve model, adapter, tier, prompt and frames; check the token budget; size the KV cache."""
    model = resolve_model(settings)
    adapters = resolve_adapters(settings)
    try:
        profile = resolve_profile(settings.tier, settings.profile)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    frames = settings.frames or profile.frames
    hf_config, prompt, shape = _load_model(model, settings)
    quant_config = getattr(hf_config, "quantization_config", None) or {}
    quantized = quant_config.get("quant_method") if isinstance(quant_config, dict) else quant_config.quant_method
    if profile.quantization and quantized != profile.quantization:
        raise ConfigError(
            f"{model}: the {profile.name} profile expects an {profile.quantization.upper()}-quantized checkpoint, "
            f"this one is {quantized or 'not quantized'}; use a quantized checkpoint or --set quantization=null"
        )
    frame_tokens = tokens_per_frame(hf_config)
    sampling = settings.sampling_params()
    try:
        prompt_tokens = check_budget(
            prompt,
            frames,
            frame_tokens,
            sampling.max_tokens,
            profile.max_model_len,
            profile.max_num_batched_tokens,
        )
    except PromptError as exc:
        raise ConfigError(str(exc)) from None
    memory_gib, memory_source = plan_memory(profile, settings.profile)
    try:
        sizing = size(shape, profile, frames, prompt.text_tokens, sampling.max_tokens, memory_gib, memory_source)
    except SizingError as exc:
        raise ConfigError(f"{model}: {exc}") from None
    check_fits(sizing, profile)
    for warning in sizing.warnings:
        log.warning("%s", warning)
    return Plan(
        settings=settings,
        model=model,
        adapters=adapters,
        # The profile in force: the derived (or overridden) concurrency filled in.
        profile=profile.model_copy(update={"max_num_seqs": sizing.max_num_seqs, "batch_size": sizing.batch_size}),
        frames=frames,
        frame_size=hf_config.vision_config.image_size,
        frame_tokens=frame_tokens,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        shape=shape,
        sizing=sizing,
        windows=settings.window_policy(),
    )


def plan_memory(profile: TierProfile, overrides: dict[str, Any]) -> tuple[float | None, str]:
    """The device memory (GiB) the sizing assumes, and where it comes from.

    An explicit `memory_gib` override first, then the CUDA device present (a GPU profile only), then
    the profile's `memory_gib` (the tier's card; planning on a machine without it).
    """
    if "memory_gib" in overrides:
        return profile.memory_gib, "override"
    device = cuda_device() if profile.device == "cuda" else None
    if device is not None:
        return device[1], "device"
    return profile.memory_gib, "tier"


def check_fits(sizing: Sizing, profile: TierProfile) -> None:
    """Refuse a plan whose KV cache cannot hold a single clip (`ConfigError`, with what would fit)."""
    if sizing.clips_fit is None or sizing.clips_fit >= 1:
        return
    memory = (
        f"kv_cache_gib {profile.kv_cache_gib:g}" if sizing.kv_source == "kv_cache_gib"
        else f"{sizing.memory_gib:.1f} GiB ({sizing.memory_source}) x {profile.gpu_memory_utilization:g} less "
        f"{sizing.weights_gib:.1f} GiB of weights, {sizing.activations_gib:.1f} of activations and "
        f"{sizing.overhead_gib:.1f} of overhead"
    )  # fmt: skip
    raise ConfigError(
        f"one clip of {sizing.frames} frames needs {sizing.tokens_per_clip:,} tokens of KV cache, and the "
        f"{profile.name} profile leaves {sizing.kv_tokens:,} ({memory}); use fewer frames, a quantized "
        "checkpoint, or a larger device"
    )


def load_engine(plan: Plan) -> CaptionEngine:
    """Build the vLLM engine for `plan` (tens of seconds; do it once per process)."""
    from captioner.engine.vllm_engine import CaptionEngine  # here: it loads torch, which planning never needs

    return CaptionEngine(plan.model, plan.profile, plan.adapters, seed=plan.settings.seed)


def engine_concurrency(engine: Engine | Any, plan: Plan) -> dict[str, Any]:
    """The plan's computed concurrency beside the one vLLM reports for `engine`; warns when they disagree.

    vLLM's figure is its KV cache (blocks of its block size) expressed in clips of the plan's
    tokens per clip; an engine that does not report one (a stand-in) leaves the vLLM side empty.
    `max_num_seqs` is the engine's own: a worker's engine may have been sized for other frames.
    """
    record = concurrency(plan.sizing, getattr(engine, "kv", None))
    record["max_num_seqs"] = getattr(getattr(engine, "profile", None), "max_num_seqs", None) or record["max_num_seqs"]
    warning = disagreement_warning(record)
    if warning:
        log.warning("%s", warning)
    return record


def check_engine(engine: Engine, plan: Plan) -> None:
    """Refuse to reuse a loaded engine whose model, adapter or settings differ from the plan's.

    The concurrency (max_num_seqs, batch) may differ: it follows the frames, which a job may choose.
    A job's batch is its own; the engine runs at most its max_num_seqs of them at once.
    """
    derived = {"max_num_seqs", "batch_size"}
    mismatched = [
        name
        for name, have, want in [
            ("model", engine.model, plan.model),
            ("adapter", list(engine.adapters), [a.path for a in plan.adapters if a.path is not None]),
            ("tier profile", engine.profile.model_dump(exclude=derived), plan.profile.model_dump(exclude=derived)),
        ]
        if have != want
    ]
    if mismatched:
        raise ConfigError(f"the loaded engine was built for another {', '.join(mismatched)}; restart it")
