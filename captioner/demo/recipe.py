"""The demo checkpoint's dimensions, importable without torch (`captioner frames` needs the frame size alone).

The smallest LLaVA-NeXT-Video that vLLM's CPU backend accepts: head_dim 64 (hidden 128, 2 heads), and
a video pooler that needs ``image_size // patch_size**2 >= 1``, hence 64 px frames and 8 px patches.
"""

from __future__ import annotations

from captioner.prompts import frame_tokens

DEMO_FRAME_SIZE = 64  # frames are resized/cropped to this square size (real model: 336)
DEMO_PATCH_SIZE = 8  # CLIP patch size (real model: 14)
DEMO_SPATIAL_POOL_STRIDE = 2  # as the real model
DEMO_MAX_MODEL_LEN = 4096  # max_position_embeddings of the text model
DEMO_LORA_RANK = 8  # adapter rank; serve with max_lora_rank >= this
DEMO_TOKENS_PER_FRAME = frame_tokens(DEMO_FRAME_SIZE, DEMO_PATCH_SIZE, DEMO_SPATIAL_POOL_STRIDE)
