"""A tiny random-weight LLaVA-NeXT-Video checkpoint and LoRA adapter, built offline, and the drawn clips.

No model weights can be downloaded where this project is developed and tested, so the real vLLM
engine is exercised on a checkpoint made here (`checkpoint`): the architecture, file layout, tokens
and prompt format of ``llava-hf/LLaVA-NeXT-Video-7B-hf`` with every dimension shrunk. The base's
weights are random; its LoRA adapter is trained here (`adapter`: `captioner train`'s code, on the
synthetic scenes of `scenes`), so the demo's captions describe the scenes it is shown. `build`
writes the pair and its stamp.

Importing this package is cheap (no torch): `scenes` is used by processes that only draw clips.
"""

from captioner.demo.adapter import DemoTraining, train_demo_adapter
from captioner.demo.build import DEMO_STAMP, DEMO_VERSION, build_demo_model, ensure_demo_model

__all__ = ["DEMO_STAMP", "DEMO_VERSION", "DemoTraining", "build_demo_model", "ensure_demo_model", "train_demo_adapter"]
