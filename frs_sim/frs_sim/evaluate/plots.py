"""Figures of a comparison: success per setting, end-effector paths of one episode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from frs_sim.evaluate.rollout import METHODS, EpisodeResult


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_success(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Bar plot of success per setting with Wilson 95% error bars."""
    plt = pyplot()
    colors = {m: f"C{i}" for i, m in enumerate(METHODS)}
    labels = [f"{r['label']}\n[{r['split']}]" for r in rows]
    rates = np.array([100 * r["success_rate"] for r in rows])
    low = np.array([100 * r["ci95"][0] for r in rows])
    high = np.array([100 * r["ci95"][1] for r in rows])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4.2), dpi=110)
    x = np.arange(len(rows))
    ax.bar(x, rates, color=[colors.get(r["method"], "0.5") for r in rows])
    # clipped: at 0 % / 100 % the Wilson bound can sit a rounding error inside the rate
    yerr = np.clip([rates - low, high - rates], 0.0, None)
    ax.errorbar(x, rates, yerr=yerr, fmt="none", ecolor="k", capsize=3)
    for xi, rate, row in zip(x, rates, rows, strict=True):
        ax.text(xi, rate + 1.5, f"{rate:.0f}%\nn={row['episodes']}", ha="center", fontsize=7)
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 110)
    ax.set_title("Success per method (95% Wilson CI)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_episode(steered: EpisodeResult, base: EpisodeResult | None, path: Path) -> Path:
    """End-effector paths of one episode: top-down (x-y) and side (x-z) views.

    Blue: executed path under steering; per steered chunk, grey dashed: the reference direction
    (its executed rows integrated from the chunk's start), red dotted: an unsteered sample from the
    same observation; orange: the base policy's own rollout with the same seed.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=110)
    for ax, (i, j, names) in zip(axes, ((0, 1, "xy"), (0, 2, "xz")), strict=True):
        start = np.asarray(steered.record[0].ee_start)
        path_pts = [start] + [np.asarray(p) for c in steered.record for p in c.executed]
        pts = np.array(path_pts)
        first_ref = first_uns = True
        for chunk in steered.record:
            if chunk.reference is None:
                continue
            origin = np.asarray(chunk.ee_start)
            rows = max(1, len(chunk.executed))
            ref = origin + np.cumsum(np.asarray(chunk.reference)[:rows], axis=0)
            ref = np.vstack([origin, ref])
            ax.plot(
                ref[:, i],
                ref[:, j],
                "--",
                color="0.55",
                lw=1,
                label="reference direction" if first_ref else None,
            )
            first_ref = False
            if chunk.unsteered is not None:
                uns = np.vstack([origin, origin + np.cumsum(np.asarray(chunk.unsteered), axis=0)])
                ax.plot(
                    uns[:, i],
                    uns[:, j],
                    ":",
                    color="C3",
                    lw=1.2,
                    label="unsteered sample" if first_uns else None,
                )
                first_uns = False
        ax.plot(
            pts[:, i],
            pts[:, j],
            "-o",
            color="C0",
            ms=2,
            lw=1.8,
            label=f"refined ({steered.setting}), {'success' if steered.success else 'fail'}",
        )
        deferred = [np.asarray(c.ee_start) for c in steered.record if c.deferred]
        if deferred:
            d = np.array(deferred)
            ax.scatter(
                d[:, i],
                d[:, j],
                marker="s",
                facecolor="none",
                edgecolor="k",
                s=30,
                label="chunk deferred to the policy",
                zorder=5,
            )
        if base is not None and base.record:
            b0 = np.asarray(base.record[0].ee_start)
            bpts = np.array([b0] + [np.asarray(p) for c in base.record for p in c.executed])
            ax.plot(
                bpts[:, i],
                bpts[:, j],
                "-",
                color="C1",
                lw=1.4,
                alpha=0.8,
                label=f"base policy rollout, {'success' if base.success else 'fail'}",
            )
        obj = steered.objects or {}
        if "cube" in obj:
            ax.scatter(
                obj["cube"][i],
                obj["cube"][j],
                marker="s",
                s=120,
                color="C2",
                label="task cube",
                zorder=6,
            )
        if "mat" in obj:
            ax.scatter(
                obj["mat"][i],
                obj["mat"][j],
                marker="X",
                s=120,
                color="C4",
                label="task mat",
                zorder=6,
            )
        for k, cube in enumerate(obj.get("other_cubes", [])):
            ax.scatter(
                cube[i],
                cube[j],
                marker="s",
                s=60,
                color="0.7",
                label="other cubes" if k == 0 else None,
            )
        for k, mat in enumerate(obj.get("other_mats", [])):
            ax.scatter(
                mat[i],
                mat[j],
                marker="x",
                s=60,
                color="0.7",
                label="other mats" if k == 0 else None,
            )
        ax.set_xlabel(f"{names[0]} (m)")
        ax.set_ylabel(f"{names[1]} (m)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title("top-down (x-y)" if names == "xy" else "side (x-z)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{steered.task}, seed {steered.seed}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
