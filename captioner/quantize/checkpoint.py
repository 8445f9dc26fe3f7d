"""The merged, quantized checkpoint: merging the adapter, its tensors in the base's layout, writing the folder.

The checkpoint keeps the key layout of the base (``model.vision_tower.vision_model.*``, what vLLM
reads), the base's tokenizer, processor and chat template files, and gains ``quantization_config``
in config.json, so ``captioner run --model OUT`` serves it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from captioner.hub_layout import hub_key, uses_hub_layout
from captioner.quantize.awq_format import quantization_config
from captioner.quantize.checks import named_linears
from captioner.quantize.result import QuantizeError, QuantizeResult

__all__ = [
    "PROVENANCE_FILE",
    "awq_bytes",
    "base_keys",
    "checkpoint_tensors",
    "dtype_of",
    "linear_bytes",
    "merge_adapter",
    "weight_files",
    "work_dtype",
    "write_checkpoint",
]

PROVENANCE_FILE = "captioner-quantize.json"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")
AWQ_TENSORS = ("qweight", "qzeros", "scales")


def merge_adapter(llava: Any, adapter: Path) -> tuple[Any, list[str]]:
    """Merge the PEFT LoRA `adapter` into `llava`'s weights; return the model and the merged module names.

    Each targeted linear becomes ``W + scaling * B @ A`` (PEFT's own merge, so rsLoRA scaling and
    ``fan_in_fan_out`` are handled as in training).
    """
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(llava, str(adapter), is_trainable=False)
    names = sorted(
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and len(getattr(module, "lora_A", {})) > 0
    )
    return peft_model.merge_and_unload(), names


def work_dtype(dtype: str, torch: Any) -> Any:
    """The torch dtype to load and quantize in: ``auto`` is float16 on a GPU, float32 on a CPU."""
    if dtype == "auto":
        return torch.float16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, dtype)


def dtype_of(config: dict[str, Any], torch: Any) -> Any:
    """The floating dtype the base checkpoint was saved in (float16 when its config does not say)."""
    name = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    value = getattr(torch, str(name), None) if name else None
    return value if isinstance(value, torch.dtype) and value.is_floating_point else torch.float16


def linear_bytes(language_model: Any, save_dtype: Any) -> int:
    """Bytes of the language model's linear weights in `save_dtype`: what quantization shrinks."""
    return sum(lin.weight.numel() * save_dtype.itemsize for lin in named_linears(language_model).values())


def awq_bytes(language_model: Any) -> int:
    """Bytes of the packed AWQ tensors (qweight, qzeros, scales) of the quantized language model."""
    return sum(
        sum(getattr(module, name).numel() * getattr(module, name).element_size() for name in AWQ_TENSORS)
        for module in language_model.modules()
        if hasattr(module, "qweight")
    )


def weight_files(model: Path) -> list[Path]:
    """The weight files (and their indexes) of the checkpoint folder `model`."""
    return sorted({p for pattern in WEIGHT_PATTERNS for p in model.glob(pattern) if p.is_file()})


def base_keys(model: Path) -> set[str]:
    """The tensor names in `model`'s safetensors files."""
    from safetensors import safe_open

    keys: set[str] = set()
    for path in model.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            keys.update(f.keys())
    return keys


def checkpoint_tensors(llava: Any, save_dtype: Any, keys: set[str]) -> dict[str, Any]:
    """The state dict in the base's key layout (`keys`): AWQ tensors as packed, other floats in the base's dtype."""
    hub = uses_hub_layout(keys)  # keep the vision tower's names as the base has them
    tensors: dict[str, Any] = {}
    for key, value in llava.state_dict().items():
        key = hub_key(key) if hub else key
        value = value.detach().cpu()
        is_awq = key.rsplit(".", 1)[-1] in AWQ_TENSORS
        if value.is_floating_point() and not is_awq:
            value = value.to(save_dtype)
        tensors[key] = value.contiguous()
    return tensors


def write_checkpoint(
    out: Path,
    model: Path,
    base_config: dict[str, Any],
    tensors: dict[str, Any],
    result: QuantizeResult,
    started: float,
) -> None:
    """Write everything into a hidden sibling folder, then rename it to `out` (no half checkpoints).

    Fills in `result`'s checkpoint size and seconds (from `started`, a ``perf_counter``) before
    the provenance file records it.
    """
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise QuantizeError(f"{out}: cannot write the checkpoint there ({exc.strerror or exc})") from None
    try:
        _write_files(staging, model, base_config, tensors, result)
        result.seconds = round(time.perf_counter() - started, 3)
        provenance = {"quantized_by": "captioner quantize", **result.to_dict()}
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty before any work
        staging.rename(out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise QuantizeError(f"{out}: cannot write the checkpoint ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_files(
    staging: Path, model: Path, base_config: dict[str, Any], tensors: dict[str, Any], result: QuantizeResult
) -> None:
    """The base's other files, config.json with ``quantization_config``, and model.safetensors."""
    from safetensors.torch import save_file

    weights = set(weight_files(model))
    for item in sorted(model.iterdir()):  # tokenizer, processor, chat template, generation config ...
        if item.is_file() and item not in weights and item.name not in ("config.json", PROVENANCE_FILE):
            shutil.copy2(item, staging / item.name)
    config = dict(base_config)
    config["quantization_config"] = quantization_config(result.group_size)
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
    # safetensors creates the file 0600; the serving containers run as another user (uid 10001).
    umask = os.umask(0)
    os.umask(umask)
    (staging / "model.safetensors").chmod(0o666 & ~umask)
    result.checkpoint_bytes_after = (staging / "model.safetensors").stat().st_size
