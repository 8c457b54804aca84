"""Fuzz the config loader: random recipes built from intro_lite.toml's own keys, with values of the
wrong type and numbers out of any sensible range. Each must be rejected with a one-line ConfigError
(exit 2 from the CLI) or accepted; never another exception. Accepted ones must be usable: a sample
of them trains one step of the tiny model (test_accepted_fuzzed_recipes_train_one_step)."""

from __future__ import annotations

import math
import random
import tomllib

import pytest

from intro_lite.config import DEFAULTS_FILE, ConfigError, load_config, toml_literal

# Values a user can type by mistake. Every type TOML has, and numbers at and beyond every edge.
NUMBERS = [0, 1, -1, 2, 0.5, -0.5, 1.5, 1e-12, 1e9, -1e9, 10**12, float("inf"), float("-inf"), float("nan"), 3]
OTHERS = ["", "x", "all", "tiny", "../..", "a/b", True, False, [], [1], ["q_proj"], {"k": 1}]


def leaf_keys(table: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in table.items():
        if isinstance(value, dict):
            out += leaf_keys(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def render(assignments: dict[str, object]) -> str:
    """A recipe setting each dotted key (top-level keys first, as TOML requires)."""
    top = [f"{k} = {toml_literal_any(v)}" for k, v in assignments.items() if "." not in k]
    tables: dict[str, list[str]] = {}
    for k, v in assignments.items():
        if "." in k:
            section, leaf = k.split(".", 1)
            tables.setdefault(section, []).append(f"{leaf} = {toml_literal_any(v)}")
    body = "\n".join(top) + "\n"
    for section, lines in tables.items():
        body += f"\n[{section}]\n" + "\n".join(lines) + "\n"
    return body


def toml_literal_any(v: object) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_literal_any(x)}" for k, x in v.items()) + "}"
    return toml_literal(v)


def random_recipe(rng: random.Random, keys: list[tuple[str, object]]) -> dict[str, object]:
    chosen = rng.sample(keys, rng.randint(1, 3))
    out = {}
    for key, default in chosen:
        pool = NUMBERS if isinstance(default, (int, float)) and not isinstance(default, bool) and rng.random() < 0.7 else NUMBERS + OTHERS
        out[key] = rng.choice(pool)
    return out


def _keys():
    with open(DEFAULTS_FILE, "rb") as f:
        return leaf_keys(tomllib.load(f))


def test_rendered_recipes_parse_as_toml():
    rng = random.Random(0)
    for _ in range(50):
        tomllib.loads(render(random_recipe(rng, _keys())))


N_CASES = 400


def test_fuzzed_recipes_are_rejected_in_one_line_or_accepted(tmp_path):
    rng, keys = random.Random(1234), _keys()
    rejected = accepted = 0
    for case in range(N_CASES):
        assignments = random_recipe(rng, keys)
        recipe = tmp_path / f"fuzz-{case}.toml"
        recipe.write_text(render(assignments))
        try:
            load_config(recipe, [f'output_dir="{tmp_path}"'])
        except ConfigError as e:
            msg = str(e)
            assert msg and "\n" not in msg, f"{assignments}: error is not one line: {msg!r}"
            rejected += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{assignments}: {type(e).__name__} instead of a ConfigError: {e}")
        else:
            accepted += 1
    assert rejected > N_CASES // 2 and accepted > 0, (rejected, accepted)


# Values the type system lets through but that cannot work; each must be refused at config time.
@pytest.mark.parametrize("key, value", [
    ("seed", -1),
    ("train.adam_beta1", 1.5),
    ("train.adam_beta2", -0.1),
    ("train.weight_decay", -1.0),
    ("train.lr", float("nan")),
    ("train.max_grad_norm", float("inf")),
    ("eval.temperature", -1.0),
    ("eval.top_p", 0.0),
    ("eval.max_new_tokens", 0),
    ("intro.n_candidates", 1_000_000_000),
    ("intro.clip_max", float("inf")),
    ("lora.alpha", float("inf")),
    ("lora.alpha", float("nan")),
    ("lora.rank", 0),
    ("grpo.epsilon", -0.2),
    ("grpo.std_eps", 0.0),
    ("iapo.epsilon_high", -1.0),
    ("repro.top_k", 0),
    ("latro.beta", float("nan")),
    ("train.warmup_steps", -1),
    ("data.max_prompt_tokens", 0),
    ("rollout.top_p", float("nan")),
])
def test_values_that_cannot_work_are_refused(tmp_path, key, value):
    recipe = tmp_path / "r.toml"
    recipe.write_text(render({key: value}))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(recipe)


def test_new_tokens_beyond_a_set_context_are_refused(tmp_path):
    # With the default rollout.max_model_len = 0 (the model's own) train checks this once it has read
    # the model's config (tests/test_reliability.py); a length set in the recipe is checked here.
    recipe = tmp_path / "r.toml"
    recipe.write_text(render({"rollout.max_new_tokens": 4096, "rollout.max_model_len": 2048}))
    with pytest.raises(ConfigError, match=r"'rollout\.max_new_tokens' \+ data\.max_prompt_tokens \(256\) must fit"):
        load_config(recipe)


def test_every_numeric_key_declares_a_range():
    from intro_lite.bounds import unbounded_numeric_keys
    from intro_lite.config import Config

    assert unbounded_numeric_keys(Config) == []


# What makes a recipe the tiny test preset's one step; accepted recipes that set none of these keys run.
TINY_STEP = {"model.name_or_path": "tiny-test", "data.source": "tiny-test", "train.steps": 1, "train.prompts_per_step": 2,
             "rollout.group_size": 2, "rollout.max_new_tokens": 16, "rollout.max_model_len": 256,
             "data.max_prompt_tokens": 64, "eval.source": "", "train.checkpoint_every": 0}


def accepted_recipes(tmp_path, n: int, seed: int = 99) -> list[dict]:
    rng, keys, found = random.Random(seed), _keys(), []
    while len(found) < n:
        assignments = random_recipe(rng, keys)
        if set(assignments) & set(TINY_STEP):
            continue
        recipe = tmp_path / "candidate.toml"
        recipe.write_text(render({**assignments, **TINY_STEP}))
        try:
            load_config(recipe)
        except ConfigError:
            continue
        found.append(assignments)
    return found


@pytest.mark.slow
def test_accepted_fuzzed_recipes_train_one_step(tiny_assets, tmp_path):
    import json

    from intro_lite.grading import Grader
    from intro_lite.rollout.engine import RolloutEngine
    from intro_lite.train.loop import engine_settings
    from intro_lite.train import train

    engines, grader = {}, Grader()
    try:
        for i, assignments in enumerate(accepted_recipes(tmp_path, 3)):
            recipe = tmp_path / f"accepted-{i}.toml"
            recipe.write_text(render({**assignments, **TINY_STEP}))
            cfg = load_config(recipe, [f"output_dir={toml_literal(str(tmp_path))}", f"name=run-{i}"])
            settings = engine_settings(cfg, str(tiny_assets.model_dir))
            key = json.dumps(settings, sort_keys=True)  # runs whose engine settings agree share one engine
            engines[key] = engines.get(key) or RolloutEngine(**settings)
            run = train(cfg, progress=False, engine=engines[key], grader=grader)
            steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
            assert steps == [1], assignments
            assert (run / "final" / "adapter_model.safetensors").exists(), assignments
    finally:
        grader.close()
        for engine in engines.values():
            engine.close()
