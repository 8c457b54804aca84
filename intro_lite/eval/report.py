"""The paper's Table 1 for evaluated models, side by side: from a fresh `intro-lite eval` run or from
saved `results.json` files (`--compare`)."""

from __future__ import annotations

import json
from pathlib import Path

from intro_lite.errors import ConfigError

SCHEMA = "intro-lite.eval/1"


def load_results(paths: list[Path]) -> dict:
    """Merge saved results.json files for `--compare` (rows keep their order; a row seen twice is renamed)."""
    merged = {"results": [], "configs": []}
    taken: set[tuple[str, str]] = set()
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory; --compare takes results.json files") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("results"), list):
            raise ConfigError(f"{path}: not an intro-lite results.json (schema {SCHEMA})")
        merged["configs"].append((str(path), data.get("config", {})))
        for i, rec in enumerate(data["results"]):
            missing = [k for k in ("label", "benchmark") if not isinstance(rec, dict) or k not in rec]
            if missing:
                raise ConfigError(f"{path}: results[{i}] has no {' or '.join(missing)}")
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
