"""`peftlab bench --save-matrices`: every adapted module's ΔW of a run, and its size and shape statistics.

    <bench>/matrices/<cell>/seed<S>/delta_weights.safetensors   {HF module name: ΔW fp32} (method.delta_weights)
    <bench>/matrices/<cell>/seed<S>/delta_stats.csv             one row per module:
        module, shape, frobenius = ‖ΔW‖_F = √Σσ_i², spectral = σ_max,
        effective_rank = exp(H(p)), p_i = σ_i / Σ_j σ_j, H(p) = −Σ p_i ln p_i   (Roy & Vetterli 2007)
Singular values in float64 (`torch.linalg.svdvals`). A zero ΔW has effective rank 0 (no direction), not NaN.
Methods without a weight ΔW (adapter, bitfit, ln-tuning, prompt-tuning) write only a `note.txt` saying why.
"""

from __future__ import annotations

import math
from pathlib import Path

STATS_COLUMNS = ["module", "shape", "frobenius", "spectral", "effective_rank"]


def delta_stats(delta) -> dict:
    """Frobenius norm, spectral norm and entropy effective rank of one ΔW (see module docstring)."""
    import torch

    sigma = torch.linalg.svdvals(delta.double())  # [min(d_out, d_in)], descending
    total = float(sigma.sum())
    if total <= 0:
        erank = 0.0
    else:
        p = sigma[sigma > 0] / total
        erank = math.exp(float(-(p * p.log()).sum()))
    return {"shape": "x".join(map(str, delta.shape)), "frobenius": float(sigma.pow(2).sum().sqrt()),
            "spectral": float(sigma[0]) if sigma.numel() else 0.0, "effective_rank": erank}


def save_run_matrices(run_dir: Path, out_dir: Path) -> Path:
    """Write ΔW and its statistics of the finished run `run_dir` into `out_dir`; returns `out_dir`."""
    from safetensors.torch import save

    from peftlab.bench.table import to_csv
    from peftlab.io import atomic_write_bytes, atomic_write_text, read_json
    from peftlab.methods import get_method
    from peftlab.runs import load_run_model

    method = get_method(read_json(Path(run_dir) / "run_config.json")["method"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if getattr(method, "delta_note", None):
        atomic_write_text(out_dir / "note.txt", f"no ΔW matrices for {method.name}: {method.delta_note}\n")
        return out_dir
    model_init, _, _ = load_run_model(run_dir, "init")
    model_final, _, _ = load_run_model(run_dir, "final")
    deltas = {name: d.float().contiguous() for name, d in method.delta_weights(model_final, model_init).items()}
    rows = [{"module": name, **delta_stats(d)} for name, d in deltas.items()]
    atomic_write_bytes(out_dir / "delta_weights.safetensors", save(deltas, metadata={"format": "pt"}))
    atomic_write_text(out_dir / "delta_stats.csv", to_csv(rows, STATS_COLUMNS))
    return out_dir
