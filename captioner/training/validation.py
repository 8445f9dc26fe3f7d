"""Validation METEOR: greedy captions of the held-out clips, scored as `captioner eval` scores them."""

from __future__ import annotations

from typing import Any

from captioner.config import SAMPLING_PRESETS
from captioner.training.examples import DecodedSet, Encoder
from captioner.training.lora import Device

VALIDATION_PRESET = "deterministic"  # greedy, as `captioner eval` runs are made


def validate(model: Any, encoder: Encoder, data: DecodedSet, device: Device, batch: int = 8) -> dict[str, Any]:
    """Greedy captions of the validation clips (the `deterministic` preset), scored as `captioner eval` scores.

    Every clip's prompt has the same length (same prompt, same frame count), so clips are batched
    without padding.
    """
    import torch

    from captioner.evaluation import scores
    from captioner.evaluation.morphemes import get_tokenizer

    preset = SAMPLING_PRESETS[VALIDATION_PRESET]
    model.eval()
    captions: list[str] = []
    with torch.no_grad():
        for start in range(0, len(data.pairs), batch):
            inputs = [encoder.prompt_inputs(data.frames(i)) for i in range(start, min(start + batch, len(data.pairs)))]
            ids = torch.cat([x["input_ids"] for x in inputs]).to(device.name)
            pixels = torch.cat([x["pixel_values_videos"] for x in inputs]).to(device.name)
            if device.dtype != "float32":
                pixels = pixels.to(getattr(torch, device.dtype))
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values_videos=pixels,
                do_sample=False,
                max_new_tokens=preset.max_tokens,
                min_new_tokens=preset.min_tokens,
                repetition_penalty=preset.repetition_penalty,
                pad_token_id=encoder.tokenizer.pad_token_id,
            )
            captions += encoder.tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
    morphemes = get_tokenizer()
    values = []
    for caption, pair in zip(captions, data.pairs):
        refs = [morphemes.tokenize(r) for r in pair.references]
        values.append(scores.meteor(refs, morphemes.tokenize(caption.strip())))
    return {
        "meteor": round(sum(values) / len(values), 4),
        "clips": len(values),
        "example": {"video": data.pairs[0].stem, "caption": captions[0].strip()} if captions else None,
    }
