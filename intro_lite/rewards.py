"""Rewards beside math-verify: `reward = "exact" | "choice" | "pkg.module:fn" | "path/to/file.py:fn"`.

A reward is `fn(problem: dict, completion: str) -> float | bool`; the problem dict has `id`,
`question`, `answer` and `solution`. It runs in the grader's worker process (grading.py) under the
same hard timeout as math-verify; a reward > 0.5 counts as correct wherever an objective needs a
yes/no (docs/objectives.md). Pure Python: safe to import in any process.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Callable

from intro_lite.answers import extract_boxed, strip_math_delimiters
from intro_lite.errors import ConfigError

BUILTIN = ("math", "exact", "choice")
CORRECT_ABOVE = 0.5  # binarisation: reward > 0.5 is "correct" (kept rows, accuracy, Reinforce-Rej's sign)


def _normalise(text: str) -> str:
    boxed = extract_boxed(text)
    return re.sub(r"\s+", "", strip_math_delimiters(boxed if boxed is not None else text))


def exact(problem: dict, completion: str) -> bool:
    """The last `\\boxed{}` of the completion (else its last non-empty line) equals the gold answer,
    both without whitespace and `$` delimiters."""
    boxed = extract_boxed(completion)
    if boxed is None:
        lines = [ln for ln in completion.strip().splitlines() if ln.strip()]
        boxed = lines[-1] if lines else ""
    return _normalise(boxed) == _normalise(problem["answer"]) != ""


# "The answer is (B)", "Answer: B", "\boxed{B}", "**C**" ... the last such letter wins.
_CHOICE = re.compile(r"(?:answer(?:\s+is)?\s*[:：]?\s*\(?|\\boxed\{\s*\(?|\(|\*\*)([A-J])\b\)?", re.IGNORECASE)


def choice_letter(completion: str) -> str:
    """The multiple-choice letter a completion commits to, or ""."""
    found = [m.group(1).upper() for m in _CHOICE.finditer(completion)]
    if found:
        return found[-1]
    tail = re.findall(r"\b([A-J])\b", completion.strip()[-20:])
    return tail[-1] if tail else ""


def choice(problem: dict, completion: str) -> bool:
    """The completion's choice letter (see `choice_letter`) equals the gold letter (e.g. GPQA's "C")."""
    gold = _normalise(problem["answer"]).strip("()").upper()
    return choice_letter(completion) == gold != ""


def _split(spec: str) -> tuple[str, str]:
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise ConfigError(f"'reward' must be one of {list(BUILTIN)}, 'pkg.module:fn' or 'path/to/file.py:fn', got {spec!r}")
    return target, name


def check_reward(spec: str) -> None:
    """A one-line ConfigError for a reward that cannot load, without running the user's code: a file
    must exist, parse and define `fn` at top level; a module must be importable by name."""
    if spec in BUILTIN:
        return
    target, name = _split(spec)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"'reward' {spec!r}: file not found: {target}")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=target)
        except (SyntaxError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"'reward' {spec!r}: {target} does not parse: {e}") from None
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        defined |= {(a.asname or a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        if name not in defined:
            raise ConfigError(f"'reward' {spec!r}: {target} defines no top-level {name!r}")
        return
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"'reward' {spec!r}: cannot import {target}: {e}") from None
    if found is None:
        raise ConfigError(f"'reward' {spec!r}: no module named {target!r}")


def load_reward(spec: str) -> Callable[[dict, str], float | bool]:
    """The reward function named by `spec` (not "math": that is math-verify, in grading.py)."""
    if spec in ("exact", "choice"):
        return {"exact": exact, "choice": choice}[spec]
    check_reward(spec)
    target, name = _split(spec)
    if target.endswith(".py"):
        loader_spec = importlib.util.spec_from_file_location(f"intro_lite_user_reward_{Path(target).stem}", target)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"'reward' {spec!r}: {name!r} is not a function")
    return fn


def problem_dict(problem) -> dict:
    """What a reward function receives for a data.problems.Problem."""
    return {"id": problem.id, "question": problem.question, "answer": problem.answer, "solution": problem.solution}
