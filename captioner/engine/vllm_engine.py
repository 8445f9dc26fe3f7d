"""The vLLM engine (`CaptionEngine`, an `Engine`): one vLLM `LLM` per process, loaded once.

All clips of a batch go into one `generate` call (vLLM schedules them together), each with one
video and the same rendered prompt, so the text before the video is served from the prefix cache.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from captioner import compat
from captioner.adapters import Adapter
from captioner.config import Sampling
from captioner.engine.protocol import EngineError, Generation, engine_dead
from captioner.prompts import RenderedPrompt
from captioner.sizing import EngineKV
from captioner.tiers import TierProfile

log = logging.getLogger(__name__)

# vLLM accepts only these LoRA ranks for max_lora_rank.
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _check_cpu_awq_kernel(model: str) -> None:
    """Refuse AWQ on a CPU whose vLLM kernel library lacks the AWQ matmul, before loading anything.

    vLLM's CPU wheel compiles `cpu_gemm_wna16` into its AVX-512 kernel libraries only; on an AVX2
    CPU the checkpoint loads and the first forward pass fails with an AttributeError.
    """
    import torch
    import vllm._custom_ops  # noqa: F401 - loads the kernel library vLLM picks for this CPU

    if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
        capability = torch.backends.cpu.get_cpu_capability()
        raise EngineError(
            f"{model}: vLLM runs AWQ on a CPU only with its AVX-512 kernels (cpu_gemm_wna16), and this CPU "
            f"has {capability}; serve the AWQ checkpoint on a GPU, or the unquantized checkpoint here"
        )


def _lora_rank(adapter: Path) -> int:
    try:
        rank = int(json.loads((adapter / "adapter_config.json").read_text())["r"])
    except (OSError, KeyError, ValueError) as exc:
        raise EngineError(f"{adapter}: not a PEFT LoRA adapter (adapter_config.json: {exc})") from None
    fitting = [r for r in _LORA_RANKS if r >= rank]
    if not fitting:
        raise EngineError(f"{adapter}: LoRA rank {rank} is larger than vLLM supports ({_LORA_RANKS[-1]})")
    return fitting[0]


def kv_capacity(llm: Any) -> EngineKV | None:
    """vLLM's own KV cache figures once its engine is built; None when it does not report them.

    vLLM (0.32) stores what it logs as "KV cache size: N tokens" and "Maximum concurrency for L tokens
    per request: Cx" on the engine's cache config (`kv_cache_size_tokens`, `kv_cache_max_concurrency`,
    with `num_gpu_blocks` of `block_size` tokens), in the front end's copy too when the engine core
    runs in its own process.
    """
    try:
        config = llm.llm_engine.vllm_config
        cache = config.cache_config
        figures = (cache.kv_cache_size_tokens, cache.kv_cache_max_concurrency, cache.num_gpu_blocks)
    except AttributeError:
        return None
    if any(value is None for value in figures):
        return None
    return EngineKV(
        kv_tokens=int(cache.kv_cache_size_tokens),
        max_concurrency=float(cache.kv_cache_max_concurrency),
        max_model_len=int(config.model_config.max_model_len),
        num_blocks=int(cache.num_gpu_blocks),
        block_size=int(cache.block_size),
    )


class CaptionEngine:
    """vLLM with the caption adapter and the tier's settings.

    The prompt and sampling are given per call, so one loaded engine serves any prompt version.
    """

    def __init__(
        self,
        model: str,
        profile: TierProfile,
        adapters: Sequence[Adapter] = (),
        seed: int = 0,
        enable_prefix_caching: bool = True,
    ) -> None:
        """`adapters`: the LoRA adapters to serve side by side (vLLM multi-LoRA); `BASE` entries are skipped.

        Clips are captioned with the first adapter unless `caption` names others per clip.
        """
        compat.apply()  # before vllm is imported: see compat.py
        if profile.max_num_seqs is None:
            raise EngineError(f"the {profile.name} profile has no max_num_seqs yet: build the engine from a plan")
        if profile.device == "cpu" and profile.quantization == "awq":
            _check_cpu_awq_kernel(model)
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.model = model
        self.profile = profile
        self.adapters = [a.path for a in adapters if a.path is not None]
        self.seed = seed
        started = time.perf_counter()
        kwargs: dict[str, Any] = dict(
            model=model,
            dtype=profile.dtype,
            quantization=profile.quantization,
            gpu_memory_utilization=profile.gpu_memory_utilization,
            max_num_seqs=profile.max_num_seqs,
            max_num_batched_tokens=profile.max_num_batched_tokens,
            enable_chunked_prefill=profile.enable_chunked_prefill,
            max_model_len=profile.max_model_len,
            enforce_eager=profile.enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            limit_mm_per_prompt={"video": 1, "image": 0},
            # Every video is captioned once: a cache of processed videos would only hold memory.
            mm_processor_cache_gb=0,
            seed=seed,
        )
        if profile.kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(profile.kv_cache_gib * 2**30)
        if profile.block_size is not None:
            kwargs["block_size"] = profile.block_size
        if self.adapters:
            rank = max(_lora_rank(a) for a in self.adapters)
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=len(self.adapters))
        self.llm = LLM(**kwargs)
        self.load_s = time.perf_counter() - started
        import torch

        self._threads = torch.get_num_threads()
        # One request per adapter; ids start at 1 (vLLM reserves 0). The first keeps the name "caption".
        self._loras = {
            a: LoRARequest("caption" if i == 0 else f"caption-{i + 1}", i + 1, str(a))
            for i, a in enumerate(self.adapters)
        }
        self.kv = kv_capacity(self.llm)
        log.info(
            "engine loaded in %.1f s (model %s, tier %s, adapters %s)", self.load_s, model, profile.name, self.adapters
        )

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt blocks (benchmarks: each pass starts cold)."""
        self.llm.reset_prefix_cache()

    def warm_prefix(self, prompt: RenderedPrompt, with_adapter: bool = True) -> None:
        """Compute the shared prompt prefix once, so even the first batch is served from the cache.

        Requests scheduled in the same step cannot reuse each other's blocks; without this, every
        clip of the first batch would compute the prefix itself. The cache is per adapter, so the
        prefix is warmed for every adapter served (and the base model when `with_adapter` is False).
        """
        from vllm import SamplingParams

        self._same_threads()
        loras = list(self._loras.values()) if with_adapter and self._loras else [None]
        self.llm.generate(
            [prompt.prefix_text] * len(loras), SamplingParams(max_tokens=1), lora_request=loras, use_tqdm=False
        )

    def caption(
        self,
        videos: list[np.ndarray],
        prompt: RenderedPrompt,
        sampling: Sampling,
        adapters: Sequence[Adapter] | None = None,
    ) -> list[Generation]:
        """Caption a batch of clips (each (N, H, W, 3) uint8) in one `generate` call.

        A failing batch is retried clip by clip so one bad clip fails alone. `adapters` names each
        clip's adapter (one the engine serves, or `BASE` for the base model), so one call can caption
        the same frames with several adapters; by default every clip gets the first adapter, if any.
        """
        if not videos:
            return []
        if adapters is None:
            first = next(iter(self._loras.values()), None)
            loras = [first] * len(videos)
        else:
            unknown = [a for a in adapters if a.path is not None and a.path not in self._loras]
            if unknown or len(adapters) != len(videos):
                raise ValueError(f"caption: adapters {unknown or adapters} do not match the engine's {self.adapters}")
            loras = [None if a.path is None else self._loras[a.path] for a in adapters]
        return self._generate(videos, prompt, sampling, loras)

    def _generate(
        self, videos: list[np.ndarray], prompt: RenderedPrompt, sampling: Sampling, loras: list[Any]
    ) -> list[Generation]:
        """`caption` with each clip's LoRARequest (None: the base model) resolved."""
        from vllm import SamplingParams

        if None in loras and any(lora is not None for lora in loras):
            # vLLM 0.32's CPU LoRA kernels apply adapters to the base model's requests of a mixed
            # batch (measured: the base then writes the adapter's phrases); base requests go apart.
            results: dict[int, Generation] = {}
            for base in (False, True):
                group = [i for i, lora in enumerate(loras) if (lora is None) == base]
                outs = self._generate([videos[i] for i in group], prompt, sampling, [loras[i] for i in group])
                results.update(zip(group, outs))
            return [results[i] for i in range(len(videos))]
        self._same_threads()
        params = SamplingParams(**sampling.model_dump(), seed=self.seed if sampling.temperature > 0 else None)
        requests = [{"prompt": prompt.text, "multi_modal_data": {"video": video}} for video in videos]
        try:
            outputs = self.llm.generate(requests, params, lora_request=loras, use_tqdm=False)
            return [self._to_generation(out) for out in outputs]
        except Exception as exc:  # noqa: BLE001 - isolate the clip that broke the batch
            if engine_dead(exc):
                raise  # no clip can succeed on a dead engine: the caller rebuilds it
            if len(videos) == 1:
                return [Generation("", 0, 0, 0, None, error=f"engine error: {type(exc).__name__}: {exc}")]
            log.warning("batch of %d failed (%s); retrying clip by clip", len(videos), exc)
            return [self._generate([video], prompt, sampling, [lora])[0] for video, lora in zip(videos, loras)]

    def _same_threads(self) -> None:
        """Give the calling thread the OpenMP thread count the engine was built with.

        The count is per thread: a worker's chunk threads start with one thread per core, and vLLM's
        CPU attention refuses to run on metadata built with another count than its kernels get
        ("Check failed: input->metadata->thread_num == thread_num (2 vs. 1)", measured in a
        worker). vLLM turns `torch.set_num_threads` into a no-op once it has bound its threads, so
        the setting goes through torch's own binding.
        """
        import torch

        if self.profile.device == "cpu" and torch.get_num_threads() != self._threads:
            torch._C.set_num_threads(self._threads)

    @staticmethod
    def _to_generation(out: Any) -> Generation:
        completion = out.outputs[0]
        return Generation(
            text=completion.text.strip(),
            prompt_tokens=len(out.prompt_token_ids or ()),
            cached_tokens=out.num_cached_tokens or 0,
            output_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason,
        )

    def shareable_prefix_tokens(self, prompt: RenderedPrompt) -> int:
        """Prefix tokens the cache can serve: only whole KV blocks are cached."""
        block = self.llm.llm_engine.vllm_config.cache_config.block_size
        return (prompt.prefix_tokens // block) * block
