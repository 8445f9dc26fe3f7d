"""The model being trained: the base LLaVA-NeXT-Video frozen, a PEFT LoRA on its language model.

vLLM serves LoRA on the language model only; an adapter that also touches the vision tower's
`q_proj`/`v_proj` (which a plain `target_modules=["q_proj", ...]` would) does not load there. So the
target is a regular expression that matches the language model's decoder layers alone, and the
saved adapter has the key layout vLLM and PEFT both read, with no conversion.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner import compat

log = logging.getLogger(__name__)

# The projections vLLM's Llama/Mistral/Qwen LoRA serves (q/k/v and gate/up are packed there).
LORA_TARGET = (
    r".*language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)


@dataclass(frozen=True)
class Device:
    """Where training runs and in what precision."""

    name: str  # "cpu" or "cuda"
    dtype: str  # "float32" | "bfloat16" | "float16"

    @property
    def autocast_fp16(self) -> bool:
        """fp16 weights need autocast and a gradient scaler (a T4 has no bf16)."""
        return self.dtype == "float16"


def pick_device(requested: str = "auto") -> Device:
    """CUDA in bf16 where the card has it, fp16 (with a scaler) where not, else the CPU in fp32.

    The CPU trains in fp32: bf16 matmuls are emulated and slow on CPUs without AMX, and fp32 is
    what the token-for-token comparison with vLLM needs.
    """
    import torch

    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return Device("cpu", "float32")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, and torch sees no CUDA device")
    return Device("cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float16")


def load_base(model_dir: str, device: Device, gradient_checkpointing: bool) -> Any:
    """The base model, frozen, on `device` in its dtype; raises `ValueError` if not LLaVA-NeXT-Video."""
    compat.apply()
    import torch
    from transformers import AutoConfig, LlavaNextVideoForConditionalGeneration

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "llava_next_video":
        raise ValueError(f"{model_dir}: not a LLaVA-NeXT-Video checkpoint (model_type {config.model_type!r})")
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(model_dir, dtype=getattr(torch, device.dtype))
    model.to(device.name)
    model.requires_grad_(False)
    if gradient_checkpointing:
        # Activations are recomputed in the backward pass: a 7B with 32 frames fits in far less memory.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def add_lora(model: Any, rank: int, alpha: float, dropout: float) -> Any:
    """Wrap `model` with a fresh LoRA on the language model's projections (`LORA_TARGET`)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=LORA_TARGET)
    peft_model = get_peft_model(model, config)
    touched = [name for name, _ in peft_model.named_modules() if name.endswith("lora_A")]
    if not touched or any("vision_tower" in name for name in touched):
        raise ValueError(f"LoRA target matched {len(touched)} modules, some outside the language model")
    return peft_model


def lora_state(peft_model: Any) -> dict[str, Any]:
    """The adapter's weights as PEFT saves them (keys without the adapter name)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}


def load_lora_state(peft_model: Any, state: dict[str, Any]) -> None:
    """Put saved adapter weights back into `peft_model` (resuming)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if missing:
        raise ValueError(f"checkpoint holds adapter weights the model does not have: {missing[:3]}")


def save_adapter(peft_model: Any, folder: Path, base_model: str) -> None:
    """Save the adapter where `captioner run --adapter FOLDER` (vLLM) and PEFT load it.

    Files are written beside each other then renamed in, so a killed run never leaves a folder whose
    config and weights disagree.
    """
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / ".saving"
    peft_model.save_pretrained(staging)
    (staging / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
    config_path = staging / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (staging / name).replace(folder / name)
    staging.rmdir()
