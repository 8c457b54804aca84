"""Training/eval problems: load, map fields, extract gold answers, filter, and render prompts."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from intro_lite.config.schema import DataConfig
from intro_lite.config.sources import looks_local
from intro_lite.errors import ConfigError
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


def _sources(source: str | list[str]) -> list[str]:
    return [source] if isinstance(source, str) else list(source)


def load_rows(source: str, split: str) -> list[dict]:
    """Local jsonl/json/parquet through `datasets`, or a Hugging Face dataset name."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source)
    if looks_local(source):
        if not path.exists():
            raise ConfigError(f"data.source: file not found: {source}")
        kind = "parquet" if source.endswith(".parquet") else "json"
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:  # datasets wraps JSON errors in several exception types
            raise ConfigError(f"{source}: cannot read as {kind}: {str(e).splitlines()[0]}") from None
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as e:
            raise ConfigError(f"data.source: cannot load dataset {source!r} split {split!r}: {str(e).splitlines()[0]}") from None
    return ds.to_list()


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
        for row in load_rows(cfg.exclude_ids_from, "train"):
            if cfg.id_field not in row:
                raise ConfigError(f"{cfg.exclude_ids_from}: records have no field '{cfg.id_field}' (data.id_field)")
            excluded.add(str(row[cfg.id_field]))
    problems: list[Problem] = []
    for src in _sources(source):
        rows = load_rows(src, cfg.split)
        needed = [cfg.problem_field, cfg.answer_field or cfg.solution_field]
        for field_name in needed:
            if rows and field_name not in rows[0]:
                raise ConfigError(f"{src}: records have no field '{field_name}' (fields: {sorted(rows[0])})")
        for i, row in enumerate(rows):
            report.total += 1
            rid = str(row.get(cfg.id_field, f"{Path(src).name}:{i}"))
            if cfg.levels and _level(row.get(cfg.level_field)) not in cfg.levels:
                report.dropped_level += 1
                continue
            if rid in excluded:
                report.dropped_excluded += 1
                continue
            solution = str(row.get(cfg.solution_field) or "")
            gold = row.get(cfg.answer_field) if cfg.answer_field else extract_boxed(solution)
            if gold is None or str(gold).strip() == "":
                report.dropped_no_gold += 1
                continue
            problems.append(Problem(id=rid, question=str(row[cfg.problem_field]), answer=str(gold).strip(), solution=solution))
    report.kept = len(problems)
    if not problems:
        raise ConfigError(
            f"data.source {source}: no problems left after filtering "
            f"(total {report.total}, level {report.dropped_level}, excluded {report.dropped_excluded}, no gold {report.dropped_no_gold})"
        )
    return problems


def render_prompt(template: str, problem: Problem) -> str:
    # str.replace, not str.format: LaTeX questions are full of braces.
    return template.replace("{question}", problem.question).replace("{answer}", problem.answer)


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
