"""Figures of the report: the schedules each variant applied, per step with their per-sample spread, and the
curves of AdaGen training. PNG files written atomically; matplotlib without a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the display-less backend)
import numpy as np  # noqa: E402

from adagen.io import atomic_path  # noqa: E402


def _save(figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_schedules(path: str | Path, title: str, actions: dict[str, dict[str, np.ndarray]]) -> None:
    """One panel per action: for each variant, the mean over samples at every step and a band of +-1 std
    (a static schedule has no band; an adaptive policy's band is its per-sample adaptation).

    `actions`: {variant: {action name: (N, T) values as applied}}.
    """
    names = list(next(iter(actions.values())))
    figure, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.0), squeeze=False)
    for axis, name in zip(axes[0], names):
        for variant, values in actions.items():
            steps = np.arange(values[name].shape[1])
            mean, spread = values[name].mean(axis=0), values[name].std(axis=0)
            axis.plot(steps, mean, marker="o", markersize=3, label=variant)
            axis.fill_between(steps, mean - spread, mean + spread, alpha=0.25)
        axis.set_title(name)
        axis.ticklabel_format(axis="y", useOffset=False)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(title, y=1.04)
    _save(figure, path)


def plot_training(path: str | Path, title: str, info: dict) -> None:
    """Reward, discriminator loss and the selection probes of one AdaGen training run (its info JSON)."""
    history, probes = info["history"], info.get("probes") or []
    iterations = np.arange(1, len(history) + 1)
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.0))
    axes[0].plot(iterations, [row["reward"] for row in history])
    axes[0].set_title("mean reward")
    axes[1].plot(iterations, [row["d/loss"] for row in history])
    axes[1].axhline(2 * np.log(2), color="grey", linestyle="--", linewidth=1, label="chance (2 ln 2)")
    axes[1].set_title("discriminator loss")
    axes[1].legend(fontsize=8)
    if probes:
        steps = [row["iteration"] for row in probes]
        for key in sorted(k for k in probes[0] if k.startswith("fid_")):
            axes[2].plot(steps, [row[key] for row in probes], marker="o", markersize=3, label=key)
        if info.get("selected_iteration") is not None:
            axes[2].axvline(info["selected_iteration"], color="grey", linestyle="--", linewidth=1, label="selected")
        axes[2].legend(fontsize=8)
    axes[2].set_title("probes (train split)")
    for axis in axes:
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
    figure.suptitle(title, y=1.04)
    _save(figure, path)


def plot_tradeoff(path: str | Path, title: str, rows: list[dict]) -> None:
    """The fidelity-diversity knob: precision against recall, one point per lambda, and FID against lambda."""
    lambdas = [row["lambda"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].plot([row["recall"] for row in rows], [row["precision"] for row in rows], color="grey", linewidth=1)
    points = axes[0].scatter([row["recall"] for row in rows], [row["precision"] for row in rows], c=lambdas,
                             cmap="viridis", zorder=3)
    figure.colorbar(points, ax=axes[0], label="lambda")
    axes[0].set_xlabel("recall (diversity)")
    axes[0].set_ylabel("precision (fidelity)")
    axes[1].plot(lambdas, [row["fid"] for row in rows], marker="o")
    axes[1].set_xlabel("lambda")
    axes[1].set_ylabel("FID")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle(f"{title}: adaptive (lambda 0) to fidelity policy (lambda 1)", y=1.04)
    _save(figure, path)


def plot_fid_vs_nfe(path: str | Path, title: str, points: list[dict]) -> None:
    """FID against total compute per sample (generator NFE, every candidate counted): the schedules at their
    NFE (mean +- std over the evaluation seeds) and the refined samplers (one seed, against the plain policy's
    FID on that seed). `points`: {"label", "nfe", "fid", "spread" (or None), "refined": bool}."""
    figure, axis = plt.subplots(figsize=(5.2, 3.6))
    for point in points:
        marker = "s" if point["refined"] else "o"
        # Points at one NFE side by side (a few percent apart on the log axis), so that none hides another.
        same = [other for other in points if other["nfe"] == point["nfe"]]
        shift = 2 ** (0.04 * (same.index(point) - (len(same) - 1) / 2))
        axis.errorbar(point["nfe"] * shift, point["fid"], yerr=point["spread"], fmt=marker, capsize=3,
                      label=point["label"])
    axis.set_xscale("log", base=2)
    axis.set_xlabel("generator NFE per sample (all candidates)")
    axis.set_ylabel("FID")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    figure.suptitle(title, y=1.02)
    _save(figure, path)
