"""`captioner train`: the adapter it writes is what vLLM serves, trained on what vLLM sees.

One small training run (six clips) is shared by the tests: the loss falls, the adapter changes
greedy captions, vLLM loads it with no conversion and agrees with HF+PEFT token for token in fp32,
and the training prompt's token ids are the ones vLLM receives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from captioner.config import SAMPLING_PRESETS, Settings
from captioner.demo.scenes import write_clips

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = {  # one per scene of `write_clips`
    "nature": "푸른 하늘 아래 초록빛 언덕이 완만하게 이어지고 노란 해가 왼쪽에서 오른쪽으로 천천히 움직인다.",
    "city": "어두운 밤 도시에 회색 빌딩들이 늘어서 있고 창문에 노란 불빛이 반짝이며 빨간 자동차가 지나간다.",
    "sea": "파란 바다 위로 하얀 파도가 끊임없이 밀려오고 밝은 하늘 아래 물결이 반짝이며 해안으로 부서진다.",
}


def write_refs(path: Path, clips: list[Path]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for clip in clips:
            f.write(json.dumps({"video": clip.name, "references": [CAPTIONS[clip.stem.split("_")[0]]]}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("train-clips")
    clips = write_clips(folder, 6, seconds=1, fps=8, width=96, height=64)
    return folder, write_refs(folder.parent / "train-refs.jsonl", clips)


@pytest.fixture(scope="module")
def trained(home, data, tmp_path_factory):
    from captioner.training import TrainConfig, train

    folder, refs = data
    out = tmp_path_factory.mktemp("adapter") / "ad"
    settings = Settings(model="demo", tier="cpu", home=home)
    config = TrainConfig(refs=refs, videos=[folder], out=out, steps=36, lr=3e-3, dropout=0.0, rank=8, alpha=16)
    return train(config, settings)


@pytest.fixture(scope="module")
def fp32_engine(home, trained):
    """The real vLLM engine in fp32 serving the trained adapter (fp32 so HF and vLLM can agree exactly),
    beside the demo's random adapter and the base model (a multi-adapter run)."""
    from captioner.planning import load_engine, make_plan

    settings = Settings(
        model="demo", adapter=str(trained.out), compare_adapters=["demo", "none"], tier="cpu",
        sampling="deterministic", home=home, profile={"dtype": "float32"},
    )  # fmt: skip
    plan = make_plan(settings)
    return plan, load_engine(plan)


def test_training_lowers_the_loss_and_writes_what_made_it(trained):
    doc = json.loads((trained.out / "training.json").read_text(encoding="utf-8"))
    curve = doc["loss"]["curve"]
    assert len(curve) == trained.steps == 36
    assert np.mean(curve[-6:]) < 0.5 * np.mean(curve[:6])
    assert doc["data"]["clips"] == 6 and len(doc["data"]["hash"]) == 16
    assert doc["prompt"]["name"] == "detailed-ko" and doc["frames"] == 8
    assert doc["hyperparameters"]["rank"] == 8 and doc["libraries"]["peft"]
    assert not (trained.out / "checkpoint").exists() and not (trained.out / ".frames").exists()
    config = json.loads((trained.out / "adapter_config.json").read_text())
    targets = config["target_modules"]
    assert "language_model" in targets and "vision" not in targets


def _greedy_hf(base: Path, adapter: Path, inputs: dict, max_new_tokens: int) -> list[int]:
    import torch
    from peft import PeftModel
    from transformers import LlavaNextVideoForConditionalGeneration

    preset = SAMPLING_PRESETS["deterministic"]
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        out = model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=preset.min_tokens,
            repetition_penalty=preset.repetition_penalty,
        )  # fmt: skip
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_vllm_serves_the_adapter_as_trained(home, data, trained, fp32_engine):
    from transformers import AutoProcessor
    from vllm import SamplingParams

    from captioner.frames import FrameSpec, decode_clip
    from captioner.training.examples import Encoder

    plan, engine = fp32_engine
    processor = AutoProcessor.from_pretrained(plan.model)
    encoder = Encoder(processor, plan.prompt)
    folder, _ = data
    preset = SAMPLING_PRESETS["deterministic"]
    params = SamplingParams(**(preset.model_dump() | {"max_tokens": 60}))
    clips = sorted(folder.glob("*.mp4"))[:3]
    trained_lora = engine._loras[plan.adapters[0].path]  # the engine's request for the trained adapter
    for clip in clips:
        frames = decode_clip(clip, FrameSpec(plan.frames, plan.frame_size)).frames
        request = [{"prompt": plan.prompt.text, "multi_modal_data": {"video": frames}}]
        served = engine.llm.generate(request, params, lora_request=trained_lora, use_tqdm=False)[0]
        base = engine.llm.generate(request, params, use_tqdm=False)[0]
        inputs = encoder.prompt_inputs(frames)
        # The training prompt is token for token what vLLM receives (video placeholder expanded).
        assert inputs["input_ids"][0].tolist() == list(served.prompt_token_ids)
        # HF + PEFT in fp32 generate the same greedy tokens as vLLM with the LoRARequest.
        assert _greedy_hf(Path(plan.model), trained.out, dict(inputs), 60) == list(served.outputs[0].token_ids)
        # The adapter changed what the model says.
        assert list(served.outputs[0].token_ids) != list(base.outputs[0].token_ids)


def test_bad_input_is_refused_with_its_reason_and_nothing_written(home, data, tmp_path):
    from captioner.training import TrainConfig, TrainError, train

    folder, refs = data
    settings = Settings(model="demo", tier="cpu", home=home)

    def refused(match: str, **changes) -> None:
        config = TrainConfig(**({"refs": refs, "videos": [folder], "out": tmp_path / "new"} | changes))
        with pytest.raises(TrainError, match=match):
            train(config, settings)
        assert not (tmp_path / "new").exists()

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refused("references not found", refs=tmp_path / "missing.jsonl")
    refused("no references found", refs=empty)
    other = write_refs(tmp_path / "other.jsonl", [Path("nature_9999.mp4")])
    refused("no training reference names a video.*6 videos without references.*1 references without videos", refs=other)
    refused("folder does not exist", videos=[tmp_path / "nowhere"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match=r"busy: folder holds other files \(notes.txt\)"):
        train(TrainConfig(refs=refs, videos=[folder], out=busy), settings)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    not_llava = tmp_path / "gpt2"
    not_llava.mkdir()
    (not_llava / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(TrainError, match="gpt2.*(not a LLaVA-NeXT-Video|cannot load)"):
        train(TrainConfig(refs=refs, videos=[folder], out=tmp_path / "new"), Settings(model=str(not_llava), tier="cpu", home=home))
    assert not (tmp_path / "new").exists()


def test_a_killed_training_run_resumes(home, data, tmp_path):
    folder, refs = data
    out = tmp_path / "killed"
    command = [
        sys.executable, "-m", "captioner.cli", "train", str(folder), "--refs", str(refs), "--out", str(out),
        "--model", "demo", "--tier", "cpu", "--steps", "40", "--save-every", "4", "--rank", "8",
    ]  # fmt: skip
    env = os.environ | {"CAPTIONER_HOME": str(home)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    state = out / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "training.json").exists()

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr
    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    doc = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert doc["steps"] == 40 and len(doc["loss"]["curve"]) == 40
    # Checkpoints are written every 4 steps (--save-every) and at every epoch's end.
    resumed, epoch = doc["resumed_at_step"], doc["steps_per_epoch"]
    assert resumed >= 4 and (resumed % 4 == 0 or resumed % epoch == 0)
    fresh = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert fresh.returncode == 2 and "holds a trained adapter" in fresh.stderr


def test_several_adapters_caption_each_clip_once_decoded_with_every_adapter(home, data, trained, fp32_engine, tmp_path):
    from captioner.captioning import CaptionStats, caption_videos, pending_work
    from captioner.evaluation.command import evaluate
    from captioner.frames import FrameDecoder, decode_clip
    from captioner.records import CAPTIONS_FILE, RecordWriter, read_output

    plan, engine = fp32_engine
    folder, refs = data
    videos = sorted(folder.glob("*.mp4"))
    out = tmp_path / "out"
    out.mkdir()
    decoded: list[str] = []

    class CountingDecoder(FrameDecoder):
        def submit(self, path):
            decoded.append(str(path))
            return super().submit(path)

    def caption(todo: dict) -> None:
        with CountingDecoder(plan.frame_spec, 2) as decoder, RecordWriter(out / CAPTIONS_FILE) as writer:
            caption_videos(list(todo), writer, plan, lambda: engine, CaptionStats(), decoder=decoder, needs=todo)

    # One clip already has the trained adapter's record: it needs only the two others.
    done = videos[0]
    (out / CAPTIONS_FILE).write_text(plan.made().stamp(done, status="ok", caption="있다", error=None).to_json() + "\n")
    todo = pending_work(videos, out, plan)
    assert [a.name for a in todo[done]] == ["demo", None] and len(todo) == len(videos)
    caption(todo)
    assert sorted(decoded) == sorted(map(str, videos))  # each clip decoded once for all its adapters
    records = read_output(out)
    by_adapter: dict = {}
    for record in records[1:]:
        by_adapter.setdefault(record["adapter"], []).append(Path(record["video"]).name)
    assert {a: sorted(v) for a, v in by_adapter.items()} == {
        trained.out.name: sorted(v.name for v in videos[1:]),
        "demo": sorted(v.name for v in videos),
        None: sorted(v.name for v in videos),
    }
    assert all(r["status"] == "ok" and r["caption"] for r in records)
    # The three adapters say different things about the same frames.
    by_video: dict = {}
    for record in records[1:]:
        by_video.setdefault(record["video"], set()).add(record["caption"])
    assert all(len(captions) == (2 if video == str(done) else 3) for video, captions in by_video.items())
    assert pending_work(videos, out, plan) == {}
    # Each adapter's caption is the one it writes alone: mixing adapters in a batch changes nothing.
    clip = videos[1]
    frames = decode_clip(clip, plan.frame_spec).frames
    sampling = plan.settings.sampling_params()
    for adapter in plan.adapters:
        alone = engine.caption([frames], plan.prompt, sampling, adapters=[adapter])[0].text
        assert alone == next(r["caption"] for r in records if r["video"] == str(clip) and r["adapter"] == adapter.name)

    # eval compares two adapters of the one run.
    ev = evaluate(out, refs, against=out, adapter="demo", against_adapter=None)
    assert ev.run.summary["counts"]["scored"] == len(videos) == ev.baseline.summary["counts"]["scored"]
    assert ev.comparison["baseline"] == f"{out} (adapter none)"
    from captioner.evaluation.references import InputError

    with pytest.raises(InputError, match="no records of adapter 'other'.*adapters: ad, demo, none"):
        evaluate(out, refs, adapter="other")


def test_clips_that_fail_to_decode_are_skipped_with_their_reason(data, tmp_path):
    from captioner.frames import FrameSpec
    from captioner.training.examples import Pair, decode_pairs

    folder, _ = data
    good = sorted(folder.glob("*.mp4"))[0]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[:300])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    pairs = [Pair(p, p.stem, ("하늘",)) for p in (good, cut, empty)]
    decoded = decode_pairs(pairs, FrameSpec(8, 64), tmp_path / "frames")
    assert [p.video for p in decoded.pairs] == [good] and decoded.frames(0).shape[0] == 8
    reasons = dict(decoded.skipped)
    assert set(reasons) == {str(cut), str(empty)}
    assert "empty" in reasons[str(empty)] and reasons[str(cut)]
    again = decode_pairs(pairs[:1], FrameSpec(8, 64), tmp_path / "frames")  # the cached frames are reused
    assert again.files == decoded.files
