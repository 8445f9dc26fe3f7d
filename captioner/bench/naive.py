"""The naive way, as a user's script does it: exact frames, the HF processor and `generate`, one clip at a time."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from captioner.bench.common import in_child_process
from captioner.planning import Plan


def _uniform_indices(frames: int, n: int) -> list[int]:
    """What a user's script samples: the centre frame of `n` equal segments, by index (exact frames)."""
    return [min(int((i + 0.5) * frames / n), frames - 1) for i in range(n)]


def _naive_worker(model: str, adapter: str | None, prompt_ref: str, prompts_dir: str, clips: list[str],
                  frames: int, max_tokens: int, min_tokens: int, repetition_penalty: float) -> dict[str, Any]:
    """Runs in its own process: HF processor + generate, one clip at a time, every core for torch."""
    from captioner import compat

    compat.apply()
    import decord
    import torch
    from transformers import AutoProcessor, LlavaNextVideoForConditionalGeneration

    from captioner.prompts import load_prompt, render

    torch.set_num_threads(os.cpu_count() or 1)
    processor = AutoProcessor.from_pretrained(model)
    hf_model = LlavaNextVideoForConditionalGeneration.from_pretrained(model, dtype="auto")
    if adapter:
        from peft import PeftModel

        hf_model = PeftModel.from_pretrained(hf_model, adapter)
    hf_model.eval()
    text = render(load_prompt(prompt_ref, Path(prompts_dir)), processor.tokenizer).text

    stages = {"decode_s": 0.0, "processor_s": 0.0, "generate_s": 0.0}

    def one(path: str) -> int:
        t0 = time.perf_counter()
        reader = decord.VideoReader(path)  # full resolution: the processor resizes
        video = reader.get_batch(_uniform_indices(len(reader), frames)).asnumpy()
        t1 = time.perf_counter()
        inputs = processor(text=text, videos=[video], return_tensors="pt")
        t2 = time.perf_counter()
        with torch.inference_mode():
            out = hf_model.generate(
                **inputs, max_new_tokens=max_tokens, min_new_tokens=min_tokens, do_sample=False,
                repetition_penalty=repetition_penalty,
            )
        stages["decode_s"] += t1 - t0
        stages["processor_s"] += t2 - t1
        stages["generate_s"] += time.perf_counter() - t2
        return int(out.shape[1] - inputs["input_ids"].shape[1])

    one(clips[0])  # warm-up, as the engine gets one
    stages.update(decode_s=0.0, processor_s=0.0, generate_s=0.0)
    started = time.perf_counter()
    tokens = sum(one(path) for path in clips)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "videos": len(clips), "output_tokens": tokens, "torch_threads": torch.get_num_threads(),
            **{k: round(v, 3) for k, v in stages.items()}}


def measure_naive(plan: Plan, clips: list[Path]) -> dict[str, Any]:
    """The naive loop on `clips` with the plan's model, first adapter and sampling, in a process of its own."""
    sampling = plan.settings.sampling_params()
    adapter = plan.adapters[0].path  # None: the base model alone
    return in_child_process(
        _naive_worker, plan.model, str(adapter) if adapter else None, plan.settings.prompt,
        str(plan.settings.prompts_dir), [str(c) for c in clips], plan.frames, sampling.max_tokens,
        sampling.min_tokens, sampling.repetition_penalty,
    )

