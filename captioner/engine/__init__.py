"""Engine stage: the `Engine` seam (`protocol`) and its vLLM implementation (`vllm_engine.CaptionEngine`)."""

from captioner.engine.protocol import Engine, EngineError, Generation, engine_dead
from captioner.engine.vllm_engine import CaptionEngine

__all__ = ["CaptionEngine", "Engine", "EngineError", "Generation", "engine_dead"]
