"""SYNTHETIC run directories shaped like docs/CONTRACTS.md, for the analysis tests only.

Nothing here is a measurement: every file written says so (`"synthetic": true` in each JSON object and
JSONL row, a `note`), and the study report of a synthetic run carries "SYNTHETIC" in its title.
This module lives under tests/ on purpose: nothing in src/ may write synthetic runs.

`make_fixture_run(out, "lora", seed=1, rank=8)` writes `<out>/LoRA/RTE/seed1_r8/` with every file a
trained and measured run has (run_config.json, final_metrics.json, eval_subset.json, the per-head JSONL
tables, probe.json, importance_taylor_vs_exact.json, measure_manifest.json) but no checkpoints: the
analysis reads only saved tables. Numbers come from a seeded numpy RNG with a planted structure (G
follows I_pre; FFT's U follows I_pre, LoRA's U does not; head importance is mostly a property of the
shared pretrained body, so it is stable across seeds). θ0 quantities (I_pre, G, F) depend only on
(rng_seed, seed): two methods of the same seed share θ0, as real runs do.

Row formats: the session-6 contract by default (I exact with I_se / I_ci_*, signed dL_dgate, G_se,
plasticity_classifier, probe held-out fields); `legacy=True` writes the older rows without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import stats as sps

from peftlab.io import atomic_write_json, write_jsonl_atomic

NOTE = "SYNTHETIC fixture written by tests/fixtures_runs.py: not a measurement"
# method registry key → run-dir component (as `peftlab.methods` names them; kept here so that
# generating fixtures never imports torch).
DIR_NAMES = {"fft": "FFT", "lora": "LoRA", "peft-lora": "PEFT-LoRA"}
LOW_RANK = {"fft": False, "lora": True, "peft-lora": True}
MEASUREMENT_FILES = ("eval_subset", "importance_pre", "importance_post", "gradfisher_pre", "update",
                     "importance_taylor_vs_exact", "probe")
N_EXAMPLES = 256


def fixture_run_dir(out: str | Path, method: str, seed: int, rank: int | None, task: str = "RTE") -> Path:
    """`<out>/<DirName>/<TASK>/seed<S>[_r<R>]` for a method registry key."""
    name = f"seed{seed}_r{rank}" if LOW_RANK[method] else f"seed{seed}"
    return Path(out) / DIR_NAMES[method] / task / name


def _method_code(method: str) -> int:
    # a stable integer per method for the RNG seed sequence (str hash() is salted per process)
    return sum(ord(c) * (i + 1) for i, c in enumerate(method))


def _mark(obj: dict) -> dict:
    return {**obj, "synthetic": True}


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
    legacy: bool = False,
    taylor_only: Iterable[str] = (),
    se_scale: float = 0.002,
    probe_better: bool = True,
) -> Path:
    """Write a complete synthetic run directory and return its path.

    `skip`: measurement files to leave out (names from MEASUREMENT_FILES, without extension).
    `taylor=False` writes null Taylor fields and no taylor-vs-exact file. `taylor_only`: phases
    ("pre", "post") measured with Taylor only (new rows: I null; legacy rows: I = taylor, impl null,
    loss_ablate null — as the old measure code wrote them). `se_scale`: typical I_se (larger →
    importance at noise level). `probe_better=False` makes the probe's held-out metric not beat chance.
    """
    skip, taylor_only = set(skip), set(taylor_only)
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
    latent = body_rng.normal(size=n) + 0.4 * theta0_rng.normal(size=n)
    i_pre = 0.02 * np.exp(latent) - 0.005 + 0.002 * theta0_rng.normal(size=n)
    g_abs = 0.01 * np.exp(0.8 * latent + 0.5 * theta0_rng.normal(size=n))
    fisher = g_abs**2 * (1.0 + theta0_rng.uniform(0.2, 1.0, size=n))
    se_pre = se_scale * np.exp(0.3 * theta0_rng.normal(size=n))

    # θ1: depends on the method and rank too
    method_rng = np.random.default_rng([rng_seed, seed, _method_code(method), rank_used or 0])
    coupling = 0.35 if method == "fft" else 0.0  # FFT's update follows importance, LoRA's does not
    scale = 0.05 if method == "fft" else 0.01 * (rank_used or 8) ** 0.5
    head_noise = method_rng.normal(size=(n, 1))  # shared by the 4 slices of a head
    u_parts = scale * np.exp(coupling * latent[:, None] + 0.6 * head_noise
                             + 0.2 * method_rng.normal(size=(n, 4)))  # [n, 4]: q, k, v, o
    w_norms = 2.0 + 0.1 * theta0_rng.normal(size=(n, 4))  # ‖W0‖_F of each slice, [n, 4]
    i_post = i_pre * np.exp(0.3 * method_rng.normal(size=n)) + 0.003 * method_rng.normal(size=n)
    se_post = se_scale * np.exp(0.3 * method_rng.normal(size=n))
    # first-order importance −dL/dg ≈ I (plus curvature): the signed gate derivative is ≈ −I
    dl_pre = -(i_pre + 0.003 * theta0_rng.normal(size=n))
    dl_post = -(i_post + 0.003 * method_rng.normal(size=n))
    loss_base_pre, loss_base_post = 0.69, 0.55
    t_crit = float(sps.t.ppf(0.975, N_EXAMPLES - 1))

    layers = np.repeat(np.arange(n_layers), n_heads)  # [n] layer of each head, (layer, head) order
    heads = np.tile(np.arange(n_heads), n_layers)  # [n]

    def importance_rows(values, se, dl, loss_base, theta0, phase):
        rows = []
        for i in range(n):
            tay = float(abs(dl[i])) if taylor else None
            exact = phase not in taylor_only
            value = float(values[i]) if exact else None
            row = {"layer": int(layers[i]), "head": int(heads[i])}
            if legacy:
                row["I"] = value if exact else tay
            else:
                row.update({"I": value, "I_se": float(se[i]) if exact else None,
                            "I_ci_low": value - t_crit * float(se[i]) if exact else None,
                            "I_ci_high": value + t_crit * float(se[i]) if exact else None})
            row.update({"loss_base": loss_base, "loss_ablate": loss_base + value if exact else None,
                        "metric_name": "accuracy", "metric_base": 0.6,
                        "metric_ablate": 0.6 - value if exact else None, "n_examples": N_EXAMPLES,
                        "theta0": theta0, "impl": "fast" if exact else None})
            if not legacy:
                row["dL_dgate"] = float(dl[i]) if taylor else None
            row["taylor"] = tay
            rows.append(_mark(row))
        return rows

    files: dict[str, object] = {}
    files["eval_subset"] = _mark({"task": task, "split": "dev", "indices": list(range(N_EXAMPLES)),
                                  "size": N_EXAMPLES, "seed": 999, "source": f"data/glue/{task}/dev.tsv",
                                  "note": NOTE})
    files["importance_pre"] = importance_rows(i_pre, se_pre, dl_pre, loss_base_pre, "probe", "pre")
    files["importance_post"] = importance_rows(i_post, se_post, dl_post, loss_base_post, None, "post")
    grad_rows = []
    for i in range(n):
        row = {"layer": int(layers[i]), "head": int(heads[i]), "G": float(g_abs[i])}
        if not legacy:
            row["G_se"] = float(0.1 * g_abs[i])
        row["F"] = float(fisher[i])
        if not legacy:
            row["F_se"] = float(0.2 * fisher[i])
        row.update({"n_examples": N_EXAMPLES, "batch_size": 32, "per": "example", "theta0": "probe"})
        if not legacy:
            row["plasticity_classifier"] = "init"
        grad_rows.append(_mark(row))
    files["gradfisher_pre"] = grad_rows
    update_rows = []
    for i in range(n):
        u = u_parts[i]
        row = {"kind": "head", "layer": int(layers[i]), "head": int(heads[i]), "kv_head": int(heads[i]),
               "U": float(np.sqrt((u**2).sum())), "Urel": float(np.sqrt((u**2).sum() / (w_norms[i] ** 2).sum()))}
        row.update({f"U_{c}": float(u[j]) for j, c in enumerate("qkvo")})
        row.update({f"Urel_{c}": float(u[j] / w_norms[i, j]) for j, c in enumerate("qkvo")})
        update_rows.append(_mark(row))
    for layer in range(n_layers):
        update_rows.append(_mark({"kind": "ffn", "layer": layer, "head": None, "U_ffn_in": 0.1, "U_ffn_out": 0.1,
                                  "Urel_ffn_in": 0.01, "Urel_ffn_out": 0.01}))
    files["update"] = update_rows
    if taylor and not taylor_only:
        pre = sps.spearmanr(np.abs(dl_pre), i_pre)
        post = sps.spearmanr(np.abs(dl_post), i_post)
        files["importance_taylor_vs_exact"] = _mark({
            "pre": {"spearman": float(pre.statistic), "p": float(pre.pvalue), "n_heads": n},
            "post": {"spearman": float(post.statistic), "p": float(post.pvalue), "n_heads": n}, "note": NOTE})
    probe = {"method": "cached-features", "n_examples": 256, "steps": 200, "lr": 1e-3, "train_loss": 0.62,
             "train_accuracy": 0.66, "subset_loss": loss_base_pre, "subset_metric": 0.6, "note": NOTE}
    if not legacy:
        heldout = 0.58 if probe_better else 0.49
        probe.update({"heldout_loss": 0.68 if probe_better else 0.71, "heldout_metric": heldout,
                      "metric_name": "accuracy", "chance_loss": 0.693, "chance_metric": 0.51,
                      "better_than_chance": probe_better, "margin_rule": "heldout_metric > chance_metric",
                      "n_train": 256, "n_heldout": 256})
    files["probe"] = _mark(probe)

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
    atomic_write_json(run_dir / "run_config.json", _mark({
        "config": config, "method": method, "task": task, "versions": {"peftlab": "fixture"},
        "git_commit": None, "created": "2026-01-01T00:00:00", "note": NOTE}))
    score = 0.62 + 0.01 * seed + (0.02 if method == "fft" else 0.004 * np.log2(rank_used or 8))
    trainable = 22_713_986 if method == "fft" else (rank_used or 8) * 2 * 384 * 4 * n_layers + 384 * 2 + 2
    atomic_write_json(run_dir / "final_metrics.json", _mark({
        "task": task, "method": method, "seed": seed, "rank": rank_used, "dev": {"accuracy": float(score)},
        "main_metric": "accuracy", "score": float(score),
        "timing": {"data_s": 1.0, "train_s": 300.0 if method == "fft" else 120.0 + 2.0 * (rank_used or 8),
                   "eval_s": 5.0, "save_s": 1.0, "total_s": 400.0},
        "peak_memory_mb": 900.0, "trainable_params": int(trainable), "total_params": 22_713_986,
        "finished": True, "note": NOTE}))
    steps = [s for s in ("subset", "importance_pre", "gradfisher_pre", "update", "importance_post")
             if (s if s != "subset" else "eval_subset") not in skip]
    atomic_write_json(run_dir / "measure_manifest.json", _mark({
        "steps": {s: {"settings": {}, "seconds": 1.0, "finished": True} for s in steps}, "note": NOTE}))
    return run_dir
