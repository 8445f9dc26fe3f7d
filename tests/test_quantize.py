"""`captioner quantize`: LoRA merge + 4-bit AWQ of the demo checkpoint, and vLLM serving the result.

vLLM 0.32's CPU build runs AWQ linears with the ``_C::cpu_gemm_wna16`` kernel, which its wheel
compiles only into the AVX-512 kernel libraries (``_C``, ``_C_AVX512``), not into ``_C_AVX2``: on an
AVX2-only CPU (this project's machines) the checkpoint loads but the first forward pass fails. The
vLLM test then registers a plain-torch stand-in for that one op (dequantize, then matmul, from the
layout vLLM itself prepared) so everything around it is tested for real: vLLM reading our files,
its AWQ-to-GPTQ conversion and CPU repacking, and the captioning pipeline.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.quantize import AWQ_PACK_ORDER, PROVENANCE_FILE, QuantizeError, dequantize_awq_gemm, quantize

CLI = [sys.executable, "-m", "captioner.cli"]
LM = "model.language_model.layers."
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # fmt: skip
# Captions that are in none of the calibration files.
HELD_OUT = [
    "해변에 파도가 밀려오고 갈매기가 날아간다. 멀리 하얀 등대가 보인다.",
    "비 내리는 골목길에 우산을 쓴 사람들이 천천히 걸어가고 간판 불빛이 젖은 바닥에 비친다.",
    "눈 덮인 산 아래 작은 마을의 지붕 위로 굴뚝 연기가 피어오른다.",
]


def load(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def unpack_like_vllm(packed):
    """vLLM's reading of an AWQ int32 tensor (auto_awq.py: bit order reversed with [0,4,1,5,2,6,3,7])."""
    import torch

    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF
    return nibbles[:, :, [0, 4, 1, 5, 2, 6, 3, 7]].reshape(packed.shape[0], -1)


@pytest.fixture(scope="module")
def demo(home) -> tuple[Path, Path]:
    return home / "demo" / "base", home / "demo" / "adapter"


@pytest.fixture(scope="module")
def quantized(demo, tmp_path_factory) -> tuple[Path, dict]:
    """The demo checkpoint with its adapter merged and quantized, by the command a user runs."""
    base, adapter = demo
    out = tmp_path_factory.mktemp("awq") / "demo-awq"
    result = subprocess.run(
        [*CLI, "quantize", "--model", str(base), "--adapter", str(adapter), "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout)


@pytest.fixture(scope="module")
def merged(demo) -> dict:
    """The merged weights (float32) of the language model, by PEFT."""
    import torch
    from transformers import LlavaNextVideoForConditionalGeneration

    from captioner.quantize import merge_adapter

    base, adapter = demo
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    model, names = merge_adapter(model, adapter)
    return {"names": names, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def test_merge_is_base_plus_scaled_lora_product(demo, merged):
    import torch
    from safetensors.torch import load_file

    base, adapter = demo
    config = json.loads((adapter / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    targets = sorted(k.removeprefix("base_model.model.").split(".lora_A.")[0] for k in lora if ".lora_A." in k)
    assert merged["names"] == targets and len(targets) == 4  # q_proj and v_proj of both layers

    base_state = load(base)
    for name, weight in merged["state"].items():
        key = name.replace("model.vision_tower.", "model.vision_tower.vision_model.")
        original = base_state[key].float()
        module = name.removesuffix(".weight")
        if module in targets:
            a = lora[f"base_model.model.{module}.lora_A.weight"].float()
            b = lora[f"base_model.model.{module}.lora_B.weight"].float()
            expected = original + scaling * (b @ a)
            torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-5)
            assert (weight - original).norm() > 0.5 * original.norm()  # the adapter really changes it
        else:
            assert torch.equal(weight, original), name


def test_checkpoint_layout_config_and_files(demo, quantized):
    import torch

    base, _ = demo
    out, figures = quantized
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # readable by the serving user
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "bits": 4,
        "group_size": 128,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": ["vision_tower", "multi_modal_projector", "lm_head"],
    }
    base_config = json.loads((base / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "quantization_config"} == base_config
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    assert json.loads((out / PROVENANCE_FILE).read_text())["mean_relative_error"] == figures["mean_relative_error"]

    tensors, base_tensors = load(out), load(base)
    quantized_modules = {f"{LM}{i}.{name}" for i in range(2) for name in LINEARS}
    for module in quantized_modules:
        weight = base_tensors.pop(module + ".weight")
        out_features, in_features = weight.shape
        qweight, qzeros, scales = (tensors.pop(f"{module}.{n}") for n in ("qweight", "qzeros", "scales"))
        assert qweight.dtype == qzeros.dtype == torch.int32 and scales.dtype == torch.float16
        assert qweight.shape == (in_features, out_features // 8)
        assert qzeros.shape == (in_features // 128, out_features // 8)
        assert scales.shape == (in_features // 128, out_features)
    # Everything else keeps the base's keys (hub layout of the vision tower) and dtype; only the
    # norms in front of the quantized layers changed (AWQ folds its scales into them).
    assert set(tensors) == set(base_tensors)
    assert any(k.startswith("model.vision_tower.vision_model.") for k in tensors)
    for key, value in tensors.items():
        assert value.dtype == base_tensors[key].dtype, key
        if "input_layernorm" in key or "post_attention_layernorm" in key:
            assert not torch.equal(value, base_tensors[key]), key
        else:
            assert torch.equal(value, base_tensors[key]), key

    assert figures["quantized_layers"] == len(quantized_modules) == 14
    assert figures["merged_lora_modules"] == 4
    assert figures["calibration_texts"] >= 14 and figures["calibration_tokens"] > 0
    assert figures["checkpoint_bytes_after"] == (out / "model.safetensors").stat().st_size
    assert figures["checkpoint_bytes_after"] < figures["checkpoint_bytes_before"]
    # 4 bits + an fp16 scale and a 4-bit zero per 128 weights, against bf16 weights
    assert figures["linear_bytes_after"] / figures["linear_bytes_before"] == pytest.approx(
        (4 + 16 / 128 + 4 / 128) / 16
    )


def test_t4_profile_accepts_the_quantized_checkpoint(quantized, home):
    from captioner.config import Settings
    from captioner.planning import make_plan

    out, _ = quantized
    plan = make_plan(Settings(model=str(out), tier="t4", home=home))
    assert plan.profile.quantization == "awq" and plan.model == str(out.resolve())


def test_dequantized_weights_are_the_merged_weights_within_4_bit_error(demo, quantized, merged):
    """Read back as vLLM reads it and compared with the merged weights, undoing AWQ's scales.

    AWQ multiplied the input columns of q/k/v and gate/up by s and divided the norm before them by s,
    so s = base norm / saved norm, exactly. v_proj and up_proj also had their output rows divided by
    the scales of o_proj and down_proj, which the files do not hold: those rows are fitted.
    """
    import torch

    base, _ = demo
    out, figures = quantized
    tensors, base_tensors = load(out), load(base)
    errors = {}
    for i in range(2):
        for norm, names in (("input_layernorm", LINEARS[:3]), ("post_attention_layernorm", LINEARS[4:6])):
            s = base_tensors[f"{LM}{i}.{norm}.weight"].float() / tensors[f"{LM}{i}.{norm}.weight"].float()
            for name in names:
                module = f"{LM}{i}.{name}"
                q = unpack_like_vllm(tensors[module + ".qweight"]).float()
                z = unpack_like_vllm(tensors[module + ".qzeros"]).float().repeat_interleave(128, 0)
                scale = tensors[module + ".scales"].float().repeat_interleave(128, 0)
                weight = ((q - z) * scale).t() / s[None, :]
                want = merged["state"][module + ".weight"]
                if name in ("self_attn.v_proj", "mlp.up_proj"):  # least-squares scale per output row
                    weight = weight * ((weight * want).sum(1, keepdim=True) / (weight * weight).sum(1, keepdim=True))
                errors[module] = float((weight - want).norm() / want.norm())
                if module in merged["names"]:  # far from the unmerged base: the adapter is in the weights
                    unmerged = base_tensors[module + ".weight"].float()
                    assert (weight - unmerged).norm() / unmerged.norm() > 5 * errors[module]
                # our own reader agrees with vLLM's bit order
                ours = dequantize_awq_gemm(*(tensors[f"{module}.{n}"] for n in ("qweight", "qzeros", "scales")))
                torch.testing.assert_close(ours, ((q - z) * scale).t())
    # 4-bit with group 128 on Gaussian weights: about 0.1 relative (bf16 rounding of the norms included)
    assert all(0.03 < e < 0.15 for e in errors.values()), errors
    assert 0.03 < figures["mean_relative_error"] < 0.15
    assert max(errors.values()) < figures["max_relative_error"] + 0.01
    assert AWQ_PACK_ORDER == (0, 2, 4, 6, 1, 3, 5, 7)


def _with_outlier_channels(base: Path, dest: Path) -> Path:
    """The demo base with 4 input channels per norm made 16x louder, the next layers 16x quieter there.

    The same function, but with the salient activation channels AWQ exists for: round-to-nearest
    then loses those channels' small weights, AWQ scales them back up before quantizing.
    """
    import shutil

    import torch
    from safetensors.torch import save_file

    shutil.copytree(base, dest)
    tensors = load(base)
    generator = torch.Generator().manual_seed(1)
    for i in range(2):
        for norm, names in (("input_layernorm", LINEARS[:3]), ("post_attention_layernorm", LINEARS[4:6])):
            channels = torch.randperm(128, generator=generator)[:4]
            gamma = tensors[f"{LM}{i}.{norm}.weight"].float()
            gamma[channels] *= 16
            tensors[f"{LM}{i}.{norm}.weight"] = gamma.bfloat16()
            for name in names:
                weight = tensors[f"{LM}{i}.{name}.weight"].float()
                weight[:, channels] /= 16
                tensors[f"{LM}{i}.{name}.weight"] = weight.bfloat16()
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def _round_to_nearest(weight):
    """Plain asymmetric 4-bit, groups of 128 along the input: the baseline AWQ must beat."""
    import torch

    groups = weight.reshape(weight.shape[0], -1, 128)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = (high - low).clamp(min=1e-5) / 15
    zero = torch.round(-low / scale).clamp(0, 15)
    return ((torch.round(groups / scale) + zero).clamp(0, 15) - zero).mul(scale).reshape(weight.shape)


def test_awq_beats_round_to_nearest_where_activations_have_outliers(demo, tmp_path):
    """The activation-aware part works (AutoAWQ's CPU scale search, fixed in captioner.quantize, is in use)."""
    import torch
    from transformers import AutoTokenizer, LlavaNextVideoForConditionalGeneration

    from captioner.prompts import load_prompt, render

    base = _with_outlier_channels(demo[0], tmp_path / "outliers")
    result = quantize(base, tmp_path / "awq")
    tensors = load(tmp_path / "awq")

    def model(state_from: dict | None, rtn: bool = False):
        m = LlavaNextVideoForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
        lm = m.model.language_model
        with torch.no_grad():
            for i in range(2):
                layer = lm.layers[i]
                for name in LINEARS:
                    linear = layer.get_submodule(name)
                    if rtn:
                        linear.weight.copy_(_round_to_nearest(linear.weight))
                    elif state_from is not None:
                        key = f"{LM}{i}.{name}"
                        linear.weight.copy_(
                            dequantize_awq_gemm(*(state_from[f"{key}.{n}"] for n in ("qweight", "qzeros", "scales")))
                        )
                for norm in ("input_layernorm", "post_attention_layernorm"):
                    if state_from is not None:
                        layer.get_submodule(norm).weight.copy_(state_from[f"{LM}{i}.{norm}.weight"].float())
        return m

    tokenizer = AutoTokenizer.from_pretrained(base)
    template = render(load_prompt("detailed-ko"), tokenizer).text.replace("<video>\n", "")

    def logprobs(m) -> torch.Tensor:
        out = []
        for text in HELD_OUT:
            ids = tokenizer(f"{template} {text}", return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logits = m(input_ids=ids).logits.float().log_softmax(-1)
            out.append(logits[0, :-1].gather(-1, ids[0, 1:, None])[:, 0])
        return torch.cat(out)

    reference = logprobs(model(None))
    awq_error = (logprobs(model(tensors)) - reference).abs().mean().item()
    rtn_error = (logprobs(model(None, rtn=True)) - reference).abs().mean().item()
    assert awq_error < 0.8 * rtn_error, (awq_error, rtn_error)  # measured: 0.21 vs 0.40 nats per token
    assert result.adapter is None and result.merged_lora_modules == 0 and result.quantized_layers == 14


# --- vLLM -------------------------------------------------------------------------------------------

# Runs in its own process (vLLM keeps its engine in-process here, see captioner.compat).
VLLM_SCRIPT = r"""
import json, sys, time
from captioner import compat
compat.apply()
import torch
import vllm._custom_ops  # noqa: F401 - loads vLLM's CPU kernel library for this CPU
from vllm import LLM, SamplingParams

quantized, fake, clips, out = sys.argv[1:5]
report = {"native_kernel": hasattr(torch.ops._C, "cpu_gemm_wna16")}
texts = ["푸른 하늘 아래 초록빛 언덕이 완만하게 이어지고, 노란 해가 천천히 떠오른다.",
         "밤의 도시에서 높고 낮은 건물들의 창문이 반짝이고 빨간 차가 달린다."]
ENGINE = dict(dtype="bfloat16", enforce_eager=True, max_model_len=512, block_size=32,
              kv_cache_memory_bytes=1 << 28, limit_mm_per_prompt={"video": 0, "image": 0}, seed=0)


def prompt_logprobs(model):
    started = time.perf_counter()
    llm = LLM(model=model, **ENGINE)
    load_s = time.perf_counter() - started
    outs = llm.generate(texts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    values = [lp[t].logprob for o in outs for t, lp in zip(o.prompt_token_ids[1:], o.prompt_logprobs[1:])]
    del llm
    return values, load_s


if not report["native_kernel"]:
    # Without the kernel, vLLM loads the checkpoint and fails at the first AWQ matmul.
    started = time.perf_counter()
    llm = LLM(model=quantized, **ENGINE)
    report["load_without_kernel_s"] = time.perf_counter() - started
    try:
        llm.generate(texts[:1], SamplingParams(max_tokens=1), use_tqdm=False)
        report["error_without_kernel"] = None
    except Exception as exc:  # noqa: BLE001
        report["error_without_kernel"] = f"{type(exc).__name__}: {exc}"
    del llm
    # The pipeline refuses it up front with a message (exit 2) instead of failing mid-run.
    from captioner.cli import app
    report["run_without_kernel"] = app(["run", clips, "--out", out + "-refused", "--model", quantized,
                                        "--tier", "cpu", "--set", "quantization=awq"], standalone_mode=False)

    def cpu_gemm_wna16(input, q_weight, output, scales, zeros, bias, pack_factor, isa_hint):
        # q_weight as CPUWNA16LinearKernel._process_gptq_weights_w4a16 left it: blocks of 16 output
        # columns, each [in, 16/pack_factor] int32 packed along the output in standard bit order;
        # zeros [groups, out/pack_factor] packed the same way; scales [groups, out].
        words = 16 // pack_factor
        blocks, k = q_weight.shape[0], q_weight.shape[1] // words
        packed = q_weight.view(blocks, k, words).permute(1, 0, 2).reshape(k, blocks * words)
        shifts = torch.arange(0, 32, 32 // pack_factor, dtype=torch.int32)
        q = ((packed.unsqueeze(-1) >> shifts) & 15).reshape(k, -1).float()
        group = k // scales.shape[0]
        z = 8.0 if zeros is None else ((zeros.unsqueeze(-1) >> shifts) & 15).reshape(zeros.shape[0], -1).float()
        z = z if zeros is None else z.repeat_interleave(group, 0)
        result = input.float() @ ((q - z) * scales.float().repeat_interleave(group, 0))
        output.copy_((result if bias is None else result + bias.float()).to(output.dtype))

    library = torch.library.Library("_C", "FRAGMENT")
    library.define("cpu_gemm_wna16(Tensor input, Tensor q_weight, Tensor(a2!) output, Tensor scales, "
                   "Tensor? zeros, Tensor? bias, SymInt pack_factor, str isa_hint) -> ()")
    library.impl("cpu_gemm_wna16", cpu_gemm_wna16, "CPU")

report["awq"], report["awq_load_s"] = prompt_logprobs(quantized)
report["fake"], report["fake_load_s"] = prompt_logprobs(fake)

from captioner.cli import app
app(["run", clips, "--out", out, "--model", quantized, "--tier", "cpu", "--set", "quantization=awq",
     "--sampling", "deterministic"], standalone_mode=False)
print("REPORT " + json.dumps(report))
"""


def _fake_quantized(quantized: Path, dest: Path) -> Path:
    """The same weights as plain bf16 linears (dequantized here): what vLLM must compute from the AWQ files."""
    import shutil

    import torch
    from safetensors.torch import save_file

    shutil.copytree(quantized, dest)
    tensors, plain = load(quantized), {}
    for key, value in tensors.items():
        if key.endswith(".qweight"):
            module = key.removesuffix(".qweight")
            weight = dequantize_awq_gemm(value, tensors[module + ".qzeros"], tensors[module + ".scales"])
            plain[module + ".weight"] = weight.to(torch.bfloat16)
        elif not key.endswith((".qzeros", ".scales")):
            plain[key] = value
    save_file(plain, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((dest / "config.json").read_text())
    del config["quantization_config"]
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_vllm_loads_the_checkpoint_and_captions_with_it(quantized, clip_dir, tmp_path):
    out, _ = quantized
    fake = _fake_quantized(out, tmp_path / "fake")
    run_out = tmp_path / "captions"
    script = tmp_path / "vllm_awq.py"  # a file, not -c: the pipeline's decoder processes re-import __main__
    script.write_text("if __name__ == '__main__':\n" + "\n".join("    " + line for line in VLLM_SCRIPT.splitlines()))
    result = subprocess.run(
        [sys.executable, str(script), str(out), str(fake), str(clip_dir), str(run_out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    if not report["native_kernel"]:
        assert "cpu_gemm_wna16" in report["error_without_kernel"], report["error_without_kernel"]
        assert report["run_without_kernel"] == 2
        assert "only with its AVX-512 kernels (cpu_gemm_wna16)" in result.stderr and str(out) in result.stderr
    # vLLM's reading of the AWQ files computes what the plain dequantized weights compute: the
    # same per-token log-probabilities up to bf16 rounding (a misread layout is off by nats).
    diffs = [abs(a - b) for a, b in zip(report["awq"], report["fake"])]
    assert len(diffs) > 20 and sum(diffs) / len(diffs) < 0.05 and max(diffs) < 0.25, diffs
    assert all(math.isfinite(v) for v in report["awq"])

    summary = json.loads((run_out / "summary.json").read_text())
    assert summary["ok"] == summary["videos"] == 5 and summary["failed"] == 0
    records = [json.loads(line) for line in (run_out / "captions.jsonl").read_text().splitlines()]
    assert all(r["model"] == str(out.resolve()) and r["caption"] and r["output_tokens"] > 0 for r in records)


# --- refusals ---------------------------------------------------------------------------------------


def _mismatched_adapter(adapter: Path, dest: Path) -> Path:
    """The demo adapter as if trained on a model with 64-wide hidden states."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, dest)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    tensors = {k: (v[:, :64].contiguous() if ".lora_A." in k else v) for k, v in tensors.items()}
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    return dest


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing model", "{tmp}/nope: model folder does not exist"),
        ("not llava", "{tmp}/llama: not a LLaVA-NeXT-Video checkpoint (model_type 'llama')"),
        ("quantized model", "{awq}: already quantized (awq)"),
        ("missing adapter", "{tmp}/nope: adapter folder does not exist"),
        ("not an adapter", "{tmp}: not a PEFT LoRA adapter"),
        (
            "mismatched adapter",
            "{tmp}/other: does not fit {base}: model.language_model.layers.0.self_attn.q_proj is [128, 128]",
        ),
        ("out has a checkpoint", "{awq}: output folder already holds a checkpoint"),
        ("out is a file", "{tmp}/file: output path is a file, not a folder"),
        ("missing calibration", "{tmp}/nope.jsonl: calibration file does not exist"),
    ],
)
def test_bad_inputs_stop_with_a_message_naming_the_path(demo, quantized, tmp_path, case, message):
    base, adapter = demo
    awq, _ = quantized
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "file").write_text("x")
    args = {"model": base, "out": tmp_path / "out", "adapter": adapter}
    args.update(
        {
            "missing model": {"model": tmp_path / "nope"},
            "not llava": {"model": tmp_path / "llama"},
            "quantized model": {"model": awq},
            "missing adapter": {"adapter": tmp_path / "nope"},
            "not an adapter": {"adapter": tmp_path},
            "mismatched adapter": {
                "adapter": _mismatched_adapter(adapter, tmp_path / "other") if case == "mismatched adapter" else adapter
            },
            "out has a checkpoint": {"out": awq},
            "out is a file": {"out": tmp_path / "file"},
            "missing calibration": {"calibration": [tmp_path / "nope.jsonl"]},
        }[case]
    )
    with pytest.raises(QuantizeError) as raised:
        quantize(**args)
    assert message.format(tmp=tmp_path, awq=awq, base=base) in str(raised.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_exits_2_with_the_message(demo, tmp_path):
    base, _ = demo
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = subprocess.run(
        [*CLI, "quantize", "--model", str(base), "--out", str(tmp_path / "out")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert f"{tmp_path}/out: output folder is not empty" in result.stderr
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
