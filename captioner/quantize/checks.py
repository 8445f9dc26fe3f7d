"""What `quantize` checks before any heavy work, so a wrong path or adapter stops it with nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from captioner.quantize.awq_format import BITS
from captioner.quantize.result import QuantizeError

__all__ = [
    "DTYPES",
    "check_adapter",
    "check_adapter_fits",
    "check_dtype",
    "check_linear_shapes",
    "check_model",
    "check_out",
    "named_linears",
]

DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_model(model: Path) -> dict[str, Any]:
    """The config.json of the unquantized LLaVA-NeXT-Video checkpoint `model`; `QuantizeError` if it is not one."""
    if not model.is_dir():
        raise QuantizeError(f"{model}: model folder does not exist")
    config_path = model / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QuantizeError(f"{model}: model folder has no config.json") from None
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"{config_path}: cannot read ({exc})") from None
    if config.get("model_type") != "llava_next_video":
        raise QuantizeError(f"{model}: not a LLaVA-NeXT-Video checkpoint (model_type {config.get('model_type')!r})")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        raise QuantizeError(f"{model}: already quantized ({method}); quantize the unquantized base")
    if not list(model.glob("*.safetensors")):
        raise QuantizeError(f"{model}: no *.safetensors weights in the model folder")
    return config


def check_adapter(adapter: Path) -> dict[str, Any]:
    """The adapter_config.json of the PEFT LoRA adapter `adapter`; `QuantizeError` if it cannot be merged."""
    if not adapter.is_dir():
        raise QuantizeError(f"{adapter}: adapter folder does not exist")
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file() or not (adapter / "adapter_model.safetensors").is_file():
        raise QuantizeError(
            f"{adapter}: not a PEFT LoRA adapter (needs adapter_config.json and adapter_model.safetensors)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"{config_path}: cannot read ({exc})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise QuantizeError(f"{adapter}: a {config.get('peft_type')} adapter; only LoRA adapters can be merged")
    if config.get("use_dora"):
        raise QuantizeError(f"{adapter}: DoRA adapters are not supported; merge a plain LoRA adapter")
    return config


def check_adapter_fits(adapter: Path, config: dict[str, Any], llava: Any, model: Path) -> None:
    """Every LoRA pair must target an existing linear of the base with matching shapes.

    PEFT only warns about target modules it cannot find, and its shape errors are long; an adapter
    trained on another base must stop here, naming the first module that does not fit.
    """
    import torch
    from safetensors import safe_open

    modules = dict(llava.named_modules())
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    pairs = 0
    for key, shape in sorted(shapes.items()):
        if ".lora_A." not in key:
            continue
        name = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        b_shape = shapes.get(key.replace(".lora_A.", ".lora_B."))
        module = modules.get(name)
        if not isinstance(module, torch.nn.Linear):
            raise QuantizeError(
                f"{adapter}: does not fit {model}: the adapter targets {name}, which the base has not "
                "(an adapter trained on another model?)"
            )
        want = (module.out_features, module.in_features)
        if b_shape is None or (b_shape[0], shape[1]) != want:
            raise QuantizeError(
                f"{adapter}: does not fit {model}: {name} is {list(want)} (out, in) in the base, the adapter "
                f"expects {[b_shape[0] if b_shape else '?', shape[1]]} (an adapter trained on another model?)"
            )
        pairs += 1
    if pairs == 0:
        raise QuantizeError(f"{adapter}: adapter_model.safetensors holds no LoRA weights (lora_A/lora_B)")


def check_out(out: Path, model: Path) -> None:
    """`out` must be a new or empty folder other than the model's: a checkpoint is never overwritten."""
    if out.exists() and not out.is_dir():
        raise QuantizeError(f"{out}: output path is a file, not a folder")
    if out.resolve() == model.resolve():
        raise QuantizeError(f"{out}: the output folder is the model folder; choose another")
    if out.is_dir() and any(out.iterdir()):
        what = "already holds a checkpoint" if (out / "config.json").exists() else "is not empty"
        raise QuantizeError(f"{out}: output folder {what}; remove it or choose another folder")


def check_dtype(dtype: str) -> None:
    """`dtype` must name one of the working precisions (`DTYPES`)."""
    if dtype not in DTYPES:
        raise QuantizeError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")


def named_linears(module: Any) -> dict[str, Any]:
    """The ``nn.Linear`` submodules of `module` by name: what AWQ quantizes in a language model."""
    import torch

    return {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def check_linear_shapes(language_model: Any, group_size: int, model: Path) -> None:
    """Every linear layer must split into whole groups of `group_size` inputs and whole int32s of outputs."""
    for name, lin in named_linears(language_model).items():
        if lin.in_features % group_size or lin.out_features % (32 // BITS):
            raise QuantizeError(
                f"{model}: language model layer {name} is {lin.out_features}x{lin.in_features}; AWQ needs "
                f"input sizes divisible by the group size {group_size} and output sizes divisible by 8"
            )
