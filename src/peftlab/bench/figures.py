"""Bench figures, drawn from bench.csv only (compute first, plot later): each can be redrawn without a model.

    score_vs_params.png      score vs trainable params (log x), Pareto front (no cell has ≥ score with ≤ params)
    score_vs_train_time.png  score vs mean train seconds
    latency.png              latency bars per cell, batch 1 and 8, unmerged and merged
    rank_sweep.png           score vs rank, one line per (method, targets)
    heatmap_<method>.png     targets × rank heatmap of the mean score, one per low-rank method
Error bars are the sample std over seeds (none with one seed).
"""

from __future__ import annotations

from pathlib import Path


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points (params, score) not dominated by another (≤ params and ≥ score, one strictly)."""
    front = []
    for i, (p_i, s_i) in enumerate(points):
        dominated = any((p_j <= p_i and s_j >= s_i) and (p_j < p_i or s_j > s_i)
                        for j, (p_j, s_j) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def draw_figures(csv_path: Path, fig_dir: Path, batches: list[int]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    df = pd.read_csv(csv_path)
    df = df[df["score_mean"].notna()].reset_index(drop=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if df.empty:
        return written
    metric = str(df["metric"].iloc[0])
    labels = df["cell"].astype(str).tolist()
    yerr = df["score_std"].fillna(0.0)

    def save(fig, name: str) -> None:
        path = fig_dir / name
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.tight_layout()
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(df["trainable_params"], df["score_mean"], yerr=yerr, fmt="o", capsize=3)
    for x, y, text in zip(df["trainable_params"], df["score_mean"], labels):
        ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(list(zip(df["trainable_params"], df["score_mean"])))
    ax.step(df["trainable_params"].iloc[front], df["score_mean"].iloc[front], "r--", where="post", label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (with classifier, log)", ylabel=f"dev {metric} (mean ± std over seeds)")
    ax.legend()
    save(fig, "score_vs_params.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(df["train_s_mean"], df["score_mean"], yerr=yerr, xerr=df["train_s_std"].fillna(0.0), fmt="o",
                capsize=3)
    for x, y, text in zip(df["train_s_mean"], df["score_mean"], labels):
        ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="train time per run (s, mean over seeds)", ylabel=f"dev {metric}")
    save(fig, "score_vs_train_time.png")

    cols = [c for b in batches for c in (f"latency_b{b}_ms", f"latency_b{b}_merged_ms") if c in df]
    if cols:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(df) * len(cols) / 2), 4.5))
        width = 0.8 / len(cols)
        for k, col in enumerate(cols):
            ax.bar([i + k * width for i in range(len(df))], df[col].fillna(0.0), width, label=col.replace("_ms", ""))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(df))], labels, rotation=45, ha="right", fontsize=7)
        ax.set(ylabel="median latency (ms)", title="no merged bar: not mergeable or nothing to merge")
        ax.legend(fontsize=7)
        save(fig, "latency.png")

    ranked = df[df["rank"].notna()]
    if not ranked.empty:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (method, targets), group in ranked.groupby(["method", ranked["targets"].fillna("")], sort=False):
            group = group.sort_values("rank")
            ax.errorbar(group["rank"], group["score_mean"], yerr=group["score_std"].fillna(0.0), marker="o",
                        capsize=3, label=f"{method} {targets}".strip())
        ax.set_xscale("log", base=2)
        ax.set(xlabel="rank (adapter: bottleneck)", ylabel=f"dev {metric}")
        ax.legend(fontsize=7)
        save(fig, "rank_sweep.png")
        for method, group in ranked[ranked["targets"].notna()].groupby("method", sort=False):
            table = group.pivot_table(index="targets", columns="rank", values="score_mean")
            fig, ax = plt.subplots(figsize=(1.2 + 0.8 * table.shape[1], 1.2 + 0.5 * table.shape[0]))
            image = ax.imshow(table.values, aspect="auto", cmap="viridis")
            ax.set_xticks(range(table.shape[1]), [str(int(c)) for c in table.columns])
            ax.set_yticks(range(table.shape[0]), table.index)
            for (i, j), value in np.ndenumerate(table.values):
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7, color="w")
            ax.set(xlabel="rank", ylabel="targets", title=f"{method}: dev {metric}")
            fig.colorbar(image, ax=ax)
            save(fig, f"heatmap_{method}.png")
    return written
