"""vLLM-vs-trainer logprob agreement per dtype, over a few hundred sampled tokens: what the doctor's
parity threshold (``intro_lite.doctor.smoke.PARITY_TOL``) is set from.

    python benchmarks/dtype_parity.py                                  # recipes/tiny.toml, float32 and bfloat16
    python benchmarks/dtype_parity.py --dtypes bfloat16 --prompts 16 --samples 2 --json out.json

For each dtype: the recipe's model (unquantised, as the doctor's parity row compares it) with a fixed
random LoRA adapter (lora_A and lora_B ~ --scale·N(0, 1), seed 0; a fresh adapter's B = 0 would only test
the base), a vLLM engine built as ``train`` builds it (``make_engine``) serving that adapter, rollouts at
temperature 1 on the recipe's first prompts, and the trainer's logprobs of the same tokens
(``smoke.trainer_logprobs``). Prints max / p99 / median |Δlogprob| over every sampled token, and the
same with the adapter off on the trainer side (the adapter's own effect, which parity must be far below).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def random_adapter(cfg, model_path: str, out: Path, scale: float) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    from intro_lite.policy import load_policy, save_adapter

    c = copy.deepcopy(cfg)
    c.model.dtype, c.model.quantization = "float32", "none"
    model, _ = load_policy(c, model_path)
    save_adapter(model, out)
    del model
    weights = load_file(str(out / "adapter_model.safetensors"))
    g = torch.Generator().manual_seed(0)
    save_file({k: scale * torch.randn(v.shape, generator=g) for k, v in weights.items()},
              str(out / "adapter_model.safetensors"))
    return out


def measure(cfg, model_path: str, adapter: Path, dtype: str, prompts: int, samples: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from intro_lite.data.problems import encode_prompts, load_problems, render_prompt
    from intro_lite.doctor.smoke import trainer_logprobs
    from intro_lite.policy import load_adapter_weights, load_policy
    from intro_lite.train.loop import make_engine

    c = copy.deepcopy(cfg)
    c.model.dtype, c.model.quantization, c.lora.init_adapter = dtype, "none", ""
    tok = AutoTokenizer.from_pretrained(model_path)
    problems = load_problems(c.data)[:prompts]
    _, ids = encode_prompts(tok, [render_prompt(c.data.prompt_template, p) for p in problems], c.data.chat_template)
    engine = make_engine(c, model_path)
    try:  # rollouts with the adapter, then of the base alone (vLLM's LoRA path vs its base path)
        engine.set_adapter(adapter)
        with_adapter = engine.generate(ids, n=samples, temperature=1.0, max_new_tokens=c.rollout.max_new_tokens, seed=1)
        engine.set_adapter(None)
        base_only = engine.generate(ids, n=samples, temperature=1.0, max_new_tokens=c.rollout.max_new_tokens, seed=2)
        lora_mode = engine.lora_mode
    finally:
        engine.close()
    flat = lambda groups: [(p, s) for p, g in zip(ids, groups) for s in g if len(s.token_ids)]  # noqa: E731
    pairs, base_pairs = flat(with_adapter), flat(base_only)
    vllm_lp = lambda ps: torch.cat([torch.tensor(s.logprobs, dtype=torch.float64) for _, s in ps])  # noqa: E731
    model, tok = load_policy(c, model_path)
    load_adapter_weights(model, adapter)
    ours = torch.cat(trainer_logprobs(model, pairs, tok.pad_token_id)).double()
    with model.disable_adapter():
        off = torch.cat(trainer_logprobs(model, pairs, tok.pad_token_id)).double()
        base = torch.cat(trainer_logprobs(model, base_pairs, tok.pad_token_id)).double()
    del model
    gc.collect()
    d, d_off, d_base = (ours - vllm_lp(pairs)).abs(), (off - vllm_lp(pairs)).abs(), (base - vllm_lp(base_pairs)).abs()
    q = lambda t, p: float(torch.quantile(t, p))  # noqa: E731
    return dict(dtype=dtype, lora_mode=lora_mode, tokens=int(d.numel()), sequences=len(pairs),
                max=float(d.max()), p99=q(d, 0.99), median=q(d, 0.5), mean=float(d.mean()),
                base_tokens=int(d_base.numel()), base_max=float(d_base.max()), base_p99=q(d_base, 0.99),
                base_median=q(d_base, 0.5), adapter_off_max=float(d_off.max()), adapter_off_median=q(d_off, 0.5))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "tiny.toml"))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--scale", type=float, default=0.05, help="adapter weights ~ scale * N(0, 1) (the doctor's 0.05)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    from intro_lite.config import load_config
    from intro_lite.doctor import resolve_model

    cfg = load_config(args.recipe, args.set)
    model_path = resolve_model(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="dtype-parity-"))
    results = []
    try:
        adapter = random_adapter(cfg, model_path, tmp / "adapter", args.scale)
        for dtype in args.dtypes.split(","):
            r = measure(cfg, model_path, adapter, dtype, args.prompts, args.samples)
            results.append(r)
            print(f"{dtype:<9} ({r['lora_mode']}): {r['tokens']} tokens in {r['sequences']} rollouts: |vLLM - trainer| "
                  f"max {r['max']:.2e}, p99 {r['p99']:.2e}, median {r['median']:.2e}, mean {r['mean']:.2e}; "
                  f"adapter off: max {r['adapter_off_max']:.2e}, median {r['adapter_off_median']:.2e}; base alone "
                  f"(no adapter either side, {r['base_tokens']} tokens): max {r['base_max']:.2e}, "
                  f"p99 {r['base_p99']:.2e}, median {r['base_median']:.2e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        for r in results:
            r["adapter_scale"] = args.scale
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
