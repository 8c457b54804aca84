"""Checks of a run's inputs before anything is written: the context length and the gold answers."""

from __future__ import annotations

import random

from intro_lite.config import Config
from intro_lite.data.problems import Problem
from intro_lite.errors import ConfigError
from intro_lite.grading import Grader
from intro_lite.rewards import BUILTIN, problem_dict

USER_REWARD_CHECKS = 8  # golds a user's reward is tried on before the run: a hang costs one timeout, not 64


def context_length(cfg: Config, model_path: str) -> int:
    """rollout.max_model_len, or the model's own context (max_position_embeddings) when it is 0."""
    from intro_lite.policy import base_model_config

    limit = base_model_config(model_path).get("max_position_embeddings")
    if cfg.rollout.max_model_len == 0 and not limit:
        raise ConfigError(f"rollout.max_model_len = 0 (the model's own) but {model_path}'s config has no "
                          "max_position_embeddings; set rollout.max_model_len")
    return cfg.rollout.max_model_len or limit


def check_context_length(cfg: Config, model_path: str) -> int:
    """vLLM refuses a max_model_len beyond the model's positions, and a prompt plus its rationale must
    fit in it; say so in one line before anything is written. Returns the length the engine gets."""
    from intro_lite.policy import base_model_config

    limit, m = base_model_config(model_path).get("max_position_embeddings"), context_length(cfg, model_path)
    if limit and m > limit:
        raise ConfigError(f"rollout.max_model_len = {m} exceeds {model_path}'s max_position_embeddings ({limit})")
    p, n = cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    if p + n > m:
        source = "rollout.max_model_len" if cfg.rollout.max_model_len else f"{model_path}'s own, rollout.max_model_len = 0"
        raise ConfigError(f"data.max_prompt_tokens ({p}) + rollout.max_new_tokens ({n}) = {p + n} exceeds the context "
                          f"length {m} ({source})")
    return m


def check_golds(cfg: Config, grader: Grader, problems: list[Problem], sample: int = 64) -> str:
    """Grade a sample of the gold answers against themselves: a gold the grader cannot parse never
    counts a rollout correct. All bad: a one-line error; some: a warning line (returned).
    A user's reward gets a smoke test instead (`check_user_reward`)."""
    picked = [problems[i] for i in sorted(random.Random(cfg.seed).sample(range(len(problems)), min(sample, len(problems))))]
    if cfg.reward not in BUILTIN:
        check_user_reward(cfg.reward, grader, picked[:USER_REWARD_CHECKS])
        return ""
    grades = grader.grade([(p.answer, "\\boxed{" + p.answer + "}") for p in picked])
    bad = [p for p, g in zip(picked, grades) if g.status == "bad_gold"]
    where = f"data.source {cfg.data.source}"
    first = f"first: id {bad[0].id!r}, answer {bad[0].answer!r}" if bad else ""
    if bad and len(bad) == len(picked):
        raise ConfigError(f"{where}: the grader cannot parse any of {len(picked)} sampled gold answers ({first})")
    return f"{where}: {len(bad)} of {len(picked)} sampled gold answers cannot be parsed by the grader ({first})" if bad else ""


def check_user_reward(spec: str, grader: Grader, picked: list[Problem]) -> None:
    """Run the user's reward on a few records with `\\boxed{gold}` as the completion, one at a time: loading it
    fails in one line (the grader's start), the first timeout stops the check in one line, and so does a
    failure on every record. Other failures are told by the grader, once per kind."""
    grades = []
    for p in picked:
        g = grader.grade([(problem_dict(p), "\\boxed{" + p.answer + "}")])[0]
        if g.status == "timeout":
            raise ConfigError(f"reward {spec} {g.detail} on record {p.id!r} (checked before the run with \\boxed{{gold}} as "
                              f"the completion): a reward must return within the grader's {grader.timeout_s:g} s")
        grades.append(g)
    if grades and all(g.status == "error" for g in grades):
        raise ConfigError(f"reward {spec} failed on all {len(grades)} records it was checked on (\\boxed{{gold}} as the "
                          f"completion); first, record {picked[0].id!r}: {grades[0].detail}")
