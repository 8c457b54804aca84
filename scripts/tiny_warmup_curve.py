"""Watch a tiny-choice warm-up learn: greedy accuracy, right-branch rate and arithmetic given the
right branch on the first 200 test problems every 250 steps (HF generate; nothing is cached).

    python scripts/tiny_warmup_curve.py --reveal 0 --steps 2000 --lr 1e-3 --seed 1

The tool behind docs/tiny.md's warm-up table (what lr and budget learn the 2-digit addition)."""

from __future__ import annotations

import argparse
import time

import torch

from intro_lite.tiny import TaskConfig, TinyModelConfig, WarmupConfig, build_tiny_model, build_tokenizer, generate_records
from intro_lite.tiny import sft_warmup, warmup_examples
from intro_lite.tiny.assets import TinyBuildConfig

from tiny_choice_table import table_row  # scripts/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reveal", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="warm-up seed (data order, hinted records)")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TinyBuildConfig(task=TaskConfig(kind="choice", reveal=args.reveal, n_test=1000),
                          model=TinyModelConfig(num_attention_heads=args.heads, num_key_value_heads=max(1, args.heads // 2),
                                                num_hidden_layers=args.layers),
                          warmup=WarmupConfig(steps=args.steps, lr=args.lr, seed=args.seed))
    records = generate_records(cfg.task)
    examples = warmup_examples(records["train"], hint_fraction=cfg.warmup.hint_fraction, seed=args.seed)
    tok = build_tokenizer((e["prompt"] + e["solution"] for e in examples), cfg.vocab_size)
    model = build_tiny_model(tok, cfg.model)
    test, t0 = records["test"][:200], time.time()

    def on_step(step: int, loss: float) -> None:
        if step % 250 == 0:
            acc, right, arith = table_row(model, tok, test, hinted=False, greedy=True)
            model.train()
            print(f"step {step:5d}  loss {loss:.3f}  accuracy {acc:.1%}  right branch {right:.1%}  "
                  f"arith given right {arith:.1%}  ({time.time() - t0:.0f} s)", flush=True)

    sft_warmup(model, tok, records["train"], steps=args.steps, batch_size=cfg.warmup.batch_size, lr=args.lr,
               seed=args.seed, hint_fraction=cfg.warmup.hint_fraction, on_step=on_step)


if __name__ == "__main__":
    main()
