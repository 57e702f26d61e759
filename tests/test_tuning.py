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


def test_orders_cells_by_a_key_of_several_measurements():
    # The fidelity policy's start: the highest precision, ties broken by the lower recall; every measurement kept.
    precision = {0.25: 0.99, 0.5: 0.99, 1.0: 0.98}
    rows = coordinate_search({"temp": [0.25, 0.5]}, {"temp": 1.0},
                             lambda cell: {"precision": precision[cell["temp"]], "recall": cell["temp"] / 2},
                             key=lambda row: (-row["precision"], row["recall"]))
    assert [row["temp"] for row in rows] == [1.0, 0.25, 0.5]
    assert min(rows, key=lambda row: (-row["precision"], row["recall"]))["temp"] == 0.25
    assert rows[0] == {"temp": 1.0, "precision": 0.98, "recall": 0.5}
