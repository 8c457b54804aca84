"""`intro-lite doctor`: the memory estimate against hand-computed numbers, and the whole command on the test preset."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from intro_lite.cli import app
from intro_lite.config import load_config
from intro_lite.doctor.memory import estimate_memory

# Qwen2.5-1.5B's config.json, the numbers that matter (1,543,714,304 parameters).
QWEN25_15B = {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
              "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
              "max_position_embeddings": 131072}
GiB = 1 << 30


def paper_cfg():
    # recipes/qwen2.5-1.5b.toml's numbers, without its data files (not in every checkout).
    return load_config(None, ["lora.rank=64", "lora.alpha=128.0", "model.quantization=nf4", "rollout.group_size=4",
                              "train.prompts_per_step=128", "train.micro_batch_size=4", "rollout.max_new_tokens=1536",
                              "rollout.max_model_len=2560", "rollout.gpu_memory_utilization=0.45", "data.max_prompt_tokens=512"])


def test_estimate_for_qwen25_15b_by_hand():
    terms = {name: b for name, b, _ in estimate_memory(paper_cfg(), QWEN25_15B)}
    # Per layer: q 1536*1536 + k, v 1536*256 each + o 1536*1536 + MLP 3*1536*8960 = 46,792,704 linear weights;
    # q/k/v biases 1536 + 2*256; two norms 2*1536. Embeddings 151936*1536 (tied: no separate lm_head) + final norm.
    linear = 28 * 46_792_704
    other = 151_936 * 1536 + 28 * (1536 + 512) + 28 * 2 * 1536 + 1536
    assert linear + other == 1_543_714_304
    assert terms["vLLM base weights"] == 1_543_714_304 * 2 == 3_087_428_608  # bf16
    # NF4: half a byte per linear weight + an 8-bit absmax per 64 + an fp32 absmax per 256*64; the rest stays 16-bit.
    assert terms["trainer base weights"] == linear // 2 + linear // 64 + linear * 4 // (64 * 256) + other * 2 == 1_142_926_720
    # LoRA rank 64 on all 7 linears: r * (in + out) per module, 28 layers; fp32 weight + grad + 2 AdamW moments.
    lora = 28 * 64 * ((1536 + 1536) * 2 + (1536 + 256) * 2 + (1536 + 8960) * 3)
    assert lora == 73_859_072
    assert terms["LoRA weights + grads + AdamW"] == lora * 16 == 1_181_745_152
    # KV cache for every rollout at once: G*P = 512 sequences x 2560 tokens x (K and V, 28 layers, 2 kv heads x 128) x 2 bytes.
    assert terms["vLLM KV cache"] == 512 * 2560 * 2 * 28 * 256 * 2
    # Checkpointed activations: 4 rows x (512 + 1536) tokens x (28 layer inputs x 1536 + one layer's
    # 2*1536 + 2*1536 + 3*256 + 4*8960) x 2 bytes.
    assert terms["activations"] == 4 * 2048 * (28 * 1536 + 42_752) * 2


def test_estimate_with_a_gpu_and_the_largest_term():
    cfg = paper_cfg()
    on_24g = estimate_memory(cfg, QWEN25_15B, gpu_total_bytes=24 * GiB)
    terms = {name: b for name, b, _ in on_24g}
    # On a GPU, vLLM reserves gpu_memory_utilization of it, weights included: the KV cache gets the rest.
    assert terms["vLLM KV cache"] == int(0.45 * 24 * GiB) - 3_087_428_608
    # Full [B, T, V] logits: 4 rows x 1536 positions x vocab x 4 bytes x 5 (policy and answer-conditioned
    # fp32 logits, a log-softmax of each, one loss temporary) = 17.4 GiB, the largest term by far.
    full = dataclasses.replace(cfg, intro=dataclasses.replace(cfg.intro, logits_chunk_size=0))
    on_24g_full = estimate_memory(full, QWEN25_15B, gpu_total_bytes=24 * GiB)
    assert dict((n, b) for n, b, _ in on_24g_full)["logits"] == 4 * 1536 * 151_936 * 4 * 5
    assert max(on_24g_full, key=lambda t: t[1])[0] == "logits"
    if getattr(cfg.intro, "logits_chunk_size", 0):  # InTRO's position-chunked loss: ~4 [chunk, V] fp32 buffers
        assert terms["logits"] == cfg.intro.logits_chunk_size * 151_936 * 4 * 4
        assert max(on_24g, key=lambda t: t[1])[0] == "vLLM KV cache"
    # Untied embeddings add an lm_head of the same size, in both bases.
    untied = {name: b for name, b, _ in estimate_memory(cfg, {**QWEN25_15B, "tie_word_embeddings": False})}
    assert untied["vLLM base weights"] - terms["vLLM base weights"] == 151_936 * 1536 * 2
    assert untied["trainer base weights"] - terms["trainer base weights"] == 151_936 * 1536 * 2


def rows(output: str) -> dict[str, tuple[str, str]]:
    """{check: (status, detail)} from the doctor's table."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 3 and cells[1] in ("ok", "warn", "fail"):
            found[cells[0]] = (cells[1], cells[2])
    return found


@pytest.mark.slow
def test_doctor_on_the_test_preset(tiny_assets):
    # sft: the test preset gets ~no rollout right, so an InTRO step would train nothing and leave
    # AdamW without state; with SFT the round trip restores real optimizer moments.
    env = {**os.environ, "COLUMNS": "400", "VLLM_LOGGING_LEVEL": "ERROR"}
    cmd = [sys.executable, "-m", "intro_lite.cli", "doctor", "recipes/tiny.toml", "--set", "model.name_or_path=tiny-test",
           "--set", "data.source=tiny-test", "--set", "objective=sft"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    got = rows(out.stdout)
    expected = ["python", "torch", "transformers", "peft", "bitsandbytes", "vllm", "math-verify", "device", "vLLM import",
                "bitsandbytes NF4", "host memory", "model", "data", "context length", "vLLM engine", "training step",
                "hot-swap rollout", "save -> resume", "NF4 trainer vs vLLM", "logprob parity", "memory estimate"]
    assert list(got) == expected, out.stdout
    assert all(got[name][0] == "ok" for name in expected), out.stdout
    assert "gradient reaches the LoRA weights" in got["bitsandbytes NF4"][1]
    assert "trained adapter" in got["hot-swap rollout"][1]
    assert re.search(r"[1-9]\d* optimizer tensors, .* identical", got["save -> resume"][1]), got["save -> resume"]
    parity = float(re.search(r"max \|vLLM - trainer\| = (\S+) over", got["logprob parity"][1]).group(1))
    assert parity < 1e-3
    largest = re.search(r"largest term: (.+) \(", got["memory estimate"][1]).group(1)
    assert largest in {"vLLM base weights", "trainer base weights", "vLLM KV cache", "activations", "logits",
                       "LoRA weights + grads + AdamW"}
    assert f"largest term: {largest}" in out.stdout.split("Peak GPU memory estimate")[1]  # the memory table names it too


def test_doctor_without_the_gpu_a_recipe_asks_for_and_bad_recipe_exit_2(tiny_assets, monkeypatch):
    # No CUDA here: asking for it fails the device-dependent checks, and the machine cannot run the recipe.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also where the tests run on a GPU
    result = CliRunner().invoke(app, ["doctor", "recipes/tiny.toml", "--set", "model.name_or_path=tiny-test",
                                      "--set", "data.source=tiny-test", "--set", "model.device=cuda", "--skip-smoke"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    got = rows(result.output)
    assert got["device"] == ("fail", "RuntimeError: model.device = 'cuda' but no CUDA device is available")
    assert got["smoke test"][0] == "warn" and got["torch"][0] == "ok" and got["data"][0] == "ok"
    assert result.output.strip().splitlines()[-3:-1] == [
        "error: this machine cannot run recipes/tiny.toml:", "GPU: no CUDA device here, and this recipe (model "
        "tiny-test) expects one"], result.output
    assert result.output.strip().splitlines()[-1].startswith("would fit: 24 GB GPU: peak ~")
    bad = CliRunner().invoke(app, ["doctor", "nope.toml"], env={"COLUMNS": "400"})
    assert bad.exit_code == 2 and bad.output.strip() == "error: nope.toml: file not found", bad.output


def test_doctor_on_a_recipe_that_does_not_fit_its_model_exits_2(tiny_assets):
    # The same one line `train` prints (it used to be a `fail` row and exit 1): a bad recipe, not a bad machine.
    result = CliRunner().invoke(app, ["doctor", "recipes/tiny.toml", "--set", "model.name_or_path=tiny-test",
                                      "--set", "rollout.max_model_len=1024", "--skip-smoke"], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: rollout.max_model_len = 1024 exceeds {tiny_assets.model_dir}'s "
                                     "max_position_embeddings (512)")


def test_doctor_on_a_machine_that_cannot_serve_the_paper_recipe(tmp_path):
    # No GPU, no network, no cached model: one line each for what is missing and what would fit, exit 2.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "400", "VLLM_LOGGING_LEVEL": "ERROR"}
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-m", "intro_lite.cli", "doctor", "recipes/qwen2.5-1.5b.toml"], env=env,
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "shared" not in text
    got = rows(out.stdout)
    assert got["device"][0] == "fail" and got["model"][0] == "fail" and got["data"] == (
        "ok", "8886 problems from math-l3-5 (8888 records read)")
    assert got["smoke test"] == ("warn", "skipped: this machine cannot run the recipe (below)")
    lines = out.stderr.strip().splitlines()
    assert lines[-4] == "error: this machine cannot run recipes/qwen2.5-1.5b.toml:", text[-3000:]
    assert lines[-3] == ('GPU: no CUDA device here, and this recipe (model Qwen/Qwen2.5-1.5B) expects one; '
                         'set model.device = "cpu" to run on the CPU anyway (slow)')
    assert lines[-2] == (f"model weights: Qwen/Qwen2.5-1.5B is not in the Hugging Face cache ({tmp_path / 'hf' / 'hub'}) "
                         "and the hub is offline (HF_HUB_OFFLINE=1): run `hf download Qwen/Qwen2.5-1.5B` where there "
                         "is network (with the same HF_HOME), or set model.name_or_path to a local copy")
    assert re.fullmatch(r"would fit: 24 GB GPU: peak ~[\d.]+ GiB, fits .*; 80 GB GPU: peak ~[\d.]+ GiB, fits .*", lines[-1])


def test_doctor_data_check_names_what_is_missing(tmp_path):
    from intro_lite.config import load_config
    from intro_lite.doctor.serve import data_check

    cfg = load_config(None, ["data.source=tiny-test"])
    cfg.data.source = str(tmp_path / "gone.jsonl")  # as if it went away after the recipe was validated
    status, detail, missing = data_check(cfg)
    assert status == "fail" and missing == detail == f"data.source: file not found: {tmp_path / 'gone.jsonl'}"
