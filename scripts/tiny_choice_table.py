"""Where a built tiny-choice model stands after its warm-up: accuracy, right-branch rate and
arithmetic given the right branch, with plain x and with x ⊕ y, greedy and at T = 1 (HF generate).

    python scripts/tiny_choice_table.py tiny-choice [--n 500] [--adapter RUN/final ...]   # or tiny-choice_styles

Prints the markdown table docs/tiny.md quotes. A sanity tool for the task's design, not an eval:
the trainer's held-out score is `intro-lite eval`."""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from intro_lite.grading import extract_boxed
from intro_lite.io import read_jsonl
from intro_lite.tiny import generate_tiny, tiny_assets
from intro_lite.tiny.choice import branch_of, style_of


def table_row(model, tok, records, *, hinted: bool, greedy: bool, seed: int = 0) -> dict:
    """Accuracy, right-branch rate, accuracy among right-branch rationales, mean length (tokens, eos included),
    and per writing style (tiny-choice_styles) its share and its accuracy."""
    rows = generate_tiny(model, tok, records, max_new_tokens=96, greedy=greedy, batch_size=100, seed=seed, hinted=hinted)
    acc = right = right_ok = 0
    by_style: dict[str, list[bool]] = {}
    for r, row in zip(records, rows):
        text = tok.decode(row, skip_special_tokens=True)
        ok, branch = extract_boxed(text) == r["answer"], branch_of(r["problem"], text)
        acc, right, right_ok = acc + ok, right + (branch == "right"), right_ok + (ok and branch == "right")
        by_style.setdefault(style_of(text) or "other", []).append(ok)
    n = len(records)
    styles = {s: (len(v) / n, sum(v) / len(v)) for s, v in by_style.items()}
    return {"accuracy": acc / n, "right": right / n, "arith": right_ok / max(right, 1),
            "length": sum(map(len, rows)) / n, "styles": styles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", help="tiny-choice, tiny-choice_blind or tiny-choice_styles")
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
        print("| prompt | decoding | accuracy | right branch | arith given right branch | mean length | "
              "styles: share (accuracy) |\n|---|---|---|---|---|---|---|")
        for hinted in (False, True):
            for greedy in (True, False):
                t = table_row(model, tok, records, hinted=hinted, greedy=greedy)
                styles = ", ".join(f"{s} {share:.1%} ({a:.1%})" for s, (share, a) in sorted(t["styles"].items()))
                print(f"| {'x⊕y' if hinted else 'x'} | {'greedy' if greedy else 'T = 1'} | {t['accuracy']:.1%} | "
                      f"{t['right']:.1%} | {t['arith']:.1%} | {t['length']:.1f} | {styles} |")
        print()


if __name__ == "__main__":
    main()
