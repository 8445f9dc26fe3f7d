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
CPU its scale search corrupts the weights it searches over (see `autoawq.search_best_scales`).
llm-compressor (AutoAWQ's maintained successor) is not used: 0.14.0.1 requires
transformers<=5.17.0 (the project runs 5.19 with vLLM 0.32), its AWQ fails on a machine without an
accelerator (``pin_memory``: "Cannot access accelerator device when none is available"), and it
writes compressed-tensors rather than the AutoAWQ GEMM layout the tiers' ``quantization="awq"`` reads.

Calibration uses the project's own Korean texts (``captioner/data/calibration.jsonl``, plus any
captions or references given), each formatted as the captioning prompt followed by the caption,
so the activations AWQ balances look like real captioning (without the video features: AWQ sees
the language model only).
"""

from captioner.quantize.awq_format import AWQ_PACK_ORDER, BITS, GROUP_SIZE, dequantize_awq_gemm
from captioner.quantize.calibration import DEFAULT_CALIBRATION, calibration_texts
from captioner.quantize.checkpoint import PROVENANCE_FILE, merge_adapter
from captioner.quantize.command import quantize
from captioner.quantize.result import QuantizeError, QuantizeResult

# The package's parts, by job: `checks` (the model, adapter and output folder, before any heavy
# work), `calibration` (the texts and token blocks), `autoawq` (AutoAWQ on the language model, with
# its CPU scale-search fix), `checkpoint` (merging the adapter, writing the folder), `command`
# (`quantize`, in that order), `awq_format` (the packed layout) and `result`.
__all__ = [
    "AWQ_PACK_ORDER",
    "BITS",
    "DEFAULT_CALIBRATION",
    "GROUP_SIZE",
    "PROVENANCE_FILE",
    "QuantizeError",
    "QuantizeResult",
    "calibration_texts",
    "dequantize_awq_gemm",
    "merge_adapter",
    "quantize",
]
