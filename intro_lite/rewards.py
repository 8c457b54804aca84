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
    must exist, parse and define `fn` at top level; a module must be found by name (its parent packages
    are not imported), and its source, when it has one, define `fn`."""
    if spec in BUILTIN:
        return
    target, name = _split(spec)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"'reward' {spec!r}: file not found: {target}")
        _check_defines(spec, path, name)
        return
    found = _locate(target)
    if found is None:
        raise ConfigError(f"'reward' {spec!r}: no module named {target!r}")
    if found.origin and found.origin.endswith(".py") and Path(found.origin).is_file():
        _check_defines(spec, Path(found.origin), name)


def _check_defines(spec: str, path: Path, name: str) -> None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"'reward' {spec!r}: {path} does not parse: {e}") from None
    if name not in _module_names(tree.body):
        raise ConfigError(f"'reward' {spec!r}: {path} defines no top-level {name!r}")


def _module_names(body: list) -> set[str]:
    """Names a module binds at top level, also inside its if/try/with/for blocks (not in functions or classes)."""
    names: set[str] = set()
    for n in body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in n.names}
        elif isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                names |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
        else:  # if / try / with / for / while: their blocks run at import time too
            for block in ("body", "orelse", "finalbody"):
                names |= _module_names(getattr(n, block, []))
            for h in getattr(n, "handlers", []):
                names |= _module_names(h.body)
    return names


def _locate(dotted: str):
    """The module's spec, found without importing it or its parents: `importlib.util.find_spec("a.b")`
    would run a/__init__.py, and the config check runs no user code."""
    from importlib.machinery import PathFinder

    head, *rest = dotted.split(".")
    try:
        found = importlib.util.find_spec(head)  # a top-level name is looked up, not imported
    except (ImportError, ValueError):
        return None
    for i, _ in enumerate(rest, start=2):
        if found is None or found.submodule_search_locations is None:
            return None  # not a package: it has no submodules
        found = PathFinder.find_spec(".".join(dotted.split(".")[:i]), list(found.submodule_search_locations))
    return found


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
