"""One step's rollouts: G rationales per prompt from vLLM with the current adapter, graded; their seeds."""

from __future__ import annotations

from dataclasses import dataclass

from intro_lite.config import Config
from intro_lite.rewards import problem_dict
from intro_lite.train import dist


@dataclass
class Rollouts:
    """One step's samples, G per prompt in prompt order, and their grades."""

    pairs: list  # [(problem index, sample with .token_ids/.logprobs/.text/.finish_reason)]
    grades: list
    group_size: int

    @property
    def samples(self) -> list:
        return [s for _, s in self.pairs]

    @property
    def correct(self) -> list[bool]:
        return [g.correct for g in self.grades]

    @property
    def rewards(self) -> list[float]:
        return [g.value for g in self.grades]


def roll_out(cfg: Config, engine, grader, problems, x_ids: list[list[int]], idx: list[int], step: int, timer,
             first: int = 0) -> Rollouts:
    """G rationales for each prompt `idx` with the current adapter, graded against the gold answers.
    `idx` starts at position `first` of the step's batch: its samples get the seeds they have on one process."""
    G, prompts = cfg.rollout.group_size, [x_ids[i] for i in idx]
    seed = rollout_seed(cfg.seed, step, cfg.train.prompts_per_step * G) + first * G
    with timer("rollout"):
        groups = engine.generate(prompts, n=G, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                 max_new_tokens=cfg.rollout.max_new_tokens, seed=seed, logprobs=True)
    pairs = [(i, s) for i, g in zip(idx, groups) for s in g]
    with timer("grading"):
        grades = grader.grade([(problem_dict(problems[i]), s.text) for i, s in pairs])
    return Rollouts(pairs, grades, G)


def rollout_seed(seed: int, step: int, samples_per_step: int) -> int:
    """The engine seed of step `step` (>= 1). The engine gives sample j of prompt i the seed
    `base + i·G + j`, so step s takes [base_s, base_s + samples_per_step): consecutive steps get
    adjacent, disjoint ranges and no two samples of a run share a random stream. (Step 1 keeps the
    seed it always had; runs of seeds s and s + 1 overlap only after 1,000,003 samples.)"""
    return seed * 1_000_003 + 1 + (step - 1) * samples_per_step


def gather_ranks(rolled: Rollouts | None, rows: list, tokens: list | None):
    """Every rank's rollouts, rows and captured per-token values, in rank order (= the batch's order):
    what one process would log for the whole step. As is on one process."""
    if dist.world() == 1:
        return rolled, rows, tokens
    parts = dist.all_gather_objects((rolled, rows, tokens))
    rolled = None if rolled is None else Rollouts([p for r, _, _ in parts for p in r.pairs],
                                                  [g for r, _, _ in parts for g in r.grades], rolled.group_size)
    return rolled, [r for _, rs, _ in parts for r in rs], None if tokens is None else [t for *_, ts in parts for t in ts]


def microbatch_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s objective draws (InTRO's candidates): row i of the step draws from
    this + i (train_step). Two primes keep runs of nearby seeds and steps apart."""
    return seed * 7_919 + step * 100_003
