"""What `quantize` reports: its error, raised before anything is written, and its figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from captioner.errors import CaptionerError

__all__ = ["QuantizeError", "QuantizeResult"]


class QuantizeError(CaptionerError):
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
