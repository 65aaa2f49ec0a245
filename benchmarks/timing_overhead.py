"""The bench's own overhead: training time with vs without the step-timing callback (`training/timing.py`).

    python benchmarks/timing_overhead.py [--pairs 3] [--steps 8] [--batch-size 8] [--method lora] [--threads 1]

Two measurements, both printed as a fraction of the training time (goal, issue 10 §6: ≤ 2 %):

1. **Paired runs.** `train_run` on the packaged all-MiniLM-L6-v2 and real RTE rows, `--steps` optimizer
   steps (after one untimed warm-up run), once with `StepTimingCallback` (what every run does) and once with a do-nothing stand-in that
   registers no hooks, in ABBA order per pair (so drift from other processes hits both alike). Compared:
   `timing.train_s` of final_metrics.json (the optimizer steps). Reported: median of the paired ratios
   with/without and its range. On a shared machine single runs move by several percent, so the ratio's
   range says how much of it is noise.
2. **Direct cost.** The callback's own work per optimizer step — the forward pre/post hooks, the four
   step callbacks and their `perf_counter` calls — timed over `--calls` simulated steps in isolation,
   divided by the mean step time of the paired runs: an upper bound free of machine noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("PEFTLAB_DATA") or REPO.parent / "shared" / "data")


class NoTiming:
    """Stand-in for `StepTimingCallback` that measures nothing (the 'without' arm)."""

    def __init__(self, model):
        from transformers import TrainerCallback

        self._callback = TrainerCallback()

    def __getattr__(self, name):  # every on_* event: TrainerCallback's no-op
        return getattr(self._callback, name)

    def remove_hooks(self) -> None:
        pass

    def summary(self) -> dict:
        return {"note": "timing callback disabled (benchmarks/timing_overhead.py)"}


def train_once(args, out: Path, with_timing: bool) -> float:
    """`timing.train_s` of one fresh run (forced), with or without the step-timing callback."""
    import peftlab.training.timing as timing
    from peftlab.config import load_config
    from peftlab.io import read_json
    from peftlab.train import train_run

    real = timing.StepTimingCallback
    if not with_timing:
        timing.StepTimingCallback = NoTiming  # loop.py imports it from the module at train time
    try:
        cfg = load_config(None, [f"task=rte", f"method={args.method}", f"out={out}", f"data_dir={args.data_dir}",
                                 f"max_steps={args.steps}", f"batch_size={args.batch_size}", "max_len=128",
                                 f"max_train_samples={args.steps * args.batch_size}", "max_eval_samples=16",
                                 "eval_each_epoch=false", "save_steps=100000", "logging_steps=100000", "seed=1"])
        run_dir = train_run(cfg, force=True)
    finally:
        timing.StepTimingCallback = real
    return float(read_json(run_dir / "final_metrics.json")["timing"]["train_s"])


def direct_cost_s(calls: int) -> float:
    """Seconds of StepTimingCallback's own work per simulated optimizer step (hooks on a 1-parameter model)."""
    import torch

    from peftlab.training.timing import StepTimingCallback

    model = torch.nn.Linear(1, 1)
    callback = StepTimingCallback(model)
    x = torch.zeros(1, 1)
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(calls):
            callback.on_step_begin(None, None, None)
            model(x)
            callback.on_pre_optimizer_step(None, None, None)
            callback.on_optimizer_step(None, None, None)
            callback.on_step_end(None, None, None)
        with_cb = time.perf_counter() - start
        callback.remove_hooks()
        start = time.perf_counter()
        for _ in range(calls):
            model(x)
        bare = time.perf_counter() - start
    return max(0.0, with_cb - bare) / calls


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="ABBA pairs of runs")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--calls", type=int, default=20000, help="simulated steps for the direct cost")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    per_step = direct_cost_s(args.calls)
    with_s, without_s = [], []
    with tempfile.TemporaryDirectory(prefix="peftlab-timing-") as tmp:
        train_once(args, Path(tmp) / "warmup", True)  # untimed: the first run in a process pays lazy imports/init
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            for arm in order:
                seconds = train_once(args, Path(tmp) / ("with" if arm else "without"), arm)
                (with_s if arm else without_s).append(seconds)
                print(f"pair {pair + 1}: {'with' if arm else 'without'} timing callback: train_s {seconds:.2f}",
                      file=sys.stderr)
    ratios = [a / b for a, b in zip(with_s, without_s)]
    step_s = statistics.fmean(with_s + without_s) / args.steps
    print(f"{args.method}, MiniLM-L6, RTE batch {args.batch_size} x 128, {args.steps} steps, "
          f"threads={torch.get_num_threads()}, {args.pairs} ABBA pairs")
    print(f"train_s with callback:    median {statistics.median(with_s):.2f} s  ({', '.join(f'{s:.2f}' for s in with_s)})")
    print(f"train_s without callback: median {statistics.median(without_s):.2f} s  "
          f"({', '.join(f'{s:.2f}' for s in without_s)})")
    print(f"paired ratio with/without: median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}]  (goal <= 1.02)")
    print(f"direct cost of the callback: {per_step * 1e6:.1f} us per step = {100 * per_step / step_s:.4f} % of a "
          f"{step_s:.2f} s step (goal <= 2 %)")


if __name__ == "__main__":
    main()
