"""Evaluation benchmarks as problems: read each benchmark's files and take its gold answers.

Which benchmarks exist, where each file lives and which field holds the problem is the table in
`config/sources.py` (the config validator reads it too). The named benchmarks read the copies packaged
in `intro_lite/data/eval/` (provenance, field names and quirks in `intro_lite/data/README.md`). Anything else is
a local .jsonl/.json/.parquet file or a Hugging Face dataset name (`org/name`), with an optional field
mapping; `tiny` / `tiny-<preset>` is the embedded demo's test split.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from intro_lite.config.sources import EVAL_DATA_DIR, BenchmarkSpec, get_spec, is_tiny
from intro_lite.data.problems import Problem, load_rows
from intro_lite.errors import ConfigError
from intro_lite.grading import extract_boxed
from intro_lite.tiny.assets import tiny_assets

DEFAULT_DATA_DIR = EVAL_DATA_DIR  # inside the package: found from any working directory


def load_benchmark(name_or_path: str | BenchmarkSpec, *, data_dir: str | Path = DEFAULT_DATA_DIR, limit: int = 0,
                   fields: dict[str, str] | None = None) -> list[Problem]:
    """Problems in file order (the first `limit` if > 0). A record whose gold is missing keeps an empty
    answer: the grader reports it as `bad_gold`, so it is counted and shown, not dropped."""
    spec = name_or_path if isinstance(name_or_path, BenchmarkSpec) else get_spec(name_or_path, fields)
    sources = _sources(spec, Path(data_dir))
    problems: list[Problem] = []
    for src in sources:
        rows = load_rows(src, spec.split)
        if not rows:
            continue
        spec_here = _custom_fields(spec, rows[0], src) if spec.custom else spec
        for field_name in (spec_here.problem_field, spec_here.gold_field, *spec_here.id_field):
            if field_name not in rows[0]:
                raise ConfigError(f"{src}: records have no field '{field_name}' (fields: {sorted(rows[0])})")
        for row in rows:
            i = len(problems)
            rid = ":".join(str(row[f]) for f in spec_here.id_field) if spec_here.id_field else f"{spec.name}:{i}"
            solution = row.get(spec_here.gold_field) if spec_here.gold == "boxed" else row.get("solution")
            problems.append(Problem(id=rid, question=str(row[spec_here.problem_field]), answer=gold_of(row, spec_here),
                                    solution=solution if isinstance(solution, str) else ""))
            if limit and len(problems) == limit:
                return problems
    if not problems:
        raise ConfigError(f"benchmark {spec.name}: no records in {', '.join(sources)}")
    return problems


def _sources(spec: BenchmarkSpec, data_dir: Path) -> list[str]:
    if is_tiny(spec.files[0]):
        return [str(tiny_assets(spec.files[0]).test_file)]
    if spec.custom:
        return list(spec.files)
    paths = [data_dir / f for f in spec.files]
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"benchmark {spec.name}: file not found: {p} (set --data-dir)")
    return [str(p) for p in paths]


def _custom_fields(spec: BenchmarkSpec, row: dict, src: str) -> BenchmarkSpec:
    """Fill unmapped fields of a file / HF dataset from the usual names (as in the packaged eval files)."""

    def first(*names: str) -> str:
        found = next((n for n in names if n in row), "")
        if not found:
            raise ConfigError(f"{src}: no field among {list(names)} (fields: {sorted(row)}); map one with --field")
        return found

    problem = spec.problem_field or first("problem", "question")
    if spec.gold_field:
        gold_field, gold = spec.gold_field, spec.gold
    elif "answer" in row or "final_answer" in row:
        gold_field = first("final_answer", "answer") if "final_answer" in row else "answer"
        gold = "gsm8k" if isinstance(row[gold_field], str) and "####" in row[gold_field] else "answer"
    else:
        gold_field, gold = first("solution"), "boxed"
    ids = spec.id_field or tuple(n for n in ("unique_id", "id", "idx") if n in row)[:1]
    return replace(spec, problem_field=problem, gold_field=gold_field, gold=gold, id_field=ids)


def gold_of(row: dict, spec: BenchmarkSpec) -> str:
    value = row.get(spec.gold_field)
    if spec.gold == "boxed":
        return (extract_boxed(str(value or "")) or "").strip()
    if spec.gold == "gsm8k":  # "...\n#### 1,600" -> "1600"
        return str(value or "").rsplit("####", 1)[-1].strip().replace(",", "")
    return normalize_answer(value)


def normalize_answer(value) -> str:
    """A stored answer as the string the grader parses: OlympiadBench's one-element list, AMC's float `27.0`,
    AIME's int, College Math's `$10-4 n$` (one enclosing `$...$` dropped). Answers with several math
    spans (`$69$,$84$`, `$4 \\frac{4}{9}$ days`) stay as they are: math-verify reads the spans inside
    them, and on College Math dropping every `$` would turn 47 more golds unparseable (93 -> 140)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(s for s in (normalize_answer(v) for v in value) if s)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    s = str(value).strip()
    inner = s[1:-1]
    if len(s) >= 2 and s[0] == s[-1] == "$" and not s.endswith("\\$") and "$" not in inner.replace("\\$", ""):
        return inner.strip()
    return s
