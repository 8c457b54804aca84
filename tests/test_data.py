import json
from pathlib import Path

import pytest

from intro_lite.config import ConfigError, DataConfig
from intro_lite.data.problems import LoadReport, Problem, PromptSampler, load_problems, render_prompt

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"  # the developer's / CI's copy
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not beside the repo")
PACKAGED = Path(__file__).resolve().parent.parent / "intro_lite" / "data"


def test_math_levels_3_to_5_without_math500_is_the_prm800k_split():
    # The paper recipes' data: the packaged set by name, with the packaged MATH500 as a guard.
    report = LoadReport()
    cfg = DataConfig(source="math-l3-5", levels=[3, 4, 5], exclude_ids_from="math500")
    problems = load_problems(cfg, report=report)
    # intro_lite/data/README: train+test L3-5 = 9,255, of which 367 are MATH500 problems -> 8,888 packaged;
    # two of those have an empty \boxed{} (train/number_theory/7115, 7117) and are dropped, counted.
    assert report.total == 8888 and report.dropped_level == 0
    assert report.dropped_excluded == 0  # already left out of the packaged file
    assert report.dropped_no_gold == 2
    assert report.kept == len(problems) == 8886
    by_id = {p.id: p for p in problems}
    assert by_id["train/algebra/0.json"].answer == "0"  # "... So $a+b=-3+3=\boxed{0}$."
    assert by_id["train/algebra/25040.json"].answer == "9"  # MATH's brace-less "\boxed 9"
    math500 = {json.loads(line)["unique_id"] for line in open(PACKAGED / "eval" / "math500.jsonl")}
    assert len(math500) == 500 and not math500 & set(by_id)


@needs_shared
def test_packaged_math_set_is_the_selection_of_the_shared_math_files():
    # Each packaged line is the MATH record's own line: train then test, levels 3-5, MATH500 left out.
    math500 = {json.loads(line)["unique_id"] for line in open(SHARED / "eval" / "math500.jsonl")}
    want = []
    for name in ("math_train.jsonl", "math_test.jsonl"):
        for line in (SHARED / "train" / name).read_bytes().splitlines(keepends=True):
            r = json.loads(line)
            if r["level"] in ("Level 3", "Level 4", "Level 5") and r["unique_id"] not in math500:
                want.append(line)
    assert (PACKAGED / "train" / "math_l3-5.jsonl").read_bytes() == b"".join(want)
    # And loading the raw files with the recipe's filters gives the same problems.
    raw = load_problems(DataConfig(source=[str(SHARED / "train" / "math_train.jsonl"), str(SHARED / "train" / "math_test.jsonl")],
                                   levels=[3, 4, 5], exclude_ids_from=str(SHARED / "eval" / "math500.jsonl")))
    assert raw == load_problems(DataConfig(source="math-l3-5", levels=[3, 4, 5], exclude_ids_from="math500"))
    for f in (SHARED / "eval").glob("*.jsonl"):  # the eval files are the same bytes as well
        assert (PACKAGED / "eval" / f.name).read_bytes() == f.read_bytes(), f.name


def test_answer_field_mapping_on_math500():
    cfg = DataConfig(source="math500", answer_field="answer")  # the packaged benchmark file, by name
    problems = load_problems(cfg)
    assert len(problems) == 500
    assert problems[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_a_missing_packaged_file_is_one_line_saying_what_to_do(monkeypatch, tmp_path):
    from intro_lite.config import sources

    monkeypatch.setattr(sources, "PACKAGE_DATA", tmp_path / "intro_lite" / "data")
    with pytest.raises(ConfigError) as e:
        load_problems(DataConfig(source="math-l3-5"))
    assert str(e.value) == ("data.source = 'math-l3-5': the packaged file intro_lite/data/train/math_l3-5.jsonl is "
                            "missing from this install; reinstall intro-lite, or set data.source to a local .jsonl file")


def test_missing_field_and_empty_result_name_the_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"question": "1+1?", "solution": "\\boxed{2}", "level": "Level 1"}) + "\n")
    with pytest.raises(ConfigError, match=r"d.jsonl: records have no field 'problem'"):
        load_problems(DataConfig(source=str(f)))
    with pytest.raises(ConfigError, match=r"no problems left after filtering"):
        load_problems(DataConfig(source=str(f), problem_field="question", levels=[3]))
    with pytest.raises(ConfigError, match=r"file not found"):
        load_problems(DataConfig(source=str(tmp_path / "missing.jsonl")))


def test_malformed_jsonl_names_the_file(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"problem": "x", "solution": "\\\\boxed{1}"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl: cannot read"):
        load_problems(DataConfig(source=str(f)))


def test_render_prompt_keeps_latex_braces():
    p = Problem(id="1", question="Find $\\frac{a}{b}$ if {x}", answer="\\frac{1}{2}")
    out = render_prompt("{question}\nThe final answer is {answer}.\n", p)
    assert out == "Find $\\frac{a}{b}$ if {x}\nThe final answer is \\frac{1}{2}.\n"


def test_sampler_covers_each_epoch_and_resumes_exactly():
    s = PromptSampler(10, seed=3)
    first = s.next(10)
    assert sorted(first) == list(range(10))
    s.next(4)
    state = s.state_dict()
    rest = s.next(13)
    t = PromptSampler(10, seed=3)
    t.load_state_dict(state)
    assert t.next(13) == rest
