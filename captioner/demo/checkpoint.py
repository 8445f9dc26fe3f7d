"""The tiny random-weight LLaVA-NeXT-Video checkpoint: config, tokenizer, processors, weights, files.

It keeps the architecture, file layout, tokens and prompt format of
``llava-hf/LLaVA-NeXT-Video-7B-hf`` and shrinks every dimension, within what vLLM's CPU backend
accepts (attention head_dim 64; the video pooler needs ``image_size // patch_size**2 >= 1``, hence
64 px frames and 8 px patches). Every weight comes from one seeded generator, so a seed always
gives the same files.
"""

from __future__ import annotations

import math
from pathlib import Path

from captioner import compat
from captioner.demo.adapter import point_at_base
from captioner.hub_layout import hub_key
from captioner.demo.recipe import (
    DEMO_FRAME_SIZE,
    DEMO_LORA_RANK,
    DEMO_MAX_MODEL_LEN,
    DEMO_PATCH_SIZE,
    DEMO_SPATIAL_POOL_STRIDE,
    DEMO_TOKENS_PER_FRAME,
)
from captioner.prompts import VIDEO_TOKEN

compat.apply()  # transformers' processors import torchaudio/torchvision (see compat)

import torch
from safetensors.torch import save_file
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    GenerationConfig,
    LlavaNextImageProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    PreTrainedTokenizerFast,
)

__all__ = [
    "CHAT_TEMPLATE",
    "DEMO_FRAME_SIZE",
    "DEMO_LORA_RANK",
    "DEMO_MAX_MODEL_LEN",
    "DEMO_PATCH_SIZE",
    "DEMO_TOKENS_PER_FRAME",
    "IMAGE_TOKEN",
    "build_tokenizer",
    "write_base",
    "write_random_adapter",
]

IMAGE_TOKEN = "<image>"

# chat_template.json of llava-hf/LLaVA-NeXT-Video-7B-hf (Vicuna style, with the
# `generation` tag). With a system message first it renders
# "{system} USER: <video>\n{instruction} ASSISTANT:". Message contents must be lists of
# {"type": ...} parts, as for the real model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_CORPUS = Path(__file__).resolve().parent.parent / "data" / "demo_corpus.txt"
_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, as Llama/Vicuna (+ pad)
_BPE_VOCAB_SIZE = 3000
_TEXT = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 2,
         "intermediate_size": 256}  # fmt: skip
_VISION = {"hidden_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 512}
_LORA_B_STD = 0.2  # PEFT zero-inits B (a no-op adapter); random B makes it change outputs


def write_base(base_dir: Path, seed: int = 0) -> tuple[LlavaNextVideoForConditionalGeneration, torch.Generator]:
    """Write the random-weight checkpoint into `base_dir`; return the model and the generator its weights came from.

    ``base_dir`` gets config.json, generation_config.json, model.safetensors (hub key layout,
    loadable by vLLM), a byte-level BPE tokenizer trained on the shipped Korean/English corpus
    (with ``<video>``/``<image>`` special tokens and the real model's chat template) and a
    ``LlavaNextVideoProcessor`` for 64 px frames, so ``AutoProcessor.from_pretrained(base)`` works
    offline. The generator goes on to draw the random adapter's weights (`write_random_adapter`).
    """
    tokenizer = build_tokenizer()
    config = _build_config(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    model = LlavaNextVideoForConditionalGeneration(config)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name:  # layernorm, layrnorm, layer_norm, norm: keep identity init
                continue
            param.copy_(torch.randn(param.shape, generator=generator) * _init_std(name, param))
    model.eval()

    _save_base(model, config, base_dir)
    processor = LlavaNextVideoProcessor(
        video_processor=_video_processor(),
        image_processor=_image_processor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        patch_size=DEMO_PATCH_SIZE,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        video_token=VIDEO_TOKEN,
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    return model, generator


def _init_std(name: str, param: torch.Tensor) -> float:
    if param.dim() == 1 or "position_embedding" in name:  # biases, class/newline embeddings
        return 0.02
    if "embed_tokens" in name:
        return 1.0
    # Unit-variance activations (std 1/sqrt(fan_in)) instead of the usual 0.02: with
    # tiny weights every position looks alike and greedy decoding ignores the video.
    gain = 2.0 if name.startswith("lm_head") else 1.0
    return gain / math.sqrt(param[0].numel())


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE, so every UTF-8 string (Korean included) round-trips."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=1,  # the corpus is small: let whole words become tokens (~3k vocab)
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line.strip() for line in _CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    # Like the real checkpoint, <video> then <image> are added after the BPE vocabulary.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (VIDEO_TOKEN, IMAGE_TOKEN)])
    bos_id = tok.token_to_id("<s>")
    # Llama/Vicuna tokenizers prepend BOS and append nothing.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=DEMO_MAX_MODEL_LEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_config(tokenizer: PreTrainedTokenizerFast) -> LlavaNextVideoConfig:
    vocab_size = 64 * math.ceil(len(tokenizer) / 64)  # padded like the real model (32064)
    grid = DEMO_FRAME_SIZE // DEMO_PATCH_SIZE
    config = LlavaNextVideoConfig(
        text_config=dict(
            model_type="llama",
            vocab_size=vocab_size,
            max_position_embeddings=DEMO_MAX_MODEL_LEN,
            rms_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
            dtype="bfloat16",
            **_TEXT,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            image_size=DEMO_FRAME_SIZE,
            patch_size=DEMO_PATCH_SIZE,
            projection_dim=_VISION["hidden_size"],
            hidden_act="quick_gelu",
            **_VISION,
        ),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_mode="average",
        spatial_pool_stride=DEMO_SPATIAL_POOL_STRIDE,
        image_grid_pinpoints=_grid_pinpoints(),
        image_seq_length=grid * grid,
        video_seq_length=DEMO_TOKENS_PER_FRAME * 2,
        tie_word_embeddings=False,
    )
    config.dtype = "bfloat16"
    config.architectures = ["LlavaNextVideoForConditionalGeneration"]
    return config


def _grid_pinpoints() -> list[list[int]]:
    s = DEMO_FRAME_SIZE  # the real model's pinpoints, in units of its 336 px input
    return [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [3 * s, s], [s, 3 * s]]


def _video_processor() -> LlavaNextVideoVideoProcessor:
    return LlavaNextVideoVideoProcessor(
        size={"shortest_edge": DEMO_FRAME_SIZE},
        crop_size={"height": DEMO_FRAME_SIZE, "width": DEMO_FRAME_SIZE},
    )


def _image_processor() -> LlavaNextImageProcessor:
    return LlavaNextImageProcessor(
        size={"shortest_edge": DEMO_FRAME_SIZE},
        crop_size={"height": DEMO_FRAME_SIZE, "width": DEMO_FRAME_SIZE},
        image_grid_pinpoints=_grid_pinpoints(),
    )


def _save_base(model: LlavaNextVideoForConditionalGeneration, config: LlavaNextVideoConfig, base_dir: Path) -> None:
    # In the hub's key layout, which vLLM reads (see hub_layout).
    state = model.state_dict()
    tensors = {hub_key(key): value.detach().to(torch.bfloat16).contiguous() for key, value in state.items()}
    save_file(tensors, str(base_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(base_dir)
    GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
    ).save_pretrained(base_dir)


def write_random_adapter(
    model: LlavaNextVideoForConditionalGeneration,
    adapter_dir: Path,
    base_dir: Path,
    generator: torch.Generator,
) -> None:
    """Write a random LoRA adapter of `model` (r=8, q_proj/v_proj) into `adapter_dir`, naming `base_dir` as its base.

    B is random and non-zero, so the adapter changes outputs without meaning anything: what tests
    that need no meaningful caption use.
    """
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=DEMO_LORA_RANK,
        lora_alpha=2 * DEMO_LORA_RANK,
        lora_dropout=0.0,
        bias="none",
        # Regex (full match) so the CLIP tower's q_proj/v_proj are left alone.
        target_modules=r".*language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
    )
    peft_model = get_peft_model(model, lora_config)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:  # A: PEFT's kaiming init is unseeded
                std = _LORA_B_STD if "lora_B" in name else 1 / math.sqrt(param.shape[-1])
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    peft_model.save_pretrained(adapter_dir)
    (adapter_dir / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
    point_at_base(adapter_dir, base_dir)
