"""Benchmark loaders on the shipped files: record counts, ids and gold answers of known records."""

import json

import pytest

from intro_lite.config.sources import BENCHMARKS, PRESETS, expand, get_spec
from intro_lite.data.benchmarks import DEFAULT_DATA_DIR, load_benchmark, normalize_answer
from intro_lite.config import ConfigError

# Inside the package (intro_lite/data/eval), so always present in a clone or an install.
shipped = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason=f"{DEFAULT_DATA_DIR} not present")

# name -> (records, [(index, id, gold)])
KNOWN = {
    "math500": (500, [(0, "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
                      (2, "test/algebra/2584.json", "\\frac{14}{3}")]),
    "minerva_math": (272, [(0, "0", "1.6"), (1, "1", "4.5e33"), (2, "2", "41.8")]),  # last \boxed{} of solution
    "olympiadbench": (675, [(0, "1606", "2"), (1, "1610", "\\frac{1}{2 n+2}"),  # final_answer[0], $...$ dropped
                            (5, "1618", "(1,8,19), (2,7,13), (4,5,7)"), (13, "1664", "$69$,$84$")]),
    "college_math": (2818, [(0, "college_math.Beginning_and_Intermediate_Algebra:exercise.0.4.61", "10-4 n"),
                            (176, "college_math.Beginning_and_Intermediate_Algebra:exercise.7.8.24", "\\$ 3040")]),
    "amc23": (40, [(0, "0", "27"), (3, "3", "3159"), (15, "17", "-1")]),  # floats 27.0 -> "27"
    "aime25": (30, [(0, "I-1", "70"), (14, "I-15", "735"), (15, "II-1", "468"), (29, "II-15", "240")]),
    "aime24": (30, [(0, "60", "204"), (7, "67", "025")]),
    "gsm8k": (1319, [(0, "0", "18"), (146, "146", "2125"), (201, "201", "114200")]),  # after ####, commas dropped
}


def test_every_benchmark_is_covered_and_presets():
    assert set(KNOWN) == set(BENCHMARKS)
    assert PRESETS["paper"] == ["math500", "minerva_math", "olympiadbench", "college_math", "amc23", "aime25"]
    assert set(PRESETS["all"]) == set(BENCHMARKS)
    assert {n: BENCHMARKS[n].k for n in PRESETS["paper"]} == {
        "math500": 1, "minerva_math": 1, "olympiadbench": 1, "college_math": 1, "amc23": 32, "aime25": 32}
    assert expand("paper,gsm8k,MATH500,Minerva-Math") == PRESETS["paper"] + ["gsm8k"]  # no duplicates
    assert expand(" AIME24 , all")[0] == "AIME24" and get_spec("Minerva-Math").name == "minerva_math"


@shipped
@pytest.mark.parametrize("name", sorted(KNOWN))
def test_loader_count_ids_and_gold(name):
    count, known = KNOWN[name]
    problems = load_benchmark(name)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count, "ids must be unique"
    assert all(p.question.strip() and p.answer for p in problems), "every record has a problem and a gold answer"
    for i, pid, gold in known:
        assert (problems[i].id, problems[i].answer) == (pid, gold)
    assert [p.id for p in load_benchmark(name, limit=3)] == [p.id for p in problems[:3]]


@shipped
def test_golds_of_known_records_grade_as_their_own_boxed_answer():
    # End to end with the project's grader: each extracted gold parses and matches itself.
    from intro_lite.grading import Grader

    pairs = [(g, f"So the answer is $\\boxed{{{g}}}$.") for _, known in KNOWN.values() for _, _, g in known]
    with Grader() as grader:
        grades = grader.grade(pairs)
    assert [(g, gr.status) for (g, _), gr in zip(pairs, grades) if not gr.correct] == []


def test_normalize_answer():
    assert normalize_answer(27.0) == "27" and normalize_answer(0.5) == "0.5"
    assert normalize_answer(70) == "70" and normalize_answer(None) == ""
    assert normalize_answer(["$2^{1009}$"]) == "2^{1009}"
    assert normalize_answer("$10-4 n$") == "10-4 n"
    assert normalize_answer("$\\$ 4$") == "\\$ 4"  # an escaped dollar is content, not a delimiter
    assert normalize_answer("$4 \\frac{4}{9}$ days") == "$4 \\frac{4}{9}$ days"  # several spans: left to math-verify


def test_unknown_benchmark_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark 'math5000'") as e:
        load_benchmark("math5000")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_benchmark(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="file not found.*--data-dir"):
        load_benchmark("math500", data_dir=tmp_path)


def test_local_jsonl_with_detected_and_mapped_fields(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "1+1?", "answer": "Thus 2.\n#### 2", "idx": 7},
        {"question": "2+2?", "answer": "So\n#### 1,004", "idx": 8},
    ]))
    problems = load_benchmark(str(f))  # question / GSM8K-style answer / idx detected
    assert [(p.id, p.question, p.answer) for p in problems] == [("7", "1+1?", "2"), ("8", "2+2?", "1004")]
    assert get_spec(str(f)).name == "mine"

    g = tmp_path / "other.jsonl"
    g.write_text(json.dumps({"q": "x?", "sol": "so \\boxed{\\frac12}", "key": "a"}) + "\n")
    fields = {"problem": "q", "solution": "sol", "id": "key"}
    [p] = load_benchmark(str(g), fields=fields)
    assert (p.id, p.question, p.answer) == ("a", "x?", "\\frac12")
    with pytest.raises(ConfigError, match="no field 'nope'"):
        load_benchmark(str(g), fields={**fields, "problem": "nope"})
    with pytest.raises(ConfigError, match="--field bogus"):
        load_benchmark(str(g), fields={"bogus": "x"})


def test_tiny_test_split(tiny_assets):
    problems = load_benchmark("tiny-test")
    rows = [json.loads(line) for line in tiny_assets.test_file.read_text().splitlines()]
    assert [(p.id, p.question, p.answer) for p in problems] == [(r["unique_id"], r["problem"], r["answer"]) for r in rows]
    assert get_spec("tiny-test").k == 1
