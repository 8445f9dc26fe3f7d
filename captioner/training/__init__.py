"""Training the LoRA caption adapter (`captioner train`) with the frames, prompt and tokens serving uses.

- `examples`: videos paired with references, frames decoded once by the frame stage, token ids as vLLM gets them;
- `lora`: the frozen base and a LoRA on its language model, saved where vLLM and PEFT load it;
- `trainer`: the loop, checkpoints and resume, validation METEOR, `training.json`.
"""

from captioner.training.trainer import TrainConfig, TrainError, TrainResult, train

__all__ = ["TrainConfig", "TrainError", "TrainResult", "train"]
