"""Evaluation benchmarks: where each file lives, which field holds the problem, how to get its gold answer.

The named benchmarks read the offline copies in `../shared/data/eval/` (field names and quirks are in
that directory's README). Anything else is a local .jsonl/.json/.parquet file or a Hugging Face dataset
name (`org/name`), with an optional field mapping; `tiny` / `tiny-<preset>` is the embedded demo's test split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from intro_lite.config import ConfigError, is_tiny
from intro_lite.data import Problem, _load_rows, tiny_assets
from intro_lite.grading import extract_boxed

DEFAULT_DATA_DIR = Path("../shared/data/eval")  # relative to the working directory


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    title: str  # column header, as in the paper's Table 1
    files: tuple[str, ...]  # under the data dir (named benchmarks), or one path / HF dataset name
    problem_field: str
    gold_field: str
    gold: str  # "answer": the field's value, normalised | "boxed": last \boxed{} of it | "gsm8k": number after ####
    id_field: tuple[str, ...] = ()  # joined with ":"; empty = "<name>:<index>"
    k: int = 1  # samples per problem: 1 = pass@1, >1 = avg@k
    split: str = "test"  # HF datasets only
    custom: bool = False  # a file path / HF dataset as given (not under the data dir); unmapped fields detected


BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in [
        BenchmarkSpec("math500", "MATH500", ("math500.jsonl",), "problem", "answer", "answer", ("unique_id",)),
        BenchmarkSpec("minerva_math", "Minerva Math", ("minerva_math.jsonl",), "problem", "solution", "boxed", ("idx",)),
        BenchmarkSpec("olympiadbench", "Olympiad", ("olympiadbench.jsonl",), "question", "final_answer", "answer", ("id",)),
        BenchmarkSpec("college_math", "College Math", ("college_math.jsonl",), "question", "answer", "answer",
                      ("data_source", "question_number")),
        BenchmarkSpec("amc23", "AMC23", ("amc23.jsonl",), "problem", "answer", "answer", ("id",), k=32),
        # GAIR's AIME 2025 I + II: the same 30 problems and answers as AReaL's aime25.jsonl, whose ids 18, 19
        # and 27 carry broken LaTeX escapes (a form feed for "\f" of \frac, a tab for "\t" of \triangle).
        BenchmarkSpec("aime25", "AIME25", ("aime25_I_gair.jsonl", "aime25_II_gair.jsonl"), "problem", "answer", "answer",
                      ("id",), k=32),
        BenchmarkSpec("aime24", "AIME24", ("aime24.jsonl",), "problem", "answer", "answer", ("id",), k=32),
        BenchmarkSpec("gsm8k", "GSM8K", ("gsm8k_test.jsonl",), "question", "answer", "gsm8k", ("idx",)),
    ]
}
PRESETS: dict[str, list[str]] = {
    "paper": ["math500", "minerva_math", "olympiadbench", "college_math", "amc23", "aime25"],
    "all": ["math500", "minerva_math", "olympiadbench", "college_math", "amc23", "aime25", "aime24", "gsm8k"],
}
FIELD_KEYS = ("problem", "answer", "solution", "id", "split")  # --field KEY=VALUE for files / HF datasets


def expand(names: str | list[str]) -> list[str]:
    """`"paper,gsm8k"` -> benchmark names in order, presets expanded, duplicates dropped."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in (i.strip() for i in items):
        for name in PRESETS.get(item.lower(), [item]) if item else []:
            if _key(name) not in map(_key, out):
                out.append(name)
    if not out:
        raise ConfigError("--benchmarks: no benchmark given")
    return out


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def get_spec(name_or_path: str, fields: dict[str, str] | None = None) -> BenchmarkSpec:
    """The spec of a named benchmark, the tiny test split, a local file or an HF dataset (`org/name`)."""
    if _key(name_or_path) in BENCHMARKS:
        return BENCHMARKS[_key(name_or_path)]
    if is_tiny(name_or_path):
        return BenchmarkSpec(name_or_path, name_or_path, (name_or_path,), "problem", "answer", "answer", ("unique_id",))
    path = Path(name_or_path)
    local = path.exists() or name_or_path.endswith((".jsonl", ".json", ".parquet"))
    if not local and "/" not in name_or_path:
        raise ConfigError(
            f"unknown benchmark '{name_or_path}' (known: {', '.join(BENCHMARKS)}; presets: {', '.join(PRESETS)}; "
            "or a .jsonl/.json/.parquet file, or an HF dataset 'org/name')"
        )
    if local and not path.is_file():
        raise ConfigError(f"benchmark file not found: {name_or_path}")
    fields = dict(fields or {})
    bad = sorted(set(fields) - set(FIELD_KEYS))
    if bad:
        raise ConfigError(f"--field {bad[0]}: unknown key (known: {', '.join(FIELD_KEYS)})")
    # "" = detect from the first record (see _custom_fields).
    answer, solution = fields.get("answer", ""), fields.get("solution", "")
    gold_field, gold = (answer, "answer") if answer or not solution else (solution, "boxed")
    return BenchmarkSpec(
        path.stem if local else name_or_path, path.stem if local else name_or_path, (name_or_path,),
        fields.get("problem", ""), gold_field, gold, (fields["id"],) if fields.get("id") else (),
        split=fields.get("split", "test"), custom=True,
    )


def load_benchmark(name_or_path: str | BenchmarkSpec, *, data_dir: str | Path = DEFAULT_DATA_DIR, limit: int = 0,
                   fields: dict[str, str] | None = None) -> list[Problem]:
    """Problems in file order (the first `limit` if > 0). A record whose gold is missing keeps an empty
    answer: the grader reports it as `bad_gold`, so it is counted and shown, not dropped."""
    spec = name_or_path if isinstance(name_or_path, BenchmarkSpec) else get_spec(name_or_path, fields)
    sources = _sources(spec, Path(data_dir))
    problems: list[Problem] = []
    for src in sources:
        rows = _load_rows(src, spec.split)
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
    """Fill unmapped fields of a file / HF dataset from the usual names (as in the shared eval files)."""

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
