"""A tiny random-weight LLaVA-NeXT-Video checkpoint and LoRA adapter, built offline.

No model weights can be downloaded where this project is developed and tested, so the
real vLLM engine is exercised on a checkpoint made here. It keeps the architecture,
file layout, tokens and prompt format of ``llava-hf/LLaVA-NeXT-Video-7B-hf`` and shrinks
every dimension, within what vLLM's CPU backend accepts (attention head_dim 64; the
video pooler needs ``image_size // patch_size**2 >= 1``, hence 64 px frames and 8 px
patches). The base's weights are random; its LoRA adapter is trained here (`captioner train`'s
code, on synthetic scenes), so the demo's captions describe the scenes it is shown.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from captioner import compat
from captioner.prompts import frame_tokens

compat.apply()  # transformers' processors import torchaudio/torchvision (see compat)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import (  # noqa: E402
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (  # noqa: E402
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
    "VIDEO_TOKEN",
    "DemoTraining",
    "build_demo_model",
    "ensure_demo_model",
    "train_demo_adapter",
]

DEMO_FRAME_SIZE = 64  # frames are resized/cropped to this square size (real model: 336)
DEMO_PATCH_SIZE = 8  # CLIP patch size (real model: 14)
DEMO_SPATIAL_POOL_STRIDE = 2  # as the real model
DEMO_MAX_MODEL_LEN = 4096  # max_position_embeddings of the text model
DEMO_LORA_RANK = 8  # adapter rank; serve with max_lora_rank >= this
VIDEO_TOKEN = "<video>"
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

_CORPUS = Path(__file__).with_name("data") / "demo_corpus.txt"
_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, as Llama/Vicuna (+ pad)
_BPE_VOCAB_SIZE = 3000
_TEXT = dict(
    hidden_size=128, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=256
)
_VISION = dict(hidden_size=128, num_attention_heads=2, num_hidden_layers=2, intermediate_size=512)
_LORA_B_STD = 0.2  # PEFT zero-inits B (a no-op adapter); random B makes it change outputs


DEMO_TOKENS_PER_FRAME = frame_tokens(DEMO_FRAME_SIZE, DEMO_PATCH_SIZE, DEMO_SPATIAL_POOL_STRIDE)


DEMO_STAMP = "demo.json"  # what was built: the version of this recipe, and whether the adapter was trained
DEMO_VERSION = 2  # 2: the adapter is trained on synthetic scenes (1: random adapter)


@dataclass(frozen=True)
class DemoTraining:
    """How the demo adapter is trained: synthetic clips of seeds never used by `samples/` or held-out checks."""

    # Five of every family x time x weather x direction combination (`synth.random_spec`): the adapter
    # must learn each attribute from what it sees, not one clip per caption.
    clips: int = 960
    heldout: int = 24  # clips from `synth.HELDOUT_SEED_BASE`, captioned once trained: the held-out METEOR
    steps: int = 450
    batch: int = 8
    lr: float = 5e-3
    # Rank 64 reached a held-out METEOR of 0.95 where rank 16 reached 0.88 in the same steps (measured here).
    rank: int = 64
    alpha: float = 128.0
    clip: tuple[float, int, int, int] = (2.0, 8, 160, 96)  # seconds, fps, width, height (as the samples)


def ensure_demo_model(out_dir: Path) -> tuple[Path, Path]:
    """`build_demo_model(out_dir)` unless this version was built there already; returns ``(base_dir, adapter_dir)``.

    A folder built by an older recipe (or interrupted) is built again.
    """
    out_dir = Path(out_dir)
    stamp = out_dir / DEMO_STAMP
    built = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if built.get("version") != DEMO_VERSION or not (out_dir / "base" / "config.json").exists():
        logging.getLogger(__name__).warning("building the demo checkpoint and training its adapter in %s", out_dir)
        return build_demo_model(out_dir)
    return out_dir / "base", out_dir / "adapter"


def build_demo_model(
    out_dir: Path, seed: int = 0, train_adapter: bool = True, training: DemoTraining = DemoTraining()
) -> tuple[Path, Path]:
    """Write a tiny LLaVA-NeXT-Video checkpoint and a LoRA adapter for it.

    ``out_dir/"base"`` holds config.json, generation_config.json, model.safetensors
    (hub key layout, loadable by vLLM), a byte-level BPE tokenizer trained on the
    shipped Korean/English corpus (with ``<video>``/``<image>`` special tokens and the
    real model's chat template) and a ``LlavaNextVideoProcessor`` for 64 px frames, so
    ``AutoProcessor.from_pretrained(base)`` works offline. The base has random weights.

    ``out_dir/"adapter"`` holds the demo's PEFT LoRA adapter: trained by `captioner train`'s code on
    synthetic clips (`train_demo_adapter`), so the demo captions what it sees; with
    ``train_adapter=False`` a random one (r=8, q_proj/v_proj, random non-zero B) that only changes
    outputs, which is what tests that need no meaningful caption use. Returns ``(base_dir, adapter_dir)``.
    """
    out_dir = Path(out_dir)
    base_dir, adapter_dir = out_dir / "base", out_dir / "adapter"
    (out_dir / DEMO_STAMP).unlink(missing_ok=True)
    base_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer()
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
    stamp: dict[str, object] = {"version": DEMO_VERSION, "seed": seed}
    if train_adapter:
        result = train_demo_adapter(base_dir, adapter_dir, training, seed=seed)
        stamp.update(adapter="trained", heldout_meteor=result.best_meteor, train_seconds=result.seconds)
    else:
        shutil.rmtree(adapter_dir, ignore_errors=True)
        adapter_dir.mkdir(parents=True)
        _save_adapter(model, adapter_dir, base_dir, generator)
        stamp["adapter"] = "random"
    (out_dir / DEMO_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return base_dir, adapter_dir


def train_demo_adapter(base_dir: Path, adapter_dir: Path, training: DemoTraining = DemoTraining(), seed: int = 0):
    """Train the demo adapter on synthetic clips (not the `samples/` ones) and put it in `adapter_dir`.

    Clips of seeds 0.. are drawn into a temporary folder with their references; validation uses
    held-out seeds. Returns the `TrainResult` (`training.json` is saved beside the adapter).
    """
    from captioner import synth
    from captioner.config import Settings
    from captioner.training import TrainConfig, train

    seconds, fps, width, height = training.clip
    options = dict(seconds=seconds, fps=fps, width=width, height=height)
    with tempfile.TemporaryDirectory(prefix="captioner-demo-") as tmp:
        work = Path(tmp)
        clips = _draw(work / "clips", training.clips, 0, options)
        heldout = _draw(work / "heldout", training.heldout, synth.HELDOUT_SEED_BASE, options)
        config = TrainConfig(
            refs=synth.write_references(work / "clips.jsonl", clips),
            videos=[work / "clips"],
            out=work / "adapter",
            val_refs=synth.write_references(work / "heldout.jsonl", heldout),
            val_videos=[work / "heldout"],
            rank=training.rank, alpha=training.alpha, dropout=0.0, lr=training.lr, steps=training.steps,
            batch=training.batch, save_every=training.steps, seed=seed, validate_every=0,
        )  # fmt: skip
        settings = Settings(model=str(base_dir.resolve()), adapter=None, tier="cpu", frames=None, prompt="detailed-ko")
        log = logging.getLogger(__name__)

        def progress(step: int, total: int, loss: float) -> None:
            if step % 50 == 0 or step == total:
                log.info("demo adapter: step %d of %d, loss %.4f", step, total, loss)

        result = train(config, settings, on_step=progress)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        shutil.move(str(work / "adapter"), adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "../" + base_dir.name  # relative: the pair can be moved together
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return result


def _draw(folder: Path, count: int, first_seed: int, options: dict) -> list:
    """`synth.write_labelled_clips` spread over the CPU's cores (drawing and encoding ~1,000 clips)."""
    from concurrent.futures import ProcessPoolExecutor

    from captioner import synth

    workers = max(1, min(os.cpu_count() or 1, 8))
    share = -(-count // workers)
    starts = range(first_seed, first_seed + count, share)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = pool.map(
            partial(synth.write_labelled_clips, folder, **options),
            [min(share, first_seed + count - start) for start in starts],
            starts,
        )
        return [clip for part in parts for clip in part]


def _init_std(name: str, param: torch.Tensor) -> float:
    if param.dim() == 1 or "position_embedding" in name:  # biases, class/newline embeddings
        return 0.02
    if "embed_tokens" in name:
        return 1.0
    # Unit-variance activations (std 1/sqrt(fan_in)) instead of the usual 0.02: with
    # tiny weights every position looks alike and greedy decoding ignores the video.
    gain = 2.0 if name.startswith("lm_head") else 1.0
    return gain / math.sqrt(param[0].numel())


def _build_tokenizer() -> PreTrainedTokenizerFast:
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
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (VIDEO_TOKEN, IMAGE_TOKEN)]
    )
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


def _save_base(
    model: LlavaNextVideoForConditionalGeneration, config: LlavaNextVideoConfig, base_dir: Path
) -> None:
    # transformers 5 names the CLIP tower "model.vision_tower.embeddings..."; vLLM (and
    # the hub checkpoints) expect "model.vision_tower.vision_model.embeddings...".
    prefix = "model.vision_tower."
    tensors = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
            key = prefix + "vision_model." + key[len(prefix) :]
        tensors[key] = value.detach().to(torch.bfloat16).contiguous()
    save_file(tensors, str(base_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(base_dir)
    GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
    ).save_pretrained(base_dir)


def _save_adapter(
    model: LlavaNextVideoForConditionalGeneration,
    adapter_dir: Path,
    base_dir: Path,
    generator: torch.Generator,
) -> None:
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
    # Record where the base is, relative, so the pair can be moved together.
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "../" + base_dir.name
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
