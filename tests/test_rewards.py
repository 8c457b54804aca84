"""`reward = ...`: the built-in exact/choice rewards, reward functions from a file or a module run in
the grader's worker (hard timeout, exceptions counted), one-line config errors, and a tiny run."""

import json

import pytest

from intro_lite.config import ConfigError, load_config
from intro_lite.grading import Grader
from intro_lite.rewards import choice, choice_letter, exact

REWARD_FILE = '''
import time

def fn(problem, completion):
    if "boom" in completion:
        raise ValueError("reward exploded")
    if "slow" in completion:
        time.sleep(30)
    return 0.75 if problem["answer"] in completion else 0.25

def always(problem, completion):
    if len(completion) % 3 == 0:
        raise RuntimeError("every third length fails")
    return True
'''


@pytest.fixture
def reward_file(tmp_path):
    p = tmp_path / "my_rewards.py"
    p.write_text(REWARD_FILE)
    return p


@pytest.mark.parametrize("completion, ok", [
    ("so \\boxed{ 12 }", True), ("work...\n12", True), ("\\boxed{12.0}", False), ("\\boxed{13}", False), ("", False),
])
def test_exact(completion, ok):
    assert exact({"answer": "$12$"}, completion) is ok


@pytest.mark.parametrize("completion, letter", [
    ("The answer is (C).", "C"), ("Answer: b", "B"), ("I think \\boxed{D}", "D"), ("**A** is right", "A"),
    ("(A) looks wrong, so the answer is (B)", "B"), ("no letter here", ""), ("...\nC", "C"),
])
def test_choice_letter(completion, letter):
    assert choice_letter(completion) == letter


def test_choice_compares_letters():
    assert choice({"answer": "C"}, "The answer is (C)") and not choice({"answer": "(C)"}, "Answer: D")


def test_reward_file_without_the_function_is_one_line_config_error(reward_file):
    # Unknown words, missing files and modules: tests/test_config.py's table of bad recipes.
    with pytest.raises(ConfigError, match=r"defines no top-level 'missing'") as e:
        load_config(None, [f'reward="{reward_file}:missing"'])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"'reward' must be one of"):
        load_config(None, [f'reward="{reward_file}:1bad"'])


def test_syntax_error_in_reward_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def fn(problem, completion)\n    return 1\n")
    with pytest.raises(ConfigError, match=r"bad.py does not parse"):
        load_config(None, [f'reward="{bad}:fn"'])


def test_file_reward_in_worker_counts_errors_and_timeouts(reward_file):
    with Grader(timeout_s=2.0, reward=f"{reward_file}:fn") as g:
        grades = g.grade([({"answer": "7", "id": "a"}, "it is 7"), ("7", "it is 8"), ("7", "boom"),
                          ("7", "slow"), ("7", "7 again")])
    assert [x.value for x in grades] == [0.75, 0.25, 0.0, 0.0, 0.75]
    assert [x.correct for x in grades] == [True, False, False, False, True]  # binarised at 0.5
    assert [x.status for x in grades] == ["ok", "ok", "error", "timeout", "ok"]


def test_module_reward_and_builtin_in_worker():
    with Grader(reward="intro_lite.rewards:exact") as g, Grader(reward="choice") as c:
        assert [x.value for x in g.grade([("5", "\\boxed{5}"), ("5", "\\boxed{6}")])] == [1.0, 0.0]
        assert [x.correct for x in c.grade([("B", "The answer is (B)"), ("B", "Answer: A")])] == [True, False]


def test_math_grades_keep_one_zero_rewards():
    with Grader() as g:
        grades = g.grade([({"answer": "1/2"}, "\\boxed{0.5}"), ("2", "\\boxed{3}")])
    assert [x.value for x in grades] == [1.0, 0.0] and grades[0].reward is None


@pytest.mark.slow
def test_two_tiny_steps_with_a_file_reward(tiny_assets, reward_file, tmp_path):
    from intro_lite.train import train

    cfg = load_config("recipes/tiny.toml", [
        "model.name_or_path=tiny-test", "data.source=tiny-test", 'eval.source=""', f'output_dir="{tmp_path}"',
        "train.steps=2", "train.prompts_per_step=4", "rollout.max_new_tokens=24", "train.checkpoint_every=0",
        f'reward="{reward_file}:always"'])
    run = train(cfg, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    # The test preset gets ~0% right by math-verify; this reward calls most rollouts correct, so InTRO trains them.
    assert all(r["rollout_accuracy"] > 0.3 and r["kept_fraction"] == r["rollout_accuracy"] for r in lines)
    assert sum(r["reward_errors"] for r in lines) > 0  # lengths divisible by 3 raised, and the run went on
    assert all(r["w_mean"] is not None for r in lines)


def test_objectives_binarise_reward_function_values():
    import torch

    from intro_lite.objectives.raft import reinforce_rej_advantages

    # Group 0: 0.7 and 0.6 are both "correct" -> a flat group, dropped; group 1: 0.9 vs 0.2 -> +1 / -1.
    adv, kept = reinforce_rej_advantages(torch.tensor([0.7, 0.6, 0.9, 0.2]), torch.tensor([0, 0, 1, 1]))
    assert kept.tolist() == [False, False, True, True] and adv.tolist() == [0.0, 0.0, 1.0, -1.0]
