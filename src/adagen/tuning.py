"""Coordinate search over a static schedule's knobs: the tuned-static baseline.

A full grid over four knobs of four values is 256 cells; coordinate search tries each knob's values with the
others held at the best cell so far, knob after knob, for a number of sweeps, and never scores a cell twice.
The starting cell (the params' own schedule) is always scored, so the result is never worse than it on the
tuning signal. A cell's score may be several measurements, all kept with the cell.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping


def coordinate_search(grid: Mapping[str, list], start: Mapping[str, Any],
                      score: Callable[[dict], float | Mapping[str, float]], *,
                      key: Callable[[dict], Any] = lambda row: row["score"], sweeps: int = 1) -> list[dict]:
    """Minimise `score(cell)` over cells {knob: value}; returns every scored cell in order, each with its score.

    `score` returns a number (kept as "score") or a mapping of measurements; `key` orders the scored rows (as for
    `min`), so a search can minimise one measurement, or maximise one and break its ties by another.
    """
    missing = [key for key in grid if key not in start]
    if missing:
        raise ValueError(f"knobs {missing} have no starting value")
    scored: dict[tuple, dict] = {}

    def visit(cell: dict) -> dict:
        cell_id = tuple(cell[name] for name in grid)
        if cell_id not in scored:
            measured = score(cell)
            measured = dict(measured) if isinstance(measured, Mapping) else {"score": measured}
            scored[cell_id] = {**cell, **{name: float(value) for name, value in measured.items()}}
        return scored[cell_id]

    best = visit({name: start[name] for name in grid})
    for _ in range(sweeps):
        before = best
        for name, values in grid.items():
            for value in values:
                row = visit({**{knob: best[knob] for knob in grid}, name: value})
                if key(row) < key(best):
                    best = row
        if best is before:  # a sweep that moved nothing: a local optimum of the search
            break
    return list(scored.values())
