"""The AutoAWQ GEMM checkpoint format this package writes and vLLM's ``quantization="awq"`` reads."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AWQ_PACK_ORDER",
    "BITS",
    "GROUP_SIZE",
    "MODULES_NOT_CONVERTED",
    "dequantize_awq_gemm",
    "quantization_config",
]

BITS = 4
GROUP_SIZE = 128
# Within each int32 of an AutoAWQ GEMM tensor, nibble i (bits 4i..4i+3) holds column
# AWQ_PACK_ORDER[i] of its block of 8 output columns (vLLM undoes it with [0,4,1,5,2,6,3,7]).
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# Substrings of module names vLLM (and transformers) must leave unquantized.
MODULES_NOT_CONVERTED = ["vision_tower", "multi_modal_projector", "lm_head"]


def quantization_config(group_size: int) -> dict[str, Any]:
    """The ``quantization_config`` of config.json: how vLLM and transformers read the packed weights."""
    return {
        "quant_method": "awq",
        "bits": BITS,
        "group_size": group_size,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": list(MODULES_NOT_CONVERTED),
    }


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
