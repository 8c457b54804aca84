"""What a source name means, without reading any data: `tiny` / `tiny-<preset>` (the embedded demo),
a local data file, a packaged training set (`math-l3-5`), or a named evaluation benchmark (its files,
fields and gold format; the files are read by `data/benchmarks.py`). The config validator checks
`data.source`, `data.exclude_ids_from` and `eval.source` against these tables.

The packaged data lives inside the package (`intro_lite/data/eval/`, `intro_lite/data/train/`; provenance
in `intro_lite/data/README.md`), so it is found from any working directory and in a non-editable install.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from intro_lite.errors import ConfigError

PACKAGE_DATA = Path(__file__).resolve().parent.parent / "data"
EVAL_DATA_DIR = PACKAGE_DATA / "eval"  # the named benchmarks' files (`intro-lite eval --data-dir` default)
# Packaged training sets: name -> file under PACKAGE_DATA.
TRAIN_SETS: dict[str, str] = {
    # MATH (Hendrycks et al.) train + test, levels 3-5, minus the MATH500 problems: PRM800K's 12k training
    # split cut to levels 3-5, 8,888 records, each line byte-identical to the MATH record (README there).
    "math-l3-5": "train/math_l3-5.jsonl",
}


# The embedded demo's presets (intro_lite/tiny/assets.py PRESETS; a test keeps the two equal), named here
# so that a config naming one that does not exist fails when it loads, without importing the builder.
TINY_PRESETS = ("default", "choice", "choice_blind", "choice_styles", "test")


def tiny_preset(name: str) -> str:
    """`tiny` -> "default", `tiny-choice` -> "choice"; a one-line ConfigError for a preset that does not exist."""
    preset = name[5:] or "default"
    if preset not in TINY_PRESETS:
        known = ", ".join("tiny" if p == "default" else f"tiny-{p}" for p in TINY_PRESETS)
        raise ConfigError(f"{name!r}: no such tiny preset (known: {known})")
    return preset


def is_tiny(name: str) -> bool:
    """`tiny` or `tiny-<preset>`: the embedded demo's model / train split / test split."""
    return re.fullmatch(r"tiny(-[a-z0-9_]+)?", name) is not None and not Path(name).exists()


def packaged_file(name: str) -> Path | None:
    """The packaged file a data name stands for: a training set of TRAIN_SETS, or a named benchmark held in
    one file (`math500`, e.g. for data.exclude_ids_from); None for anything else, or when a path of that
    name exists (a local file wins, as with `tiny`)."""
    if Path(name).exists():
        return None
    if name in TRAIN_SETS:
        return PACKAGE_DATA / TRAIN_SETS[name]
    spec = BENCHMARKS.get(_key(name))
    return EVAL_DATA_DIR / spec.files[0] if spec is not None and len(spec.files) == 1 else None


def resolve_data_file(name: str, key: str = "data.source") -> str:
    """A packaged name as the path of its file (which must be there); anything else unchanged."""
    path = packaged_file(name)
    if path is None:
        return name
    if not path.is_file():
        raise ConfigError(f"{key} = {name!r}: the packaged file {path.relative_to(PACKAGE_DATA.parent.parent)} is "
                          "missing from this install; reinstall intro-lite, or set "
                          f"{key} to a local .jsonl file")
    return str(path)


def looks_local(source: str) -> bool:
    """A data file path (must exist) rather than an HF dataset name."""
    return source.endswith((".jsonl", ".json", ".parquet")) or Path(source).exists()


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
    local = looks_local(name_or_path)
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
