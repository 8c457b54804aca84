"""The probe's screen tables and its PNG (w and KL by relative position)."""

from __future__ import annotations

from pathlib import Path

from intro_lite.probe.stats import PER_POSITION

VERDICT_STYLE = {"signal": "green", "little signal": "yellow", "misleading": "red"}


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def render(res: dict, console) -> None:
    from rich.table import Table

    acc, unc, chk, mis = res["accuracy"], res["uncertainty"], res["posterior_check"], res["misleading"]
    st = res["settings"]
    top = Table(title=f"InTRO teacher probe: {res['name']} ({st['n_problems']} problems x {st['group_size']} rollouts)")
    top.add_column("measure")
    top.add_column("value", justify="right")
    rows = [
        ("accuracy with x", _f(acc["plain"])),
        ("accuracy with x ⊕ y", _f(acc["hinted"])),
        ("  hinted, correct and deriving y (last number before the answer = y)", _f(acc["hinted_reaching_y"])),
        ("  share of correct hinted / plain rationales that derive y",
         f"{_f(acc['hinted_derived_frac'])} / {_f(acc['plain_derived_frac'])}"),
        ("mean length x / x ⊕ y (tokens)", f"{acc['plain_mean_length']:.1f} / {acc['hinted_mean_length']:.1f}"),
        ("kept rationales (positions)", f"{res['kept']['rationales']} ({res['kept']['positions']})"),
        ("share of KL(q‖p) on answer / final value / rest tokens",
         " / ".join(_f(res["kl_share"][c]) for c in ("answer", "final_value", "rest"))),
        ("KL(q‖p) summed along a kept rationale, mean", _f(res["sequence_kl_mean"])),
        ("uncertain positions (H(p) > entropy), all / rest",
         f"{_f(unc['uncertain_frac'])} / {_f(unc['uncertain_frac_rest'])}"),
        ("... where the teacher moves mass (TV > tv), all / rest",
         f"{_f(unc['moved_frac'])} / {_f(unc['moved_frac_rest'])}"),
        (f"posterior check: Spearman(log w, MC log w*) pooled / within, {chk['n_pairs']} pairs",
         f"{_f(chk.get('spearman_pooled'))} / {_f(chk.get('spearman_within_mean'))}"),
        ("posterior check: KL to the MC posterior, teacher / policy",
         f"{_f(chk.get('kl_teacher_to_mc_posterior'))} / {_f(chk.get('kl_policy_to_mc_posterior'))}"),
        (f"q(EOS)/p(EOS) where kept rationales end (geometric mean, {mis['n_ends']} ends)", _f(mis["eos_ratio"])),
    ]
    for r in rows:
        top.add_row(*r)
    console.print(top)
    by = Table(title="kept rationales by position class and relative position (decile of the length)")
    for col in ("positions", "n", *PER_POSITION):
        by.add_column(col, justify="right")
    for name in ("answer", "final_value", "rest", "all"):
        by.add_row(name, *_cells(res["by_class"][name]))
    for d in res["by_decile"]:
        by.add_row(f"{10 * d['decile']}-{10 * d['decile'] + 10}%", *_cells(d))
    console.print(by)
    if "note" in chk:
        console.print(f"posterior check: {chk['note']}", highlight=False)
    label = res["verdict"]["label"]
    console.print(f"verdict: [bold {VERDICT_STYLE[label]}]{label}[/]  (" + "; ".join(res["verdict"]["reasons"]) + ")",
                  highlight=False, soft_wrap=True)


def _cells(m: dict) -> list[str]:
    return [str(m.get("n", 0)), *(_f(m.get(k)) for k in PER_POSITION)]


def plot(res: dict, path: Path) -> None:
    """Mean w and |log w| of the own token, and mean KL(q‖p), by decile of relative position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from intro_lite.io import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    ds = [d for d in res["by_decile"] if d["n"]]
    xs = [10 * d["decile"] + 5 for d in ds]
    left.plot(xs, [d["w_own"] for d in ds], marker="o", label="mean w (own token)")
    left.plot(xs, [d["abs_log_w"] for d in ds], marker="s", label="mean |log w|")
    left.axhline(1.0, color="gray", lw=0.8, ls=":")
    right.plot(xs, [d["kl"] for d in ds], marker="o", color="C2", label="mean KL(q‖p)")
    for name, ls in (("final_value", "--"), ("rest", "-.")):
        if res["by_class"][name].get("kl") is not None:
            right.axhline(res["by_class"][name]["kl"], color="gray", lw=1, ls=ls, label=f"{name.replace('_', ' ')} tokens")
    for ax, title in ((left, "InTRO weight"), (right, "teacher vs policy")):
        ax.set_xlabel("relative position in the kept rationale (%)")
        ax.set_xlim(0, 100)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{res['name']}: {res['verdict']['label']}")
    save_figure(fig, path)
