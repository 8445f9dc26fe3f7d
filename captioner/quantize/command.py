"""`quantize`: the checks, the calibration, AutoAWQ and the checkpoint writer, in that order."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captioner import compat
from captioner.quantize.autoawq import autoawq_for, run_awq
from captioner.quantize.awq_format import BITS, GROUP_SIZE
from captioner.quantize.calibration import calibration_blocks, gather_texts
from captioner.quantize.checkpoint import (
    awq_bytes,
    base_keys,
    checkpoint_tensors,
    dtype_of,
    linear_bytes,
    merge_adapter,
    weight_files,
    work_dtype,
    write_checkpoint,
)
from captioner.quantize.checks import (
    check_adapter,
    check_adapter_fits,
    check_dtype,
    check_linear_shapes,
    check_model,
    check_out,
)
from captioner.quantize.result import QuantizeError, QuantizeResult

__all__ = ["quantize"]

log = logging.getLogger(__name__)


def quantize(
    model: Path,
    out: Path,
    adapter: Path | None = None,
    calibration: Sequence[Path] = (),
    *,
    use_default_calibration: bool = True,
    prompt: str = "detailed-ko",
    prompts_dir: Path | None = None,
    group_size: int = GROUP_SIZE,
    max_seq_len: int = 512,
    dtype: str = "auto",
) -> QuantizeResult:
    """Merge `adapter` into the LLaVA-NeXT-Video checkpoint `model` and write it to `out` with 4-bit AWQ weights.

    `calibration` adds captions.jsonl files (their ``ok`` captions) or reference files (JSONL, CSV or
    a folder of AI-Hub labels) to the project's own references (`DEFAULT_CALIBRATION`, unless
    `use_default_calibration` is False). Each text becomes the rendered `prompt` followed by the
    caption. `dtype` is the working precision: ``auto`` is float16 on a GPU and float32 on a CPU
    (a 7B model in float32 needs about 30 GB of RAM; ``bfloat16`` halves that).

    Raises `QuantizeError` before anything is written when a path or the adapter is wrong; `out` is
    only created when the whole checkpoint is ready (it is written next to it, then renamed).
    """
    started = time.perf_counter()
    model, out = Path(model).expanduser(), Path(out).expanduser()
    adapter = Path(adapter).expanduser() if adapter is not None else None
    base_config, adapter_config = _check_inputs(model, out, adapter, dtype)
    texts = gather_texts(calibration, use_default_calibration)

    compat.apply()  # transformers' processors import the CUDA-only torchvision (see compat)
    import torch
    from transformers import AutoTokenizer

    autoawq_version, text_type = autoawq_for(model, base_config)
    tokenizer = AutoTokenizer.from_pretrained(model)
    blocks, used_texts = calibration_blocks(texts, tokenizer, prompt, prompts_dir, max_seq_len)
    save_dtype = dtype_of(base_config, torch)
    llava, merged = _load_merged(model, adapter, adapter_config, work_dtype(dtype, torch))
    language_model = llava.model.language_model
    check_linear_shapes(language_model, group_size, model)
    bytes_before = linear_bytes(language_model, save_dtype)

    log.info("AWQ over %d calibration texts (%d tokens)", used_texts, len(blocks) * len(blocks[0]))
    errors = run_awq(llava, text_type, tokenizer, blocks, group_size)
    if not errors:
        raise QuantizeError(f"{model}: AutoAWQ quantized no layer")
    tensors = checkpoint_tensors(llava, save_dtype, base_keys(model))
    result = QuantizeResult(
        out_dir=str(out.resolve()), model=str(model.resolve()),
        adapter=str(adapter.resolve()) if adapter is not None else None,
        merged_lora_modules=merged, quantized_layers=len(errors), bits=BITS, group_size=group_size,
        calibration_texts=used_texts, calibration_tokens=len(blocks) * len(blocks[0]),
        checkpoint_bytes_before=sum(p.stat().st_size for p in weight_files(model)), checkpoint_bytes_after=0,
        linear_bytes_before=bytes_before, linear_bytes_after=awq_bytes(language_model),
        mean_relative_error=round(sum(errors.values()) / len(errors), 6),
        max_relative_error=round(max(errors.values()), 6), seconds=0.0, autoawq_version=autoawq_version,
    )  # fmt: skip
    write_checkpoint(out, model, base_config, tensors, result, started)
    return result


def _check_inputs(
    model: Path, out: Path, adapter: Path | None, dtype: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The base's and the adapter's configs, once every path and option is usable (`QuantizeError` if not)."""
    base_config = check_model(model)
    adapter_config = check_adapter(adapter) if adapter is not None else None
    check_out(out, model)
    check_dtype(dtype)
    return base_config, adapter_config


def _load_merged(
    model: Path, adapter: Path | None, adapter_config: dict[str, Any] | None, dtype: Any
) -> tuple[Any, int]:
    """The LLaVA model of `model` in `dtype`, with `adapter` merged if given; and how many modules it changed."""
    from transformers import LlavaNextVideoForConditionalGeneration

    log.info("loading %s (%s)", model, str(dtype).removeprefix("torch."))
    llava = LlavaNextVideoForConditionalGeneration.from_pretrained(model, dtype=dtype)
    llava.eval()
    if adapter is None or adapter_config is None:
        return llava, 0
    check_adapter_fits(adapter, adapter_config, llava, model)
    llava, merged_names = merge_adapter(llava, adapter)
    log.info("merged %d LoRA modules of %s", len(merged_names), adapter)
    return llava, len(merged_names)
