"""`intro-lite show RUN_DIR --step N`: one self-contained HTML page of a step's samples (samples.jsonl):
each trained rationale token coloured by InTRO's correction factor w = clip(q/p, 0, C) — blue where the
answer-conditioned teacher raises the token (w > 1), red where it lowers it (w < 1), white at 1 — the
paper's Fig. 1 for real rollouts. No server, no scripts, no external assets."""

from __future__ import annotations

import html
import math
from pathlib import Path

from intro_lite.errors import ConfigError
from intro_lite.io import read_jsonl_log

STYLE = """body{font:14px/1.5 system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
.sample{border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin:1em 0}
.meta{color:#555;font-size:12px}.ok{color:#0a7d2c;font-weight:600}.bad{color:#b3261e;font-weight:600}
.prompt{white-space:pre-wrap;background:#f6f6f6;padding:.4em .6em;border-radius:4px}
.z{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px;margin-top:.5em}
.z span{border-radius:2px}.legend span{padding:0 .5em;font-family:ui-monospace,monospace}"""


def colour(w: float) -> str:
    """Diverging colour of log w: red (w < 1) - white (1) - blue (w > 1), saturating at w = 1/4 and 4."""
    t = max(-1.0, min(1.0, math.log(max(w, 1e-12)) / math.log(4)))
    a = abs(t)
    r, g, b = (255, round(255 * (1 - 0.6 * a)), round(255 * (1 - 0.6 * a))) if t < 0 else \
              (round(255 * (1 - 0.6 * a)), round(255 * (1 - 0.35 * a)), 255)
    return f"#{r:02x}{g:02x}{b:02x}"


def load_step(run_dir: Path, step: int | None) -> tuple[int, list[dict]]:
    path = Path(run_dir) / "samples.jsonl"
    if not path.exists():
        raise ConfigError(f"{path}: not found (log.samples_every = 0, or the run wrote no sample step yet)")
    rows = read_jsonl_log(path)[0]  # a torn last line (a kill mid-write) is dropped
    if not rows:
        raise ConfigError(f"{path}: no sample step written yet")
    steps = sorted({r["step"] for r in rows})
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ConfigError(f"--step {step}: {path} has steps {', '.join(map(str, steps))}")
    return step, [r for r in rows if r["step"] == step]


def render(run_dir: Path, step: int | None = None) -> tuple[str, int]:
    step, rows = load_step(run_dir, step)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(Path(run_dir).name)} step {step}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{esc(Path(run_dir).name)} — step {step}</h1>",
             "<p>Each trained rationale token is coloured by InTRO's correction factor w = clip(q/p, 0, C): "
             "q is the token's probability given the question <em>and</em> the answer, p given the question "
             "alone. Hover a token for w and log q/p.</p><p class='legend'>"
             + "".join(f"<span style='background:{colour(w)}'>w={w:g}</span>" for w in (0.25, 0.5, 1, 2, 4)) + "</p>"]
    trained = [r for r in rows if r.get("w")]
    parts.append(f"<p>{len(rows)} rollouts, {len(trained)} trained (coloured, shown first).</p>")
    for r in trained + [r for r in rows if not r.get("w")]:
        verdict = ("<span class='ok'>correct</span>" if r.get("correct") else "<span class='bad'>wrong</span>"
                   if r.get("correct") is not None else "")
        parts.append(f"<div class='sample' id='s{r['index']}'><div class='meta'>#{r['index']} · problem "
                     f"{esc(str(r['problem_id']))} · {verdict} · reward {r.get('reward')} · status "
                     f"{esc(str(r.get('status')))} · gold <code>{esc(str(r['answer']))}</code>"
                     f"{' · trained' if r.get('trained') else ''}</div>")
        parts.append(f"<div class='prompt'>{esc(r['prompt'])}</div>")
        if r.get("tokens") and r.get("w"):
            spans = [f"<span style='background:{colour(w)}' title='w={w:.3g} log q/p={lq:.3g}'>{esc(t)}</span>"
                     for t, w, lq in zip(r["tokens"], r["w"], r.get("log_q_over_p") or r["w"])]
            parts.append(f"<div class='z'>{''.join(spans)}</div>")
        else:
            parts.append(f"<div class='z'>{esc(r['completion'])}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts), step
