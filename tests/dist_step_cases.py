"""One train_step per objective on fixed rows, on this process's share of them: imported by
tests/test_dist.py for the one-process reference, and run under torchrun (2 ranks, gloo) as

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_step_cases.py MODEL_DIR OUT

which saves each rank's results to OUT.rank<r>.pt. Not a test module itself (no test_ prefix)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch

PROMPTS, G = 4, 3
# (case, objective, its config, reward of row k of prompt p). "intro-idle": every rollout of prompts 2-3 is
# wrong, so with 2 ranks rank 1 keeps no row and still has to join every collective.
CASES = [
    ("intro", "intro", {"n_candidates": 5, "clip_max": 200.0, "logits_chunk_size": 4}, lambda p, k: (k + p) % 2),
    # A lagged (EMA) teacher whose weights differ from the policy's: its pass and its update after the step.
    ("intro-ema", "intro", {"n_candidates": 5, "logits_chunk_size": 4, "teacher": "ema", "teacher_decay": 0.5},
     lambda p, k: (k + p) % 2),
    ("intro-idle", "intro", {"n_candidates": 5, "clip_max": 200.0, "logits_chunk_size": 0}, lambda p, k: p < 2 and k != 1),
    ("grpo", "grpo", {"beta": 0.04}, lambda p, k: (k + p) % 2),
    ("raft++", "raft++", {}, lambda p, k: (k * p) % 2),
    ("gpg", "gpg", {}, lambda p, k: p != 1 and (k + p) % 2),  # prompt 1's group is flat: GPG's α = 4/3
    # The other objectives (docs/scale.md's normaliser table): each batch-wide total must be the global one.
    ("sft", "sft", {}, lambda p, k: 1),
    ("dr_grpo", "dr_grpo", {}, lambda p, k: (k + p) % 2),
    ("reinforce_rej", "reinforce_rej", {}, lambda p, k: p != 2 and (k * p) % 2),  # prompt 2's group is flat
    ("latro", "latro", {}, lambda p, k: (k + p) % 2),
    ("iapo", "iapo", {"mode": "last_token"}, lambda p, k: (k + p) % 2),
    ("repro", "repro", {}, lambda p, k: (k + p) % 2),
]


def all_cases() -> list:
    """CASES, then every other registered objective with its defaults: a new one is checked without an edit here."""
    from intro_lite.objectives import available

    named = {name for _, name, _, _ in CASES}
    return CASES + [(name, name, {}, lambda p, k: (k + p) % 2) for name in available() if name not in named]
ANSWER = [7, 8]  # the y ids LaTRO's rows end with (after z)


def step_rows(tok, reward, kept_only: bool, answer_suffix: bool = False):
    """G rollouts of PROMPTS prompts (random ids, different lengths), group = prompt position in the batch;
    with `answer_suffix` (LaTRO) each suffix is z ⊕ y, only z in the loss mask."""
    from intro_lite.objectives import Row

    g = torch.Generator().manual_seed(0)
    V, rows = len(tok), []
    for p in range(PROMPTS):
        x = torch.randint(5, V, (5 + p,), generator=g).tolist()
        for k in range(G):
            z = torch.randint(5, V, (3 + 2 * k + p,), generator=g).tolist()
            r = float(bool(reward(p, k)))
            if r or not kept_only:
                served = [-0.5 - 0.1 * t for t in range(len(z))]  # made-up vLLM logprobs of z: the gap is a figure
                rows.append(Row(p, p, x, x + ANSWER, z + ANSWER if answer_suffix else z, len(z), r, served))
    return rows


def run(model_dir: str) -> dict:
    """{case: (loss, grad_norm, stats, parameters after one SGD(lr=1) step, rows, stats of one-row micro-batches,
    the logprob gap's (mean, max))}
    on this rank's prompts. Micro-batches of 4 rows split 1 and 2 processes' rows differently (12 rows: 4+4+4 on
    one process, 4+2 on each rank), and the loss must not care. The non-count stats are row-weighted means of
    micro-batch means, so they are compared on one-row micro-batches, where both splits weigh the rows alike."""
    from intro_lite.config import load_config
    from intro_lite.objectives import get_objective
    from intro_lite.policy import load_policy, trainable_parameters
    from intro_lite.train.passes import PassSetup
    from intro_lite.train.teacher import make_teacher
    from intro_lite.train import dist
    from intro_lite.train.step import train_step

    cfg = load_config("recipes/tiny.toml", ["model.name_or_path=tiny-test", "data.source=tiny-test", 'eval.source=""',
                                            "model.quantization=none"])
    torch.manual_seed(0)
    model, tok = load_policy(cfg, model_dir)
    params = trainable_parameters(model)
    g = torch.Generator().manual_seed(1)
    start = [torch.randn(p.shape, generator=g) * 0.05 for p in params]  # B != 0: every LoRA matrix gets a gradient
    lo, hi = dist.shard(PROMPTS)
    problems = [SimpleNamespace(answer=str(10 + p), solution=f"so it is {10 + p}") for p in range(PROMPTS)]  # RePro's answers
    out = {}
    for case, name, settings, reward in all_cases():
        objective = get_objective(name)
        ocfg = objective.config(**settings) if objective.config else None
        needs = objective.needs_for(ocfg)
        rows = [r for r in step_rows(tok, reward, needs.kept_only, needs.answer_suffix) if lo <= r.group < hi]
        runs = []
        for mb in (4, 1):
            with torch.no_grad():
                for p, s in zip(params, start):
                    p.copy_(s)
            teacher = make_teacher(needs, params)
            if teacher is not None:
                teacher.load_state_dict([0.5 * s for s in start])
            setup = PassSetup(model, objective, ocfg, needs, tok.pad_token_id, tok, problems, 16, teacher)
            # SGD with lr 1: the step moves each parameter by minus its (global) gradient.
            opt = torch.optim.SGD(params, lr=1.0)
            runs.append(train_step(setup, opt, rows, micro_batch_size=mb, max_grad_norm=1e9, generator_seed=11))
            if mb == 4:  # the adapter, and a lagged teacher's weights after its update
                after = [p.detach().clone() for p in params] + (teacher.state_dict() if teacher is not None else [])
        out[case] = (runs[0].loss, runs[0].grad_norm, runs[0].stats, after, len(rows), runs[1].stats,
                     (runs[0].logprob_gap_mean, runs[0].logprob_gap_max))
    return out


if __name__ == "__main__":
    from intro_lite.train import dist

    torch.set_num_threads(1)
    dist.init("cpu")
    results = run(sys.argv[1])
    torch.save(results, f"{sys.argv[2]}.rank{dist.rank()}.pt")
    dist.shutdown()
