"""Test and train splits of unique problems, shared by the tiny tasks."""

from __future__ import annotations

from collections.abc import Callable


def unique_splits(draw: Callable, *, n_test: int, n_train: int) -> dict[str, list[dict[str, str]]]:
    """``{"test", "train"}`` from ``draw() -> (problem text, make(split, index) -> record)``, test first,
    every problem text unique across both (duplicates would only skew accuracy); ``make`` runs only
    for a new text, so the records it draws do not depend on the duplicates skipped."""
    out: dict[str, list[dict[str, str]]] = {"test": [], "train": []}
    seen: set[str] = set()
    for split, n in (("test", n_test), ("train", n_train)):
        attempts = 0
        while len(out[split]) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise RuntimeError(f"task space too small for {n} unique {split} problems")
            text, make = draw()
            if text in seen:
                continue
            seen.add(text)
            out[split].append(make(split, len(out[split])))
    return out
