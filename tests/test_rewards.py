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
    # ... and it was told once, naming the reward, a record and the error, in warnings.log as on the terminal.
    told = [m for m in (run / "warnings.log").read_text().splitlines() if m.startswith("reward ")]
    assert len(told) == 1 and f"{reward_file}:always raised RuntimeError: every third length fails (on record" in told[0]


def test_objectives_binarise_reward_function_values():
    import torch

    from intro_lite.objectives.raft import reinforce_rej_advantages

    # Group 0: 0.7 and 0.6 are both "correct" -> a flat group, dropped; group 1: 0.9 vs 0.2 -> +1 / -1.
    adv, kept = reinforce_rej_advantages(torch.tensor([0.7, 0.6, 0.9, 0.2]), torch.tensor([0, 0, 1, 1]))
    assert kept.tolist() == [False, False, True, True] and adv.tolist() == [0.0, 0.0, 1.0, -1.0]


# -- the user's code failing: one line naming file:fn, the record and the first error (issue 24 §1) ----------

def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_reward_that_cannot_load_is_one_config_error_naming_it(tmp_path):
    not_callable = _write(tmp_path, "nc.py", "fn = 3\n")
    missing = _write(tmp_path, "mm.py", "import no_such_module_here\n\ndef fn(problem, completion):\n    return 1\n")
    with Grader(reward=f"{not_callable}:fn") as g, pytest.raises(ConfigError, match=r"'fn' is not a function") as e:
        g.grade([("1", "1")])
    assert "\n" not in str(e.value) and "nc.py:fn" in str(e.value)
    with Grader(reward=f"{missing}:fn") as g, pytest.raises(ConfigError) as e:
        g.grade([("1", "1")])
    assert str(e.value) == (f"reward {missing}:fn: loading it raised ModuleNotFoundError: No module named "
                            f"'no_such_module_here' ({missing} line 1)")


BAD_VALUES = '''
def fn(problem, completion):
    if completion == "raise":
        raise KeyError("no such field")
    return {"str": "1.0", "none": None, "nan": float("nan"), "ok": 1.0}[completion]
'''


def test_each_kind_of_failure_is_told_once_with_its_record(tmp_path):
    told = []
    spec = f"{_write(tmp_path, 'bv.py', BAD_VALUES)}:fn"
    items = [({"id": f"r{i}", "answer": "1"}, c) for i, c in enumerate(["raise", "str", "none", "nan", "ok", "raise", "str"])]
    with Grader(reward=spec, on_failure=told.append) as g:
        grades = g.grade(items)
    assert [x.status for x in grades] == ["error"] * 4 + ["ok"] + ["error"] * 2
    assert [x.value for x in grades] == [0.0] * 4 + [1.0] + [0.0] * 2
    assert grades[0].detail == "raised KeyError: 'no such field'"
    assert grades[1].detail == "returned a str: '1.0' (a reward is a float or bool)"
    assert grades[2].detail == "returned a NoneType: None (a reward is a float or bool)"
    assert grades[3].detail == "returned nan: a reward must be finite"
    # One line per kind, naming the reward and the first record of that kind; repeats are counted.
    assert len(told) == 4 and all("\n" not in m and m.startswith(f"reward {spec} ") for m in told)
    assert "'r0'" in told[0] and "KeyError" in told[0] and "'r1'" in told[1] and "'r3'" in told[3]
    assert g.failures == {"raised KeyError": 2, "returned a str": 2, "returned a NoneType": 1, "returned nan": 1}


HANGS = '''
import time

def fn(problem, completion):
    with open(CALLS, "a") as f:
        f.write(problem["id"] + "\\n")
    time.sleep(60)
'''


def test_a_reward_that_hangs_costs_one_timeout_before_the_run(tmp_path):
    from intro_lite.data.problems import Problem
    from intro_lite.train.preflight import check_golds

    calls = tmp_path / "calls.txt"
    spec = f"{_write(tmp_path, 'hang.py', f'CALLS = {str(calls)!r}' + HANGS)}:fn"
    cfg = load_config(None, [f'reward="{spec}"', "data.source=tiny-test"])
    problems = [Problem(id=f"p{i}", question="q", answer=str(i), solution="") for i in range(64)]
    with Grader(timeout_s=1.0, reward=spec) as g, pytest.raises(ConfigError, match=r"gave no result within 1 s on record") as e:
        check_golds(cfg, g, problems)
    assert "\n" not in str(e.value) and spec in str(e.value)
    assert len(calls.read_text().splitlines()) == 1  # one call, one timeout: not one per sampled gold


def test_a_reward_failing_on_every_checked_gold_stops_the_run(tmp_path):
    from intro_lite.data.problems import Problem
    from intro_lite.train.preflight import USER_REWARD_CHECKS, check_golds

    spec = f"{_write(tmp_path, 'zero.py', 'def fn(problem, completion):' + chr(10) + '    return 1 / 0' + chr(10))}:fn"
    cfg = load_config(None, [f'reward="{spec}"', "data.source=tiny-test"])
    problems = [Problem(id=f"p{i}", question="q", answer=str(i), solution="") for i in range(20)]
    with Grader(reward=spec, on_failure=lambda m: None) as g, pytest.raises(ConfigError) as e:
        check_golds(cfg, g, problems)
    assert f"failed on all {USER_REWARD_CHECKS} records" in str(e.value) and "ZeroDivisionError" in str(e.value)


PRINTS = '''
import sys

def fn(problem, completion):
    print("LOUD REWARD", completion)
    print("LOUD STDERR", file=sys.stderr)
    return 1.0
'''


def test_a_reward_that_prints_writes_to_its_output_file_not_the_terminal(tmp_path, capfd):
    spec = f"{_write(tmp_path, 'loud.py', PRINTS)}:fn"
    out = tmp_path / "reward-output.log"
    with Grader(reward=spec, output=out) as g:
        assert [x.value for x in g.grade([("1", "x1"), ("1", "x2")])] == [1.0, 1.0]
    assert out.read_text().count("LOUD REWARD") == 2 and out.read_text().count("LOUD STDERR") == 2
    with Grader(reward=spec) as g:  # no file: the worker's stdout joins its stderr (a run's hidden log)
        g.grade([("1", "x3")])
    captured = capfd.readouterr()
    assert "LOUD" not in captured.out and "LOUD REWARD x3" in captured.err


def test_checking_a_module_reward_runs_none_of_its_packages_code(tmp_path, monkeypatch):
    pkg = tmp_path / "side_effect_pkg"
    pkg.mkdir()
    ran = tmp_path / "init-ran"
    (pkg / "__init__.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    (pkg / "scoring.py").write_text("def fn(problem, completion):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_config(None, ['reward="side_effect_pkg.scoring:fn"'])
    with pytest.raises(ConfigError, match=r"no module named 'side_effect_pkg.nope'"):
        load_config(None, ['reward="side_effect_pkg.nope:fn"'])
    with pytest.raises(ConfigError, match=r"defines no top-level 'other'"):
        load_config(None, ['reward="side_effect_pkg.scoring:other"'])
    assert not ran.exists()


def test_a_reward_defined_under_if_is_found(tmp_path):
    p = _write(tmp_path, "cond.py", "import sys\nif sys.version_info >= (3,):\n    def fn(p, c):\n        return 1\n"
                                    "else:\n    fn = None\ntry:\n    from json import loads as other\nexcept ImportError:\n    pass\n")
    for name in ("fn", "other"):
        load_config(None, [f'reward="{p}:{name}"'])
