"""benchmarks/model_shape.py and benchmarks/gpu_check.py (built on it): a heavily scaled-down Qwen2.5 shape
runs trainer steps on the CPU with neither vLLM nor bitsandbytes importable, and reports every phase and
memory term (fields, not timings)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "model_shape.py"
# vLLM and bitsandbytes blocked: the benchmark must run on a machine with only torch, transformers, peft.
BARE = ("import runpy, sys; sys.modules['vllm'] = None; sys.modules['bitsandbytes'] = None; "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
SMALL = ["--scale", "0.05", "--warmup", "0", "--set", "train.micro_batch_size=2",
         "--set", "data.max_prompt_tokens=24", "--set", "rollout.max_new_tokens=40", "--set", "intro.logits_chunk_size=16"]


def load_module():
    spec = importlib.util.spec_from_file_location("model_shape", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scaled_keeps_head_dim_and_divides_heads():
    from intro_lite.doctor.architectures import ARCHITECTURES

    ms = load_module()
    for name, _ in ms.SHAPES.values():
        arch = ARCHITECTURES[name]
        assert ms.scaled(arch, 1.0) == arch
        for f in (0.05, 0.3, 0.5):
            a = ms.scaled(arch, f)
            hd = arch["hidden_size"] // arch["num_attention_heads"]
            assert a["head_dim"] == hd and a["hidden_size"] == a["num_attention_heads"] * hd
            assert a["num_attention_heads"] % a["num_key_value_heads"] == 0
            assert a["vocab_size"] < arch["vocab_size"] and a["num_hidden_layers"] <= arch["num_hidden_layers"]
    a = ms.scaled(ARCHITECTURES["Qwen/Qwen2.5-7B"], 0.5)
    assert (a["num_hidden_layers"], a["num_attention_heads"], a["num_key_value_heads"]) == (14, 14, 2)


def test_scaled_shape_runs_one_step_without_vllm_or_bitsandbytes(tmp_path):
    out = tmp_path / "shape.json"
    run = subprocess.run([sys.executable, "-c", BARE, str(SCRIPT), "--shape", "qwen2.5-0.5b", *SMALL, "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "bitsandbytes does not import" in run.stdout  # the recipe's nf4 falls back, and says so
    assert "load average at start" in run.stdout and "load average at end" in run.stdout
    r = json.loads(out.read_text())
    assert r["shape"] == "qwen2.5-0.5b" and r["architecture"] == "Qwen/Qwen2.5-0.5B" and r["quantization"] == "none"
    assert r["device"] == "cpu" and r["dtype"] == "float32" and r["memory_measure"].startswith("VmHWM")
    assert r["micro_batch"] == dict(rows=2, prompt_tokens=24, posterior_prompt_tokens=24 + load_module().HINT_TOKENS,
                                    rationale_tokens=40, chunk_size=16, n_candidates=5)
    assert r["model_config"]["vocab_size"] < 151_936 and r["parameters"] > r["lora_parameters"] > 0
    assert [p["phase"].split(" (")[0] for p in r["phases"]] == [
        "policy pass", "answer-conditioned pass", "InTRO loss", "backward", "optimizer step"]
    for p in r["phases"]:
        assert p["seconds"] > 0 and p["peak_bytes"] >= p["start_bytes"] > 0
    assert [t["term"] for t in r["terms"]] == ["vLLM base weights", "trainer base weights", "vLLM KV cache",
                                               "activations", "logits", "LoRA weights + grads + AdamW",
                                               "teacher's LoRA copy"]  # the recipe's ema teacher (not exercised here)
    measured = {t["term"]: t for t in r["terms"] if t["measured_bytes"] is not None}
    assert set(measured) == {"trainer base weights", "activations", "logits", "LoRA weights + grads + AdamW"}
    for t in measured.values():
        assert t["estimate_bytes"] > 0 and t["ratio"] == t["measured_bytes"] / t["estimate_bytes"]
    # LoRA's bytes are counted, not sampled: fp32 weight + gradient + two AdamW moments per parameter.
    assert measured["LoRA weights + grads + AdamW"]["measured_bytes"] == 16 * r["lora_parameters"]
    assert measured["LoRA weights + grads + AdamW"]["ratio"] == 1.0
    assert r["loss"] == r["loss"] and r["trainer_total"]["measured_bytes"] > 0  # finite loss (not NaN)
    assert len(r["load_avg_start"]) == 3 and len(r["load_avg_end"]) == 3


def test_nf4_without_bitsandbytes_is_a_one_line_error():
    run = subprocess.run([sys.executable, "-c", BARE, str(SCRIPT), *SMALL, "--quantization", "nf4"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == "model_shape: --quantization nf4 needs bitsandbytes (pip install bitsandbytes)"


GPU_CHECK = REPO / "benchmarks" / "gpu_check.py"
PHASES = ["policy pass (grad through LoRA)", "answer-conditioned pass (no_grad)", "InTRO loss (chunked)", "backward",
          "optimizer step (clip + AdamW)"]


def test_gpu_check_scaled_on_the_cpu(tmp_path):
    # benchmarks/gpu_check.py as its CPU mode runs it, with vLLM and bitsandbytes blocked: every phase,
    # the peak-vs-estimate table with its ratios, a finite MFU, the dtype gap, and the NF4 part skipped.
    import math

    out = tmp_path / "check.json"
    run = subprocess.run([sys.executable, "-c", BARE, str(GPU_CHECK), "--device", "cpu", "--scale", "0.05",
                          "--steps", "2", "--peak-size", "256", *SMALL[4:], "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    text = run.stdout
    for line in ("device: CPU", "bitsandbytes not importable", "load average at start", "load average at end",
                 "=== NF4 base: skipped: bitsandbytes not importable ===", "bf16 step 1/2 (warm-up)",
                 "bf16 step 2/2 (measured)", "trainer-side dtype gap", "measured/estimate: trainer base weights"):
        assert line in text, line
    for phase in PHASES:
        assert text.count(phase) >= 4, phase  # two progress lines, the memory table and the FLOPs table
    for term in ("trainer base weights", "activations", "logits", "LoRA weights + grads + AdamW"):
        assert any(line.startswith(term) and len(line.split()) >= 3 for line in text.splitlines()), term
    mfu = float(text.split("MFU ")[1].split("%")[0])
    assert math.isfinite(mfu) and mfu > 0

    r = json.loads(out.read_text())
    assert r["nf4"] == {"skipped": "bitsandbytes not importable"}
    assert r["environment"]["bitsandbytes"].startswith("not importable") and r["environment"]["torch"]
    b = r["bf16"]
    assert b["dtype"] == "bfloat16" and b["quantization"] == "none" and b["device"] == "cpu"
    assert b["warmup_steps"] == 1 and b["steps"] == 1 and len(b["warmup_phases"][0]) == len(PHASES)
    assert [p["phase"] for p in b["phases"]] == PHASES
    assert math.isfinite(b["mfu"]) and 0 < b["mfu"] and b["hfu"] > b["mfu"]
    assert b["peak"]["used_flops_per_s"] == max(b["peak"]["before_flops_per_s"], b["peak"]["after_flops_per_s"]) > 0
    assert b["flops"]["total"] == sum(v for k, v in b["flops"].items() if k not in ("total", "recompute"))
    ratios = {t["term"]: t["ratio"] for t in b["terms"] if t["ratio"] is not None}
    assert set(ratios) == {"trainer base weights", "activations", "logits", "LoRA weights + grads + AdamW"}
    assert all(math.isfinite(x) and x > 0 for x in ratios.values())
    gap = b["dtype_gap"]
    assert gap["tokens"] == 2 * 40 and gap["dtype"] == "bfloat16"
    assert 0 < gap["mean"] <= gap["max"] < 1  # bf16 differs from fp32, but slightly


def test_gpu_check_body_params_is_the_models_projection_weights():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from intro_lite.doctor.architectures import ARCHITECTURES

    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    arch = gc.ms.scaled(ARCHITECTURES["Qwen/Qwen2.5-1.5B"], 0.05)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in arch.items() if k != "model_type"}))
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert gc.body_params(arch) == linear
    f = gc.step_flops(arch, 0, rows=1, prompt=1, rationale=1)
    q = arch["num_attention_heads"] * arch["head_dim"]
    assert f["policy pass"] == 2 * linear * 2 + arch["num_hidden_layers"] * 2 * q * 2 * 2  # 2 tokens, causal
    assert f["InTRO loss"] == 6 * arch["hidden_size"] * arch["vocab_size"]


def test_gpu_check_keeps_the_bf16_results_when_the_nf4_part_fails(tmp_path):
    # bitsandbytes reported importable, then the NF4 part fails as it starts: the bf16 part is printed and
    # in the JSON, the failure is named, and the exit status says it.
    code = ("import sys; sys.modules['vllm'] = None; "
            f"sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import gpu_check as g; ms = g.ms\n"
            "env, shape_config = g.environment, ms.shape_config\n"
            "g.environment = lambda device: dict(env(device), bitsandbytes='0.0.0-stand-in')\n"
            "def nf4_fails(shape, recipe, sets, quantization):\n"
            "    if quantization == 'nf4': raise RuntimeError('no 4-bit kernel here')\n"
            "    return shape_config(shape, recipe, sets, quantization)\n"
            "ms.shape_config = nf4_fails; sys.exit(g.main(sys.argv[1:]))")
    out = tmp_path / "check.json"
    run = subprocess.run([sys.executable, "-c", code, "--device", "cpu", "--scale", "0.05",
                          "--steps", "2", "--peak-size", "256", *SMALL[4:], "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-2000:]
    assert "=== NF4 base: FAILED: RuntimeError: no 4-bit kernel here (the bf16 results above stand) ===" in run.stdout
    assert run.stdout.index("=== bf16 base") < run.stdout.index("MFU ") < run.stdout.index("NF4 base: FAILED")
    r = json.loads(out.read_text())
    assert r["nf4"] == {"error": "RuntimeError: no 4-bit kernel here"} and r["bf16"]["mfu"] > 0
