"""Coordinate search of the tuned-static baseline."""

from __future__ import annotations

import pytest

from adagen.tuning import coordinate_search


def test_finds_the_minimum_of_a_separable_score_scoring_each_cell_once():
    grid = {"cfg": [0.5, 1.0, 2.0, 3.0], "schedule": ["cosine", "linear", "square"]}
    target = {"cfg": 2.0, "schedule": "square"}
    calls = []

    def score(cell):
        calls.append(dict(cell))
        return abs(cell["cfg"] - target["cfg"]) + (cell["schedule"] != target["schedule"])

    rows = coordinate_search(grid, {"cfg": 1.0, "schedule": "cosine", "steps": 8}, score, sweeps=3)
    best = min(rows, key=lambda row: row["score"])
    assert {key: best[key] for key in grid} == target and best["score"] == 0
    assert calls[0] == {"cfg": 1.0, "schedule": "cosine"}  # the params' own schedule is always scored first
    cells = [tuple(sorted(call.items())) for call in calls]
    assert len(cells) == len(set(cells)) == len(rows)  # no cell twice
    # Sweep 1: the start, 3 more cfg values, 2 more schedules (optimum found); sweep 2 tries the cfg values again
    # under the new schedule (3 new cells) and changes nothing, so the search stops before sweep 3.
    assert len(rows) == 1 + 3 + 2 + 3


def test_keeps_the_start_when_nothing_beats_it():
    rows = coordinate_search({"cfg": [0.5, 2.0]}, {"cfg": 1.0}, lambda cell: abs(cell["cfg"] - 1.0))
    assert min(rows, key=lambda row: row["score"])["cfg"] == 1.0


def test_a_knob_without_a_starting_value_is_an_error():
    with pytest.raises(ValueError, match=r"knobs \['top_p'\] have no starting value"):
        coordinate_search({"top_p": [0.9]}, {"cfg": 1.0}, lambda cell: 0.0)
