"""Engine stage: the `Engine` seam (`protocol`) and its vLLM implementation (`vllm_engine.CaptionEngine`).

`CaptionEngine` is imported from `captioner.engine.vllm_engine` where it is built: that module
loads torch (and vLLM when an engine is made), which planning, submitting and reading records never need.
"""

from captioner.engine.protocol import Engine, EngineError, Generation, engine_dead

__all__ = ["Engine", "EngineError", "Generation", "engine_dead"]
