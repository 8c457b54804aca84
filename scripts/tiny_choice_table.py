"""Where a built tiny-choice model stands after its warm-up: accuracy, right-branch rate and
arithmetic given the right branch, with plain x and with x ⊕ y, greedy and at T = 1 (HF generate).

    python scripts/tiny_choice_table.py tiny-choice [--n 500] [--adapter RUN/final ...]

Prints the markdown table docs/tiny.md quotes. A sanity tool for the task's design, not an eval:
the trainer's held-out score is `intro-lite eval`."""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from intro_lite.grading import extract_boxed
from intro_lite.io import read_jsonl
from intro_lite.tiny import generate_tiny, tiny_assets
from intro_lite.tiny.choice import branch_of


def table_row(model, tok, records, *, hinted: bool, greedy: bool, seed: int = 0) -> tuple[float, float, float]:
    """(accuracy, right-branch rate, accuracy among right-branch rationales)."""
    rows = generate_tiny(model, tok, records, max_new_tokens=48, greedy=greedy, batch_size=100, seed=seed, hinted=hinted)
    acc = right = right_ok = 0
    for r, row in zip(records, rows):
        text = tok.decode(row, skip_special_tokens=True)
        ok, branch = extract_boxed(text) == r["answer"], branch_of(r["problem"], text)
        acc, right, right_ok = acc + ok, right + (branch == "right"), right_ok + (ok and branch == "right")
    n = len(records)
    return acc / n, right / n, right_ok / max(right, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", help="tiny-choice or tiny-choice_blind")
    ap.add_argument("--n", type=int, default=500, help="first N test problems")
    ap.add_argument("--adapter", nargs="*", default=[], help="LoRA adapter dirs (a run's final/): one table each")
    args = ap.parse_args()
    assets = tiny_assets(args.preset)
    if assets is None:
        raise SystemExit(f"{args.preset}: not a tiny preset name (tiny-choice, tiny-choice_blind)")
    tok = AutoTokenizer.from_pretrained(assets.model_dir)
    records = read_jsonl(assets.test_file)[: args.n]
    for adapter in args.adapter or [None]:
        model = AutoModelForCausalLM.from_pretrained(assets.model_dir, dtype=torch.float32)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        model.eval()
        print(f"{args.preset}{f' + {adapter}' if adapter else ''}, first {len(records)} test problems\n")
        print("| prompt | decoding | accuracy | right branch | arith given right branch |\n|---|---|---|---|---|")
        for hinted in (False, True):
            for greedy in (True, False):
                a, r, g = table_row(model, tok, records, hinted=hinted, greedy=greedy)
                print(f"| {'x⊕y' if hinted else 'x'} | {'greedy' if greedy else 'T = 1'} | {a:.1%} | {r:.1%} | {g:.1%} |")
        print()


if __name__ == "__main__":
    main()
