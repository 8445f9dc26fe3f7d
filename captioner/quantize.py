"""Merge the caption LoRA adapter into LLaVA-NeXT-Video and quantize its language model to 4-bit AWQ.

The T4 and L4 tier profiles serve an AWQ checkpoint (``quantization="awq"``): 7B weights in fp16
leave too little of a 16 GB T4 for the KV cache. `quantize` writes that checkpoint:

1. the LoRA adapter is merged into the base weights (PEFT ``merge_and_unload``), so the served
   model needs no ``LoRARequest`` and the adapter's deltas are quantized with the weights they
   change (a LoRA applied on top of 4-bit weights would see different base weights than in training);
2. every linear layer of the language model (q/k/v/o, gate/up/down) is quantized to 4 bits with
   AutoAWQ's algorithm (activation-aware per-channel scales folded into the preceding norm or
   linear, then a clipping search), group size 128, zero point, GEMM packing;
3. the vision tower, the projector, the embeddings and ``lm_head`` are kept as they are;
4. the checkpoint is written in the key layout of the base (``model.vision_tower.vision_model.*``,
   what vLLM reads) with the base's tokenizer, processor and chat template files, and
   ``quantization_config`` in config.json, so ``captioner run --model OUT`` serves it.

Why AutoAWQ on the language model alone: AutoAWQ 0.2.9 (its last release) refuses the
``llava_next_video`` model type ("llava_next_video isn't supported yet"), and its ``llava_next``
support expects the transformers-4 module layout, but its Llama path runs with this project's
torch 2.13 and transformers 5.x. The language model of LLaVA-NeXT-Video *is* a Llama (Vicuna), so
it is handed to AutoAWQ as a ``LlamaForCausalLM`` that shares its modules: AutoAWQ's scales,
clipping and packing then land in the LLaVA model itself. One AutoAWQ bug is worked around: on a
CPU its scale search corrupts the weights it searches over (see `_recording_quantizer`).
llm-compressor (AutoAWQ's maintained successor) is not used: 0.14.0.1 requires
transformers<=5.17.0 (the project runs 5.19 with vLLM 0.32), its AWQ fails on a machine without an
accelerator (``pin_memory``: "Cannot access accelerator device when none is available"), and it
writes compressed-tensors rather than the AutoAWQ GEMM layout the tiers' ``quantization="awq"`` reads.

Calibration uses the project's own Korean texts (sample references and evaluation references, plus
any captions or references given), each formatted as the captioning prompt followed by the caption,
so the activations AWQ balances look like real captioning (without the video features: AWQ sees
the language model only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from captioner import compat

log = logging.getLogger(__name__)

__all__ = [
    "AWQ_PACK_ORDER",
    "DEFAULT_CALIBRATION",
    "PROVENANCE_FILE",
    "QuantizeError",
    "QuantizeResult",
    "calibration_texts",
    "dequantize_awq_gemm",
    "merge_adapter",
    "quantize",
]

BITS = 4
GROUP_SIZE = 128
# Within each int32 of an AutoAWQ GEMM tensor, nibble i (bits 4i..4i+3) holds column
# AWQ_PACK_ORDER[i] of its block of 8 output columns (vLLM undoes it with [0,4,1,5,2,6,3,7]).
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# Substrings of module names vLLM (and transformers) must leave unquantized.
MODULES_NOT_CONVERTED = ["vision_tower", "multi_modal_projector", "lm_head"]
PROVENANCE_FILE = "captioner-quantize.json"

# The project's own Korean texts: the sample clips' references and the evaluation set's. A wheel
# carries copies of both (setup.py writes them into captioner/data/calibration); a checkout or an
# editable install reads the repository's files.
_PACKAGED_CALIBRATION = Path(__file__).resolve().parent / "data" / "calibration"
_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CALIBRATION = (
    (_PACKAGED_CALIBRATION / "references.jsonl", _PACKAGED_CALIBRATION / "sample_refs.jsonl")
    if _PACKAGED_CALIBRATION.is_dir()
    else (_ROOT / "samples" / "references.jsonl", _ROOT / "eval" / "sample_refs.jsonl")
)
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")
_VISION_PREFIX = "model.vision_tower."
_DTYPES = ("auto", "float32", "bfloat16", "float16")


class QuantizeError(Exception):
    """The checkpoint cannot be made; the message names the path and the reason. Nothing was written."""


@dataclass
class QuantizeResult:
    """What one `quantize` call did, with the figures worth reporting."""

    out_dir: str
    model: str
    adapter: str | None
    merged_lora_modules: int  # linear layers the adapter changed (merged before quantization)
    quantized_layers: int  # linear layers of the language model now 4-bit
    bits: int
    group_size: int
    calibration_texts: int  # prompt + caption texts
    calibration_tokens: int  # tokens AWQ saw (whole blocks of `max_seq_len`)
    checkpoint_bytes_before: int  # the base's weight files
    checkpoint_bytes_after: int  # the quantized checkpoint's weight file
    linear_bytes_before: int  # the quantized layers' weights, in the base's dtype
    linear_bytes_after: int  # their qweight + qzeros + scales
    mean_relative_error: float  # mean over quantized layers of |W_deq - W_merged|_F / |W_merged|_F
    max_relative_error: float
    seconds: float
    autoawq_version: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what the CLI prints and the provenance file holds)."""
        return asdict(self)


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
    base_config = _check_model(model)
    adapter_config = _check_adapter(adapter) if adapter is not None else None
    _check_out(out, model)
    if dtype not in _DTYPES:
        raise QuantizeError(f"dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    defaults = [p for p in DEFAULT_CALIBRATION if p.exists()] if use_default_calibration else []
    if use_default_calibration and len(defaults) < len(DEFAULT_CALIBRATION):
        # Only a package built without its data gets here; --calibration can still supply the texts.
        log.warning(
            "the project's calibration references are missing (%s); calibrating on --calibration only",
            ", ".join(str(p) for p in DEFAULT_CALIBRATION if not p.exists()),
        )
    texts = calibration_texts(defaults + [Path(p) for p in calibration])

    compat.apply()  # transformers' processors import the CUDA-only torchvision (see compat)
    import torch
    from transformers import AutoTokenizer, LlavaNextVideoForConditionalGeneration

    try:
        with _quiet_autoawq():
            import awq
            from awq.models._config import AwqConfig
            from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP
    except ImportError as exc:
        raise QuantizeError(
            f"AutoAWQ is not installed ({exc}); install the extra: pip install -e '.[quantize]'"
        ) from None

    text_type = base_config.get("text_config", {}).get("model_type", "llama")
    if text_type not in AWQ_CAUSAL_LM_MODEL_MAP:
        raise QuantizeError(f"{model}: AutoAWQ cannot quantize a {text_type!r} language model")

    tokenizer = AutoTokenizer.from_pretrained(model)
    blocks, used_texts = _calibration_blocks(texts, tokenizer, prompt, prompts_dir, max_seq_len)

    work_dtype = _work_dtype(dtype, torch)
    save_dtype = _dtype_of(base_config, torch)
    log.info("loading %s (%s)", model, str(work_dtype).removeprefix("torch."))
    llava = LlavaNextVideoForConditionalGeneration.from_pretrained(model, dtype=work_dtype)
    llava.eval()
    merged = 0
    if adapter is not None:
        _check_adapter_fits(adapter, adapter_config, llava, model)
        llava, merged_names = merge_adapter(llava, adapter)
        merged = len(merged_names)
        log.info("merged %d LoRA modules of %s", merged, adapter)

    language_model = llava.model.language_model
    _check_linear_shapes(language_model, group_size, model)
    linear_bytes_before = sum(
        lin.weight.numel() * save_dtype.itemsize for lin in _named_linears(language_model, torch).values()
    )

    # AutoAWQ's Llama path wants a *ForCausalLM whose .model is the decoder stack: build one on the
    # meta device (no memory) and give it the LLaVA model's own modules, so AutoAWQ's smoothing,
    # clipping and WQLinear replacements happen inside `llava`.
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        causal_lm = AutoModelForCausalLM.from_config(llava.config.text_config)
    causal_lm.model = language_model
    causal_lm.lm_head = llava.lm_head
    causal_lm.eval()
    awq_model = AWQ_CAUSAL_LM_MODEL_MAP[text_type](
        causal_lm, text_type, is_quantized=False, config=causal_lm.config, quant_config=AwqConfig(), processor=None
    )
    quant_config = {"zero_point": True, "q_group_size": group_size, "w_bit": BITS, "version": "GEMM"}
    log.info("AWQ over %d calibration texts (%d tokens)", used_texts, len(blocks) * len(blocks[0]))
    with _quiet_autoawq(), torch.no_grad():
        awq_model.quantize(
            tokenizer,
            quant_config=quant_config,
            calib_data=blocks,
            max_calib_samples=len(blocks),
            max_calib_seq_len=len(blocks[0]),
            n_parallel_calib_samples=None,
            quantizer_cls=_recording_quantizer(),
        )
    errors: dict[str, float] = awq_model.quantizer.errors
    if not errors:
        raise QuantizeError(f"{model}: AutoAWQ quantized no layer")

    linear_bytes_after = sum(
        sum(
            getattr(module, name).numel() * getattr(module, name).element_size()
            for name in ("qweight", "qzeros", "scales")
        )
        for module in language_model.modules()
        if hasattr(module, "qweight")
    )
    tensors = _checkpoint_tensors(llava, save_dtype, _base_keys(model), torch)
    result = QuantizeResult(
        out_dir=str(out.resolve()),
        model=str(model.resolve()),
        adapter=str(adapter.resolve()) if adapter is not None else None,
        merged_lora_modules=merged,
        quantized_layers=len(errors),
        bits=BITS,
        group_size=group_size,
        calibration_texts=used_texts,
        calibration_tokens=len(blocks) * len(blocks[0]),
        checkpoint_bytes_before=sum(p.stat().st_size for p in _weight_files(model)),
        checkpoint_bytes_after=0,
        linear_bytes_before=linear_bytes_before,
        linear_bytes_after=linear_bytes_after,
        mean_relative_error=round(sum(errors.values()) / len(errors), 6),
        max_relative_error=round(max(errors.values()), 6),
        seconds=0.0,
        autoawq_version=awq.__version__,
    )
    _write_checkpoint(out, model, base_config, tensors, result, group_size, started)
    return result


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


def dequantize_awq_gemm(qweight: Any, qzeros: Any, scales: Any, group_size: int = GROUP_SIZE) -> Any:
    """The float weight ``[out, in]`` (as ``nn.Linear.weight``) of AutoAWQ GEMM tensors.

    ``qweight`` int32 ``[in, out/8]``, ``qzeros`` int32 ``[in/group, out/8]``, ``scales``
    ``[in/group, out]``; 4-bit values packed in `AWQ_PACK_ORDER`; ``w = (q - zero) * scale``.
    Written from the format, not from AutoAWQ's code, so it checks what AutoAWQ packed.
    """
    import torch

    def unpack(packed: torch.Tensor) -> torch.Tensor:
        shifts = torch.arange(0, 32, BITS, dtype=torch.int32, device=packed.device)
        nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF  # [rows, out/8, 8]: nibble i of each int32
        values = torch.empty_like(nibbles)
        values[..., list(AWQ_PACK_ORDER)] = nibbles  # nibble i is column AWQ_PACK_ORDER[i]
        return values.reshape(packed.shape[0], -1)

    q = unpack(qweight).float()  # [in, out]
    zeros = unpack(qzeros).float().repeat_interleave(group_size, dim=0)
    scale = scales.float().repeat_interleave(group_size, dim=0)
    return ((q - zeros) * scale).t().contiguous()


def calibration_texts(files: Sequence[Path]) -> list[str]:
    """Korean captions from `files`, in order, without duplicates.

    An output folder (``captions.jsonl`` and/or ``parts/``), or a JSONL file whose records have
    ``caption``, is read as captions, the way ``captioner eval`` reads them (a folder's
    ``captions.jsonl`` brings its part files; the last record per video; its ``ok`` captions);
    anything else as references (JSONL ``{"video", "references"}``, CSV, or an AI-Hub label folder).
    Raises `QuantizeError` naming the file when one cannot be read.
    """
    from captioner.evaluation.references import InputError, load_references
    from captioner.evaluation.run import load_captions

    texts: dict[str, None] = {}
    for path in files:
        path = Path(path)
        if not path.exists():
            raise QuantizeError(f"{path}: calibration file does not exist")
        try:
            if _is_captions(path):
                found = [c.caption for c in load_captions(path).clips.values() if c.status == "ok" and c.caption]
            else:
                found = [text for ref in load_references(path).clips.values() for text in ref.references]
        except InputError as exc:
            raise QuantizeError(f"{path}: not usable as calibration captions or references: {exc}") from None
        if not found:
            raise QuantizeError(f"{path}: no captions or references in this file")
        texts.update(dict.fromkeys(t.strip() for t in found if t.strip()))
    return list(texts)


# --- checks (before any heavy work) -----------------------------------------------------------------


def _check_model(model: Path) -> dict[str, Any]:
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


def _check_adapter(adapter: Path) -> dict[str, Any]:
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


def _check_adapter_fits(adapter: Path, config: dict[str, Any], llava: Any, model: Path) -> None:
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


def _check_out(out: Path, model: Path) -> None:
    if out.exists() and not out.is_dir():
        raise QuantizeError(f"{out}: output path is a file, not a folder")
    if out.resolve() == model.resolve():
        raise QuantizeError(f"{out}: the output folder is the model folder; choose another")
    if out.is_dir() and any(out.iterdir()):
        what = "already holds a checkpoint" if (out / "config.json").exists() else "is not empty"
        raise QuantizeError(f"{out}: output folder {what}; remove it or choose another folder")


def _check_linear_shapes(language_model: Any, group_size: int, model: Path) -> None:
    import torch

    for name, lin in _named_linears(language_model, torch).items():
        if lin.in_features % group_size or lin.out_features % (32 // BITS):
            raise QuantizeError(
                f"{model}: language model layer {name} is {lin.out_features}x{lin.in_features}; AWQ needs "
                f"input sizes divisible by the group size {group_size} and output sizes divisible by 8"
            )


# --- calibration ------------------------------------------------------------------------------------


def _is_captions(path: Path) -> bool:
    from captioner.outputs import dataset_files, output_folder

    folder = output_folder(path)  # an output folder, or its captions.jsonl beside parts/
    if folder is not None:
        return bool(dataset_files(folder))  # a folder of AI-Hub label files has none
    if path.suffix.lower() != ".jsonl":
        return False
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    return False
                return isinstance(first, dict) and "caption" in first and "references" not in first
    return False


def _calibration_blocks(
    texts: list[str], tokenizer: Any, prompt: str, prompts_dir: Path | None, max_seq_len: int
) -> tuple[list[list[int]], int]:
    """Token blocks for AutoAWQ: each text as ``{prompt} {caption}``, concatenated, cut into equal blocks.

    AutoAWQ itself concatenates its samples and drops what does not fill a block; doing it here
    makes the block length fit small calibration sets (it fails when the total is under one block).
    The video placeholder is removed from the prompt: AWQ runs the language model alone, and a
    bare ``<video>`` token embedding is not what the model sees there when captioning.
    """
    from captioner.prompts import DEFAULT_PROMPTS_DIR, VIDEO_TOKEN, PromptError, load_prompt, render

    if not texts:
        raise QuantizeError("no calibration texts: give --calibration with captions or references")
    try:
        rendered = render(load_prompt(prompt, prompts_dir or DEFAULT_PROMPTS_DIR), tokenizer)
    except PromptError as exc:
        raise QuantizeError(str(exc)) from None
    template = rendered.text.replace(VIDEO_TOKEN + "\n", "").replace(VIDEO_TOKEN, "")
    samples = [tokenizer(f"{template} {text}")["input_ids"][:max_seq_len] for text in texts]
    tokens = [token for sample in samples for token in sample]
    block = min(max_seq_len, len(tokens))
    count = len(tokens) // block
    return [tokens[i * block : (i + 1) * block] for i in range(count)], len(samples)


# --- AutoAWQ ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_autoawq() -> Iterator[None]:
    """Keep AutoAWQ's deprecation notice off stderr, and undo the global warning filter its import installs.

    ``import awq`` turns DeprecationWarning on for the whole process (``simplefilter("default")``)
    before warning that AutoAWQ is no longer maintained (known: see the module docstring).
    """
    with warnings.catch_warnings(record=True):  # record=True: whatever its filters say, nothing is printed
        warnings.simplefilter("ignore")
        yield


def _recording_quantizer() -> type:
    """AutoAWQ's quantizer, recording the merged weights and the AWQ scales to measure each layer's error.

    AWQ multiplies a layer's input columns by per-channel scales ``s`` (dividing the preceding norm,
    or the preceding linear's output rows, by ``s``), clips, then quantizes. The error reported is
    that of the weight the served model effectively uses, ``diag(s_out) W_deq diag(1/s_in)``, against
    the merged weight before AWQ touched it.
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
        def _compute_best_scale(
            self,
            x: torch.Tensor,
            w_mean: torch.Tensor,
            x_mean: torch.Tensor,
            module2inspect: torch.nn.Module,
            linears2scale: list[torch.nn.Linear],
            fp16_output: torch.Tensor,
            kwargs: dict | None = None,
        ) -> torch.Tensor:
            """AutoAWQ 0.2.9's grid search of ``s = x_mean^r / w_mean^(1-r)``, with a real snapshot.

            AutoAWQ saves the module as ``{k: v.cpu()}`` and restores it after each grid step; on a
            CPU ``.cpu()`` returns the live tensors, which the step then scales in place, so every
            "restore" brings back scaled weights and the scales compound over the 20 steps (measured
            on the demo model with planted outlier channels: the chosen scales gave a 20x larger
            block output error than no scaling at all). Same algorithm, with a copied snapshot.
            """
            kwargs = kwargs or {}
            n_grid = 20
            best_error, best_scales = float("inf"), None
            original = {k: v.detach().clone() for k, v in module2inspect.state_dict().items()}
            device = x.device
            x_mean, w_mean = x_mean.view(-1).to(device), w_mean.view(-1).to(device)
            for step in range(n_grid):
                ratio = step / n_grid
                if self.duo_scaling:
                    scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
                else:
                    scales = x_mean.pow(ratio).clamp(min=1e-4).view(-1)
                scales = scales / (scales.max() * scales.min()).sqrt()
                scales[torch.isinf(scales) | torch.isnan(scales)] = 1
                scales_view = scales.view(1, -1).to(device)
                for fc in linears2scale:  # Q(W * s) / s
                    fc.weight.data = self.pseudo_quantize_tensor(fc.weight.data * scales_view)[0] / scales_view
                output = self._module_forward(x, module2inspect, kwargs)
                output = output.clip(torch.finfo(output.dtype).min, torch.finfo(output.dtype).max)
                error = self._compute_loss(fp16_output, output, device)
                if error < best_error:
                    best_error, best_scales = error, scales.clone()
                module2inspect.load_state_dict(original)
            if best_scales is None or torch.isnan(best_scales).any():
                raise QuantizeError("AWQ scale search found no finite scales (NaN activations?)")
            return best_scales.detach().cpu()

        def _apply_quant(self, module: Any, named_linears: dict[str, Any]) -> None:
            super()._apply_quant(module, named_linears)
            prefix = get_op_name(self.model, module)
            for name in named_linears:
                q = get_op_by_name(module, name)
                weight = dequantize_awq_gemm(q.qweight.cpu(), q.qzeros.cpu(), q.scales.cpu(), self.group_size)
                if name in self._in_scales:
                    weight = weight / self._in_scales[name][None, :]
                if name in self._out_scales:
                    rows = self._out_scales[name]
                    weight[-rows.numel() :] *= rows[:, None]
                original = self._originals[name]
                self.errors[f"{prefix}.{name}"] = float((weight - original).norm() / original.norm().clamp_min(1e-12))

    return RecordingQuantizer


# --- writing ----------------------------------------------------------------------------------------


def _named_linears(module: Any, torch: Any) -> dict[str, Any]:
    return {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def _work_dtype(dtype: str, torch: Any) -> Any:
    if dtype == "auto":
        return torch.float16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, dtype)


def _dtype_of(config: dict[str, Any], torch: Any) -> Any:
    name = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    value = getattr(torch, str(name), None) if name else None
    return value if isinstance(value, torch.dtype) and value.is_floating_point else torch.float16


def _weight_files(model: Path) -> list[Path]:
    return sorted({p for pattern in _WEIGHT_PATTERNS for p in model.glob(pattern) if p.is_file()})


def _base_keys(model: Path) -> set[str]:
    from safetensors import safe_open

    keys: set[str] = set()
    for path in model.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            keys.update(f.keys())
    return keys


def _checkpoint_tensors(llava: Any, save_dtype: Any, base_keys: set[str], torch: Any) -> dict[str, Any]:
    """The state dict in the base's key layout: AWQ tensors as packed, other floats in the base's dtype."""
    # transformers 5 names the CLIP tower "model.vision_tower.embeddings..."; the hub checkpoints
    # (and vLLM) use "model.vision_tower.vision_model.embeddings...". Keep what the base uses.
    hub_vision = any(key.startswith(_VISION_PREFIX + "vision_model.") for key in base_keys)
    tensors: dict[str, Any] = {}
    for key, value in llava.state_dict().items():
        if hub_vision and key.startswith(_VISION_PREFIX) and not key.startswith(_VISION_PREFIX + "vision_model."):
            key = _VISION_PREFIX + "vision_model." + key[len(_VISION_PREFIX) :]
        value = value.detach().cpu()
        is_awq = key.rsplit(".", 1)[-1] in ("qweight", "qzeros", "scales")
        if value.is_floating_point() and not is_awq:
            value = value.to(save_dtype)
        tensors[key] = value.contiguous()
    return tensors


def _write_checkpoint(
    out: Path,
    model: Path,
    base_config: dict[str, Any],
    tensors: dict[str, Any],
    result: QuantizeResult,
    group_size: int,
    started: float,
) -> None:
    """Write everything into a hidden sibling folder, then rename it to `out` (no half checkpoints)."""
    from safetensors.torch import save_file

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise QuantizeError(f"{out}: cannot write the checkpoint there ({exc.strerror or exc})") from None
    try:
        weight_files = set(_weight_files(model))
        for item in sorted(model.iterdir()):  # tokenizer, processor, chat template, generation config ...
            if item.is_file() and item not in weight_files and item.name not in ("config.json", PROVENANCE_FILE):
                shutil.copy2(item, staging / item.name)
        config = dict(base_config)
        config["quantization_config"] = {
            "quant_method": "awq",
            "bits": BITS,
            "group_size": group_size,
            "zero_point": True,
            "version": "gemm",
            "modules_to_not_convert": list(MODULES_NOT_CONVERTED),
        }
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        # safetensors creates the file 0600; the serving containers run as another user (uid 10001).
        umask = os.umask(0)
        os.umask(umask)
        (staging / "model.safetensors").chmod(0o666 & ~umask)
        result.checkpoint_bytes_after = (staging / "model.safetensors").stat().st_size
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
