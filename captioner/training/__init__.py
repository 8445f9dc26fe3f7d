"""Training the LoRA caption adapter (`captioner train`) with the frames, prompt and tokens serving uses.

- `examples`: videos paired with references, frames decoded once by the frame stage, token ids as vLLM gets them;
- `lora`: the frozen base and a LoRA on its language model, saved where vLLM and PEFT load it;
- `job`: the configuration, the resolved run, its result and its error;
- `trainer`: `train`, the entry: inputs checked and resolved, clips decoded;
- `fit`: the loop; `checkpoints`: resume; `validation`: METEOR on held-out clips; `document`: `training.json`.
"""

from captioner.training.job import TrainConfig, TrainError, TrainResult
from captioner.training.trainer import train

__all__ = ["TrainConfig", "TrainError", "TrainResult", "train"]
