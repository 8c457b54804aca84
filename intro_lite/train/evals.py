"""Held-out scores during training: before, every `eval.every` steps and after, into eval.jsonl."""

from __future__ import annotations

import dataclasses
import json

from intro_lite.config import Config
from intro_lite.data.benchmarks import load_benchmark
from intro_lite.data.problems import encode_prompts, render_prompt
from intro_lite.eval.score import merge_scores, score
from intro_lite.io import append_jsonl, read_jsonl_log, write_atomic
from intro_lite.train import dist, faults


def run_eval(cfg: Config, engine, grader, tokenizer, label: str, step: int) -> dict | None:
    """Held-out score through the eval command's loader: a named benchmark (its gold rule), `tiny`, or a file.
    Under data parallel each rank scores a contiguous share (problem i keeps its seeds), rank 0 writes the sum."""
    if not cfg.eval.source:
        return None
    problems = load_benchmark(cfg.eval.source, limit=cfg.eval.limit)
    _, ids = encode_prompts(tokenizer, [render_prompt(cfg.data.prompt_template, p) for p in problems],
                            cfg.data.chat_template)  # rendered as in training
    lo, hi, k = *dist.shard(len(problems)), cfg.eval.samples
    s = score(engine, grader, problems[lo:hi], ids[lo:hi], k=k, temperature=cfg.eval.temperature,
              top_p=cfg.eval.top_p, max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.eval.seed + lo * k)
    # The final eval's held-out rationales, whole, for reading them and counting what they do (styles, length).
    rows = [r for part in dist.all_gather_objects(s.rows if label == "after" else []) for r in part]
    s = merge_scores(dist.all_gather_objects(dataclasses.replace(s, rows=[]))) if dist.world() > 1 else s
    result = {"accuracy": s.accuracy, "mean_length": s.mean_length, "n_problems": s.n_problems, "k": s.k, "counts": s.counts}
    if dist.is_main():
        faults.tear_append("eval", step, cfg.run_dir / "eval.jsonl", {"when": label, "step": step, **result})
        append_jsonl(cfg.run_dir / "eval.jsonl", {"when": label, "step": step, **result})
        if rows:
            write_atomic(cfg.run_dir / "eval_samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return result


def previous_eval(cfg: Config, label: str) -> dict | None:
    found = [r for r in read_jsonl_log(cfg.run_dir / "eval.jsonl")[0] if r["when"] == label]
    return {k: v for k, v in found[-1].items() if k not in ("when", "step")} if found else None
