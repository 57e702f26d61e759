"""Coordinate search over a static schedule's knobs: the tuned-static baseline.

A full grid over four knobs of four values is 256 cells; coordinate search tries each knob's values with the
others held at the best cell so far, knob after knob, for a number of sweeps, and never scores a cell twice.
The starting cell (the params' own schedule) is always scored, so the result is never worse than it on the
tuning signal.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping


def coordinate_search(grid: Mapping[str, list], start: Mapping[str, Any], score: Callable[[dict], float], *,
                      sweeps: int = 1) -> list[dict]:
    """Minimise `score(cell)` over cells {knob: value}; returns every scored cell in order, each with "score"."""
    missing = [key for key in grid if key not in start]
    if missing:
        raise ValueError(f"knobs {missing} have no starting value")
    scored: dict[tuple, dict] = {}

    def visit(cell: dict) -> dict:
        key = tuple(cell[name] for name in grid)
        if key not in scored:
            scored[key] = {**cell, "score": float(score(cell))}
        return scored[key]

    best = visit({name: start[name] for name in grid})
    for _ in range(sweeps):
        before = best
        for name, values in grid.items():
            for value in values:
                row = visit({**{knob: best[knob] for knob in grid}, name: value})
                if row["score"] < best["score"]:
                    best = row
        if best is before:  # a sweep that moved nothing: a local optimum of the search
            break
    return list(scored.values())
