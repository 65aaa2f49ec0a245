"""Time `AdamW.step()` alone over all MiniLM-L6 parameters (FFT's optimizer): loop vs foreach vs fused.

    python benchmarks/adamw_step.py [--threads N] [--reps 10]

Loop is what `TrainingArguments(optim="adamw_torch")` gives on the CPU (torch leaves foreach/fused
off there); fused is `optim="adamw_torch_fused"`, HF Trainer's default for torch >= 2.8. The three
optimizers step in turn in every repetition on the same parameters and random gradients.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    from peftlab.models import load_model

    params = list(load_model(None, num_labels=2).parameters())
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
    optimizers = {name: torch.optim.AdamW(params, lr=1e-4, **kwargs) for name, kwargs in
                  (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for rep in range(args.reps + 2):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            if rep >= 2:  # two warm-up steps (state allocation)
                times[name].append(time.perf_counter() - start)
    n = sum(p.numel() for p in params)
    print(f"AdamW.step over {n:,} parameters, threads={torch.get_num_threads()}, {args.reps} reps")
    for name, t in times.items():
        print(f"{name:8s} median {1e3 * statistics.median(t):8.1f} ms   min {1e3 * min(t):8.1f} ms")


if __name__ == "__main__":
    main()
