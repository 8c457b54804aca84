"""benchmarks/model_shape.py: a heavily scaled-down Qwen2.5 shape runs one trainer step on the CPU with
neither vLLM nor bitsandbytes importable, and reports every phase and memory term (fields, not timings)."""

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
                                               "activations", "logits", "LoRA weights + grads + AdamW"]
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
