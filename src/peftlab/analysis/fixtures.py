"""Synthetic run directories that follow docs/CONTRACTS.md exactly, for tests and demos of the analysis.

`make_fixture_run(out, "lora", seed=1, rank=8)` writes `<out>/LoRA/RTE/seed1_r8/` with every file a
trained and measured run has (run_config.json, final_metrics.json, eval_subset.json, the per-head JSONL
tables, importance_taylor_vs_exact.json, measure_manifest.json) but no checkpoints: the analysis reads
only saved tables, so this is all it needs. Numbers are drawn from a seeded numpy RNG with a planted
structure (G follows I_pre; FFT's U follows I_pre, LoRA's U does not; head importance is mostly a
property of the shared pretrained body, so it is stable across seeds), so correlations have a known
sign. θ0 quantities (I_pre, G, F) depend only on (rng_seed, seed): two methods of the same seed share
θ0, as real runs do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from peftlab.io import atomic_write_json, write_jsonl_atomic

# method registry key → run-dir component (as `peftlab.methods` names them; kept here so that
# generating fixtures never imports torch).
DIR_NAMES = {"fft": "FFT", "lora": "LoRA", "peft-lora": "PEFT-LoRA"}
LOW_RANK = {"fft": False, "lora": True, "peft-lora": True}
MEASUREMENT_FILES = ("eval_subset", "importance_pre", "importance_post", "gradfisher_pre", "update",
                     "importance_taylor_vs_exact")


def fixture_run_dir(out: str | Path, method: str, seed: int, rank: int | None, task: str = "RTE") -> Path:
    """`<out>/<DirName>/<TASK>/seed<S>[_r<R>]` for a method registry key."""
    name = f"seed{seed}_r{rank}" if LOW_RANK[method] else f"seed{seed}"
    return Path(out) / DIR_NAMES[method] / task / name


def _method_code(method: str) -> int:
    # a stable integer per method for the RNG seed sequence (str hash() is salted per process)
    return sum(ord(c) * (i + 1) for i, c in enumerate(method))


def make_fixture_run(
    out: str | Path,
    method: str = "fft",
    seed: int = 1,
    rank: int | None = 8,
    n_layers: int = 6,
    n_heads: int = 12,
    rng_seed: int = 0,
    *,
    task: str = "RTE",
    model: str | None = None,
    skip: Iterable[str] = (),
    taylor: bool = True,
) -> Path:
    """Write a complete synthetic run directory and return its path.

    `skip`: measurement files to leave out (names from MEASUREMENT_FILES, without extension), to test
    the missing-input paths. `taylor=False` writes `taylor: null` and no taylor-vs-exact file.
    """
    skip = set(skip)
    unknown = skip - set(MEASUREMENT_FILES)
    if unknown:
        raise ValueError(f"unknown fixture files to skip: {sorted(unknown)}")
    run_dir = fixture_run_dir(out, method, seed, rank, task)
    run_dir.mkdir(parents=True, exist_ok=True)
    low_rank = LOW_RANK[method]
    rank_used = rank if low_rank else None
    n = n_layers * n_heads

    # θ0: depends on the seed only (shared by every method of that seed)
    body_rng = np.random.default_rng([rng_seed])  # the pretrained body: shared by all seeds
    theta0_rng = np.random.default_rng([rng_seed, seed])
    # one "how much the head matters" value per head: mostly the body's, a little the seed's
    latent = body_rng.normal(size=n) + 0.4 * theta0_rng.normal(size=n)
    i_pre = 0.02 * np.exp(latent) - 0.005 + 0.002 * theta0_rng.normal(size=n)
    g_abs = 0.01 * np.exp(0.8 * latent + 0.5 * theta0_rng.normal(size=n))
    fisher = g_abs**2 * (1.0 + theta0_rng.uniform(0.2, 1.0, size=n))

    # θ1: depends on the method and rank too
    method_rng = np.random.default_rng([rng_seed, seed, _method_code(method), rank_used or 0])
    coupling = 0.35 if method == "fft" else 0.0  # FFT's update follows importance, LoRA's does not
    scale = 0.05 if method == "fft" else 0.01 * (rank_used or 8) ** 0.5
    head_noise = method_rng.normal(size=(n, 1))  # shared by the 4 slices of a head: heads differ, not slices
    u_parts = scale * np.exp(coupling * latent[:, None] + 0.6 * head_noise
                             + 0.2 * method_rng.normal(size=(n, 4)))  # [n, 4]: q, k, v, o
    w_norms = 2.0 + 0.1 * theta0_rng.normal(size=(n, 4))  # ‖W0‖_F of each slice, [n, 4]
    i_post = i_pre * np.exp(0.3 * method_rng.normal(size=n)) + 0.003 * method_rng.normal(size=n)
    loss_base_pre, loss_base_post = 0.69, 0.55

    layers = np.repeat(np.arange(n_layers), n_heads)  # [n] layer of each head, (layer, head) order
    heads = np.tile(np.arange(n_heads), n_layers)  # [n]

    def importance_rows(values, loss_base, theta0, tay):
        return [
            {"layer": int(layers[i]), "head": int(heads[i]), "I": float(values[i]), "loss_base": loss_base,
             "loss_ablate": loss_base + float(values[i]), "metric_name": "accuracy", "metric_base": 0.6,
             "metric_ablate": 0.6 - float(values[i]), "n_examples": 256, "theta0": theta0,
             "impl": "fast", "taylor": (float(tay[i]) if taylor else None)}
            for i in range(n)
        ]

    files: dict[str, object] = {}
    files["eval_subset"] = {"task": task, "split": "dev", "indices": list(range(256)), "size": 256, "seed": 999,
                            "source": f"data/glue/{task}/dev.tsv"}
    taylor_pre = np.abs(i_pre + 0.003 * theta0_rng.normal(size=n))
    taylor_post = np.abs(i_post + 0.003 * method_rng.normal(size=n))
    files["importance_pre"] = importance_rows(i_pre, loss_base_pre, "probe", taylor_pre)
    files["importance_post"] = importance_rows(i_post, loss_base_post, None, taylor_post)
    files["gradfisher_pre"] = [
        {"layer": int(layers[i]), "head": int(heads[i]), "G": float(g_abs[i]), "F": float(fisher[i]),
         "n_examples": 256, "batch_size": 32, "per": "example", "theta0": "probe"}
        for i in range(n)
    ]
    update_rows = []
    for i in range(n):
        u = u_parts[i]
        row = {"kind": "head", "layer": int(layers[i]), "head": int(heads[i]), "kv_head": int(heads[i]),
               "U": float(np.sqrt((u**2).sum())), "Urel": float(np.sqrt((u**2).sum() / (w_norms[i] ** 2).sum()))}
        row.update({f"U_{c}": float(u[j]) for j, c in enumerate("qkvo")})
        row.update({f"Urel_{c}": float(u[j] / w_norms[i, j]) for j, c in enumerate("qkvo")})
        update_rows.append(row)
    for layer in range(n_layers):
        update_rows.append({"kind": "ffn", "layer": layer, "head": None, "U_ffn_in": 0.1, "U_ffn_out": 0.1,
                            "Urel_ffn_in": 0.01, "Urel_ffn_out": 0.01})
    files["update"] = update_rows
    if taylor:
        from scipy.stats import spearmanr

        pre = spearmanr(taylor_pre, i_pre)
        post = spearmanr(taylor_post, i_post)
        files["importance_taylor_vs_exact"] = {"pre": {"spearman": float(pre.statistic), "p": float(pre.pvalue)},
                                               "post": {"spearman": float(post.statistic), "p": float(post.pvalue)}}

    for name, content in files.items():
        if name in skip:
            continue
        if isinstance(content, list):
            write_jsonl_atomic(run_dir / f"{name}.jsonl", content)
        else:
            atomic_write_json(run_dir / f"{name}.json", content)

    config = {"task": task, "method": method, "seed": seed, "rank": rank if rank is not None else 8, "alpha": 16.0,
              "epochs": 3.0, "lr": None, "batch_size": 32, "model": model, "out": str(out),
              "targets": ["q", "k", "v", "o"], "max_len": 128}
    atomic_write_json(run_dir / "run_config.json", {
        "config": config, "method": method, "task": task, "versions": {"peftlab": "fixture"},
        "git_commit": None, "created": "2026-01-01T00:00:00"})
    score = 0.62 + 0.01 * seed + (0.02 if method == "fft" else 0.004 * np.log2(rank_used or 8))
    trainable = 22_713_986 if method == "fft" else (rank_used or 8) * 2 * 384 * 4 * n_layers + 384 * 2 + 2
    atomic_write_json(run_dir / "final_metrics.json", {
        "task": task, "method": method, "seed": seed, "rank": rank_used, "dev": {"accuracy": float(score)},
        "main_metric": "accuracy", "score": float(score),
        "timing": {"data_s": 1.0, "train_s": 300.0 if method == "fft" else 120.0 + 2.0 * (rank_used or 8),
                   "eval_s": 5.0, "save_s": 1.0, "total_s": 400.0},
        "peak_memory_mb": 900.0, "trainable_params": int(trainable), "total_params": 22_713_986,
        "finished": True})
    steps = [s for s in ("subset", "importance_pre", "gradfisher_pre", "update", "importance_post")
             if (s if s != "subset" else "eval_subset") not in skip]
    atomic_write_json(run_dir / "measure_manifest.json", {
        "steps": {s: {"settings": {}, "seconds": 1.0, "finished": True} for s in steps}})
    return run_dir
