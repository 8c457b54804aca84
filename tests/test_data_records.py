"""Every training record is validated: bad ones are skipped and counted with the first one's line
number, nothing usable left is a one-line error, and unreadable files name the file (and line)."""

import json

import pytest

from intro_lite.config import ConfigError, DataConfig
from intro_lite.data.problems import LoadReport, load_problems


def jsonl(tmp_path, lines, name="train.jsonl"):
    p = tmp_path / name
    p.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines), encoding="utf-8")
    return p


GOOD = {"problem": "1+1?", "solution": "It is \\boxed{2}."}


def test_later_record_with_missing_or_null_problem_is_skipped_with_its_line(tmp_path):
    p = jsonl(tmp_path, [GOOD, "", {"solution": "\\boxed{3}"}, {"problem": None, "solution": "\\boxed{4}"}, GOOD])
    report = LoadReport()
    problems = load_problems(DataConfig(source=str(p)), report=report)
    assert [q.question for q in problems] == ["1+1?", "1+1?"]  # never the string "None"
    assert report.dropped_bad_record == 2
    assert report.first_skipped == f"{p}:3: 'problem' is missing or null"  # line 3: the blank line 2 counts
    assert "skipped 2 of 4 records" in report.summary()


def test_non_string_problem_and_numeric_answer_field(tmp_path):
    p = jsonl(tmp_path, [{"problem": 7, "answer": 1}, {"problem": "q", "answer": 12}, {"problem": "r", "answer": None}])
    report = LoadReport()
    problems = load_problems(DataConfig(source=str(p), answer_field="answer"), report=report)
    assert [(q.question, q.answer) for q in problems] == [("q", "12")]
    assert report.dropped_bad_record == 1 and report.dropped_no_gold == 1


def test_every_record_unusable_is_one_line_naming_the_first(tmp_path):
    p = jsonl(tmp_path, [{"problem": "q", "solution": "no box"}, {"problem": "r", "solution": "none"}])
    with pytest.raises(ConfigError) as e:
        load_problems(DataConfig(source=str(p)))
    msg = str(e.value)
    assert "\n" not in msg and "no problems left" in msg and f"{p}:1: no \\boxed{{}} answer in 'solution'" in msg


def test_empty_file_is_one_line(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    with pytest.raises(ConfigError, match=r"empty\.jsonl: empty file, no records"):
        load_problems(DataConfig(source=str(p)))


def test_malformed_line_names_its_line_number(tmp_path):
    p = jsonl(tmp_path, [GOOD, GOOD, '{"problem": "x", "solution": '])
    with pytest.raises(ConfigError, match=r"train\.jsonl: cannot read as json: line 3: "):
        load_problems(DataConfig(source=str(p)))


def test_non_object_line(tmp_path):
    p = jsonl(tmp_path, [GOOD, "[1, 2]"])
    with pytest.raises(ConfigError, match=r"train\.jsonl: line 2: a record must be a JSON object, got list"):
        load_problems(DataConfig(source=str(p)))


def test_not_utf8_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"problem": "caf\xe9", "solution": "\\\\boxed{1}"}\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.jsonl: not UTF-8 text \(line 2"):
        load_problems(DataConfig(source=str(p)))


def test_directory_as_source(tmp_path):
    d = tmp_path / "data.jsonl"
    d.mkdir()
    with pytest.raises(ConfigError, match=r"a directory, not a file"):
        load_problems(DataConfig(source=str(d)))
