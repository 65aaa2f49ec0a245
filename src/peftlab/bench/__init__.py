"""`peftlab bench`: the method benchmark (issue 10) — which method, rank and target matrices give the best
score per trainable parameter, per second of training and per millisecond of inference.

    grid.py     the grid of (method, rank, targets) cells × seeds → validated TrainConfigs
    latency.py  inference latency of a trained model, unmerged and merged
    table.py    per-run rows → per-cell mean ± std → bench.csv / bench.md (best rank per targets set)
    figures.py  plots drawn from bench.csv only
    matrices.py `--save-matrices`: ΔW per adapted module + Frobenius / spectral norm / effective rank
    run.py      `run_bench`: train (finished runs skipped) → latency → tables → figures
"""
