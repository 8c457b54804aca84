"""Training/eval problems: load, map fields, extract gold answers, filter, and render prompts."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from intro_lite.config.schema import DataConfig
from intro_lite.config.sources import looks_local, resolve_data_file
from intro_lite.errors import ConfigError, first_line
from intro_lite.grading import extract_boxed
from intro_lite.tiny.assets import tiny_assets


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # gold final answer as a string (the grader parses it)
    solution: str = ""  # golden rationale, if the source has one (SFT uses it)


@dataclass
class LoadReport:
    total: int = 0
    kept: int = 0
    dropped_level: int = 0
    dropped_excluded: int = 0
    dropped_no_gold: int = 0
    dropped_bad_record: int = 0  # no usable question (missing, null, empty, not a string)
    first_skipped: str = ""  # where and why the first skipped record was skipped, e.g. "train.jsonl:7: 'problem' is missing or null"

    def skip(self, reason: str, where: str, what: str) -> None:
        setattr(self, f"dropped_{reason}", getattr(self, f"dropped_{reason}") + 1)
        if not self.first_skipped:
            self.first_skipped = f"{where}: {what}"

    def summary(self) -> str:
        """One line for the run's log when records were skipped ("" when none were)."""
        skipped = self.dropped_no_gold + self.dropped_bad_record
        if not skipped:
            return ""
        return (f"skipped {skipped} of {self.total} records (no gold {self.dropped_no_gold}, "
                f"bad {self.dropped_bad_record}); first: {self.first_skipped}")


def _sources(source: str | list[str]) -> list[str]:
    """The files (or HF dataset names) to read, packaged names (`math-l3-5`) as their files."""
    return [resolve_data_file(s) for s in ([source] if isinstance(source, str) else list(source))]


def load_rows(source: str, split: str) -> list[dict]:
    """Local jsonl/json/parquet through `datasets`, or a Hugging Face dataset name."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source)
    if looks_local(source):
        if not path.is_file():
            raise ConfigError(f"data.source: {'a directory, not a file' if path.is_dir() else 'file not found'}: {source}")
        kind = "parquet" if source.endswith(".parquet") else "json"
        if kind == "json":
            _check_json_text(path)  # one-line errors with line numbers, before datasets' byte offsets
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:  # datasets wraps JSON errors in several exception types
            raise ConfigError(f"{source}: cannot read as {kind}: {first_line(e)}") from None
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as e:
            raise ConfigError(f"data.source: cannot load dataset {source!r} split {split!r}: {first_line(e)}") from None
    return ds.to_list()


def _check_json_text(path: Path) -> None:
    """UTF-8, not empty, and (for .jsonl) every non-blank line one JSON object: else one line naming the line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line}, byte {e.start})") from None
    if not text.strip():
        raise ConfigError(f"{path}: empty file, no records")
    if path.suffix != ".jsonl":
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: cannot read as json: line {number}: {e.msg} (column {e.colno})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: line {number}: a record must be a JSON object, got {type(record).__name__}")


def _record_lines(source: str, n: int) -> list[str]:
    """Where each row came from, for messages: `file:LINE` for jsonl (blank lines skipped, as datasets does),
    `file record I` otherwise."""
    path = Path(source)
    if path.suffix == ".jsonl" and path.is_file():
        numbers = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
        if len(numbers) == n:
            return [f"{source}:{i}" for i in numbers]
    return [f"{source} record {i + 1}" for i in range(n)]


def _level(value) -> int | None:
    """MATH stores "Level 3" (and two "Level ?"); other sets store ints."""
    if isinstance(value, int):
        return value
    m = re.search(r"\d+", str(value))
    return int(m.group()) if m else None


def load_problems(cfg: DataConfig, *, source: str | list[str] | None = None, report: LoadReport | None = None) -> list[Problem]:
    """Load, map and filter problems; errors name the file, field or record."""
    source = cfg.source if source is None else source
    if isinstance(source, str) and (tiny := tiny_assets(source)) is not None:
        source = str(tiny.train_file)
    report = report if report is not None else LoadReport()
    excluded: set[str] = set()
    if cfg.exclude_ids_from:
        for row in load_rows(resolve_data_file(cfg.exclude_ids_from, "data.exclude_ids_from"), "train"):
            if cfg.id_field not in row:
                raise ConfigError(f"{cfg.exclude_ids_from}: records have no field '{cfg.id_field}' (data.id_field)")
            excluded.add(str(row[cfg.id_field]))
    problems: list[Problem] = []
    for src in _sources(source):
        rows = load_rows(src, cfg.split)
        if not rows:
            raise ConfigError(f"{src}: no records")
        needed = [cfg.problem_field, cfg.answer_field or cfg.solution_field]
        for field_name in needed:
            if all(field_name not in row for row in rows):
                raise ConfigError(f"{src}: records have no field '{field_name}' (fields: {sorted(rows[0])})")
        where = _record_lines(src, len(rows))
        for i, row in enumerate(rows):
            report.total += 1
            rid = str(row.get(cfg.id_field) if row.get(cfg.id_field) is not None else f"{Path(src).name}:{i}")
            if cfg.levels and _level(row.get(cfg.level_field)) not in cfg.levels:
                report.dropped_level += 1
                continue
            if rid in excluded:
                report.dropped_excluded += 1
                continue
            question = row.get(cfg.problem_field)
            if not isinstance(question, str) or not question.strip():
                report.skip("bad_record", where[i], f"'{cfg.problem_field}' is {_describe(question)}")
                continue
            solution = row.get(cfg.solution_field)
            solution = solution if isinstance(solution, str) else ""
            gold = row.get(cfg.answer_field) if cfg.answer_field else extract_boxed(solution)
            if isinstance(gold, (int, float)) and not isinstance(gold, bool):
                gold = str(gold)
            if not isinstance(gold, str) or gold.strip() == "":
                what = f"'{cfg.answer_field}' is {_describe(gold)}" if cfg.answer_field else f"no \\boxed{{}} answer in '{cfg.solution_field}'"
                report.skip("no_gold", where[i], what)
                continue
            problems.append(Problem(id=rid, question=question, answer=gold.strip(), solution=solution))
    report.kept = len(problems)
    if not problems:
        first = f"; first skipped: {report.first_skipped}" if report.first_skipped else ""
        raise ConfigError(
            f"data.source {source}: no problems left after filtering "
            f"(total {report.total}, level {report.dropped_level}, excluded {report.dropped_excluded}, "
            f"no gold {report.dropped_no_gold}, bad records {report.dropped_bad_record}){first}"
        )
    return problems


def _describe(value) -> str:
    if value is None:
        return "missing or null"
    if isinstance(value, str):
        return "empty"
    return f"a {type(value).__name__}, not a string"


def render_prompt(template: str, problem: Problem) -> str:
    # str.replace, not str.format: LaTeX questions are full of braces.
    return template.replace("{question}", problem.question).replace("{answer}", problem.answer)


def encode_prompts(tokenizer, texts: list[str], chat_template: bool = False) -> tuple[list[str], list[list[int]]]:
    """(what the model sees, its token ids) for rendered prompts. With `chat_template` (data.chat_template,
    for instruct models) each text is the user turn of the tokenizer's chat template, ending where the
    assistant's reply — the rationale — starts; the template writes its own special tokens (no second BOS)."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"data.chat_template = true, but {getattr(tokenizer, 'name_or_path', 'the tokenizer')} "
                              "has no chat template")
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in texts]
    # One batched call: the fast tokenizer encodes the whole list in parallel.
    return texts, tokenizer(texts, add_special_tokens=not chat_template)["input_ids"]


class PromptSampler:
    """Epoch-shuffled cursor over problems; its state is two ints so a resume is exact."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._shuffle()
