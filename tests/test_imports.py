"""The package's shape: imports go one way (no cycle between intro_lite modules) and every file is short.

The graph is read from the source with `ast`, so it sees every import: module level and inside functions
(a lazy import still ties the two modules together). Importing `a.b.c` also runs `a/__init__` and
`a/b/__init__`, so it counts as importing those packages too, except the packages the importer itself
sits in (they are already being imported when it runs).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "intro_lite"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, name: str, known: set[str]) -> set[str]:
    """The intro_lite modules `path` imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package, up level-1 more
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the submodule; `from mod import name` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import intro_lite.x.y` where y is an attribute
                target = target.rpartition(".")[0]
            if not target:
                continue
            out.add(target)
            parent = target.rpartition(".")[0]
            while parent:
                if not (name == parent or name.startswith(parent + ".")):
                    out.add(parent)
                parent = parent.rpartition(".")[0]
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported_names(path, name, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_finder_sees_cycles_and_their_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_reads_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "intro_lite"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "leaf.py").write_text("def f():\n    from intro_lite.sub import inner\n")
    (pkg / "sub" / "inner.py").write_text("from .. import leaf\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = import_graph()
    assert graph["intro_lite.leaf"] == {"intro_lite.sub", "intro_lite.sub.inner"}
    assert graph["intro_lite.sub.inner"] == {"intro_lite.leaf"}
    assert find_cycle(graph) == ["intro_lite.leaf", "intro_lite.sub.inner", "intro_lite.leaf"]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 20 and graph["intro_lite.cli"]  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_imports_neither_vllm_engine_nor_data():
    graph = import_graph()
    config = {m for m in graph if m == "intro_lite.config" or m.startswith("intro_lite.config.")}
    reached, todo = set(), list(config)
    while todo:
        for nxt in graph[todo.pop()] - reached:
            reached.add(nxt)
            todo.append(nxt)
    assert not {m for m in reached if m.startswith(("intro_lite.rollout.engine", "intro_lite.data", "intro_lite.train"))}


def test_every_file_is_at_most_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_training_loop_fits_one_screen():
    """train() reads top to bottom on one screen (<= 80 lines): helpers live beside it, not in it."""
    import ast

    source = (PACKAGE / "train" / "loop.py").read_text(encoding="utf-8")
    train = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "train")
    assert train.end_lineno - train.lineno + 1 <= 80


# The trainer's side, as a GPU check of a training step would import it: none of it needs vLLM.
TRAINER_MODULES = ["intro_lite.config", "intro_lite.policy", "intro_lite.objectives", "intro_lite.train.step",
                   "intro_lite.train.passes", "intro_lite.train.checkpoint", "intro_lite.forward", "intro_lite.alloc",
                   "intro_lite.data.problems", "intro_lite.doctor.memory", "intro_lite.doctor.architectures",
                   "intro_lite.tiny"]
WITHOUT_VLLM = """
import importlib, importlib.abc, sys

class NoVllm(importlib.abc.MetaPathFinder):  # as if vLLM were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoVllm())
for name in sys.argv[2:]:
    importlib.import_module(name)
from intro_lite.config import load_config
from intro_lite.doctor.architectures import ARCHITECTURES
from intro_lite.doctor.memory import estimate_memory
from intro_lite.objectives import available, get_objective

for name in available():
    get_objective(name)
cfg = load_config(sys.argv[1])
assert estimate_memory(cfg, ARCHITECTURES[cfg.model.name_or_path], 80 * 10**9)
assert not [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]
print("ok")
"""


def test_trainer_side_imports_without_vllm():
    import subprocess

    recipe = PACKAGE.parent / "recipes" / "qwen2.5-1.5b.toml"
    out = subprocess.run([sys.executable, "-c", WITHOUT_VLLM, str(recipe), *TRAINER_MODULES], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_cli_and_config_import_without_torch():
    # `intro-lite --help` answers at once (0.2-0.3 s here, against 4.1 s when the CLI imported torch):
    # heavy modules are imported inside the commands, and Config (the objectives' tables) on first use.
    import subprocess

    code = ("import sys, intro_lite.cli, intro_lite.config, intro_lite.config.schema; "
            "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
