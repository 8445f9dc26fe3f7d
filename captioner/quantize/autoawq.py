"""AutoAWQ 0.2.9 on LLaVA-NeXT-Video's language model, with the fix for its CPU scale search.

AutoAWQ refuses the ``llava_next_video`` model type, but the language model of LLaVA-NeXT-Video is
a Llama, which AutoAWQ's Llama path quantizes: it is handed over as a ``LlamaForCausalLM`` that
shares its modules, so AutoAWQ's scales, clipping and packing land in the LLaVA model itself.
On a CPU AutoAWQ's scale search corrupts the weights it searches over (see `search_best_scales`);
the quantizer used here searches on a real copy and records each layer's quantization error.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from captioner.quantize.awq_format import BITS, dequantize_awq_gemm
from captioner.quantize.result import QuantizeError

__all__ = ["autoawq_for", "layer_error", "quiet_autoawq", "recording_quantizer", "run_awq", "search_best_scales"]

log = logging.getLogger(__name__)

SCALE_GRID = 20  # AutoAWQ's n_grid: ratios 0, 0.05, ..., 0.95


@contextlib.contextmanager
def quiet_autoawq() -> Iterator[None]:
    """Keep AutoAWQ's deprecation notice off stderr, and undo the global warning filter its import installs.

    ``import awq`` turns DeprecationWarning on for the whole process (``simplefilter("default")``)
    before warning that AutoAWQ is no longer maintained (known: see the package docstring).
    """
    with warnings.catch_warnings(record=True):  # record=True: whatever its filters say, nothing is printed
        warnings.simplefilter("ignore")
        yield


def autoawq_for(model: Path, base_config: dict[str, Any]) -> tuple[str, str]:
    """Import AutoAWQ; return its version and the model type its Llama-like path quantizes `model`'s text model as.

    Raises `QuantizeError` when AutoAWQ is not installed or cannot quantize that language model.
    """
    try:
        with quiet_autoawq():
            import awq
            from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP
    except ImportError as exc:
        raise QuantizeError(
            f"AutoAWQ is not installed ({exc}); install the extra: pip install -e '.[quantize]'"
        ) from None
    text_type = base_config.get("text_config", {}).get("model_type", "llama")
    if text_type not in AWQ_CAUSAL_LM_MODEL_MAP:
        raise QuantizeError(f"{model}: AutoAWQ cannot quantize a {text_type!r} language model")
    return awq.__version__, text_type


def run_awq(llava: Any, text_type: str, tokenizer: Any, blocks: list[list[int]], group_size: int) -> dict[str, float]:
    """Quantize `llava`'s language model in place with AutoAWQ; return each quantized layer's relative error."""
    import torch
    from awq.models._config import AwqConfig
    from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP
    from transformers import AutoModelForCausalLM

    # AutoAWQ's Llama path wants a *ForCausalLM whose .model is the decoder stack: build one on the
    # meta device (no memory) and give it the LLaVA model's own modules, so AutoAWQ's smoothing,
    # clipping and WQLinear replacements happen inside `llava`.
    with torch.device("meta"):
        causal_lm = AutoModelForCausalLM.from_config(llava.config.text_config)
    causal_lm.model = llava.model.language_model
    causal_lm.lm_head = llava.lm_head
    causal_lm.eval()
    awq_model = AWQ_CAUSAL_LM_MODEL_MAP[text_type](
        causal_lm, text_type, is_quantized=False, config=causal_lm.config, quant_config=AwqConfig(), processor=None
    )
    quant_config = {"zero_point": True, "q_group_size": group_size, "w_bit": BITS, "version": "GEMM"}
    with quiet_autoawq(), torch.no_grad():
        awq_model.quantize(
            tokenizer,
            quant_config=quant_config,
            calib_data=blocks,
            max_calib_samples=len(blocks),
            max_calib_seq_len=len(blocks[0]),
            n_parallel_calib_samples=None,
            quantizer_cls=recording_quantizer(),
        )
    return awq_model.quantizer.errors


def search_best_scales(
    quantizer: Any,
    x: Any,
    w_mean: Any,
    x_mean: Any,
    module2inspect: Any,
    linears2scale: list[Any],
    fp16_output: Any,
    kwargs: dict | None = None,
) -> Any:
    """AutoAWQ 0.2.9's grid search of ``s = x_mean^r / w_mean^(1-r)``, with a real snapshot.

    AutoAWQ saves the module as ``{k: v.cpu()}`` and restores it after each grid step; on a
    CPU ``.cpu()`` returns the live tensors, which the step then scales in place, so every
    "restore" brings back scaled weights and the scales compound over the 20 steps (measured
    on the demo model with planted outlier channels: the chosen scales gave a 20x larger
    block output error than no scaling at all). Same algorithm, with a copied snapshot.
    """
    import torch

    kwargs = kwargs or {}
    best_error, best_scales = float("inf"), None
    original = {k: v.detach().clone() for k, v in module2inspect.state_dict().items()}
    device = x.device
    x_mean, w_mean = x_mean.view(-1).to(device), w_mean.view(-1).to(device)
    for step in range(SCALE_GRID):
        ratio = step / SCALE_GRID
        if quantizer.duo_scaling:
            scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        else:
            scales = x_mean.pow(ratio).clamp(min=1e-4).view(-1)
        scales = scales / (scales.max() * scales.min()).sqrt()
        scales[torch.isinf(scales) | torch.isnan(scales)] = 1
        scales_view = scales.view(1, -1).to(device)
        for fc in linears2scale:  # Q(W * s) / s
            fc.weight.data = quantizer.pseudo_quantize_tensor(fc.weight.data * scales_view)[0] / scales_view
        output = quantizer._module_forward(x, module2inspect, kwargs)
        output = output.clip(torch.finfo(output.dtype).min, torch.finfo(output.dtype).max)
        error = quantizer._compute_loss(fp16_output, output, device)
        if error < best_error:
            best_error, best_scales = error, scales.clone()
        module2inspect.load_state_dict(original)
    if best_scales is None or torch.isnan(best_scales).any():
        raise QuantizeError("AWQ scale search found no finite scales (NaN activations?)")
    return best_scales.detach().cpu()


def layer_error(layer: Any, original: Any, group_size: int, in_scales: Any = None, out_scales: Any = None) -> float:
    """Relative error ``|W_eff - W| / |W|`` of the packed `layer` against its merged weight `original`.

    AWQ multiplies a layer's input columns by per-channel scales ``s`` (dividing the preceding norm,
    or the preceding linear's output rows, by ``s``), clips, then quantizes. The weight the served
    model effectively uses is ``diag(s_out) W_deq diag(1/s_in)``.
    """
    weight = dequantize_awq_gemm(layer.qweight.cpu(), layer.qzeros.cpu(), layer.scales.cpu(), group_size)
    if in_scales is not None:
        weight = weight / in_scales[None, :]
    if out_scales is not None:
        weight[-out_scales.numel() :] *= out_scales[:, None]
    return float((weight - original).norm() / original.norm().clamp_min(1e-12))


def recording_quantizer() -> type:
    """AutoAWQ's quantizer with the copied scale-search snapshot, recording each layer's error in ``errors``.

    The error is measured against the merged weight before AWQ touched it (see `layer_error`).
    """
    import torch
    from awq.quantize.quantizer import AwqQuantizer
    from awq.utils.module import get_op_by_name, get_op_name

    class RecordingQuantizer(AwqQuantizer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.errors: dict[str, float] = {}
            self._originals: dict[str, torch.Tensor] = {}
            self._in_scales: dict[str, torch.Tensor] = {}
            self._out_scales: dict[str, torch.Tensor] = {}
            super().__init__(*args, **kwargs)

        def _get_input_feat(self, layer: Any, named_linears: dict[str, Any]) -> Any:
            # Called first for each decoder layer, before any scale or clip: the merged weights.
            self._originals = {n: lin.weight.detach().float().cpu().clone() for n, lin in named_linears.items()}
            self._in_scales, self._out_scales = {}, {}
            return super()._get_input_feat(layer, named_linears)

        def _search_best_scale(self, module: Any, prev_op: Any, layers: Any, *args: Any, **kwargs: Any) -> Any:
            prev_name, layer_names, scales = super()._search_best_scale(module, prev_op, layers, *args, **kwargs)
            for name in layer_names:
                self._in_scales[name] = scales.float().cpu()
            if isinstance(prev_op, torch.nn.Linear):  # its last output rows were divided by the scales
                self._out_scales[prev_name] = scales.float().cpu()
            return prev_name, layer_names, scales

        @torch.no_grad()
        def _compute_best_scale(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            return search_best_scales(self, *args, **kwargs)

        def _apply_quant(self, module: Any, named_linears: dict[str, Any]) -> None:
            super()._apply_quant(module, named_linears)
            prefix = get_op_name(self.model, module)
            for name in named_linears:
                self.errors[f"{prefix}.{name}"] = layer_error(
                    get_op_by_name(module, name),
                    self._originals[name],
                    self.group_size,
                    self._in_scales.get(name),
                    self._out_scales.get(name),
                )

    return RecordingQuantizer
