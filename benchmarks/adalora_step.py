"""Time one AdaLoRA training step per rank-allocation signal, beside PEFT LoRA r=init_r on the same matrices.

    python benchmarks/adalora_step.py [--reps 10] [--batch-size 16] [--max-len 128] [--threads N] [--deltaT 1]

One process, the packaged all-MiniLM-L6-v2, real RTE training batches padded to --max-len.
A step = zero_grad, forward (+ PEFT's orthogonal regulariser for AdaLoRA), backward, AdamW.step and, for
AdaLoRA, `update_and_allocate(step)` (signal EMAs every step; masking every deltaT steps). The schedule puts
every timed step inside the budget-decrease phase, so with the default --deltaT 1 every step reallocates
(the upper bound of the allocation cost). Variants run interleaved in a rotating order in every repetition;
the table shows medians and the median of paired per-repetition ratios vs baseline_adalora and vs LoRA.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import DEFAULT_DATA, make_batches  # noqa: E402  (same real batches as the LoRA benchmark)

SIGNALS = ("baseline_adalora", "importance_only", "plasticity_only", "combo")


def build(init_r: int, target_r: int, targets: str, total: int, delta_t: int):
    """{label: (model, AdamW, is_adalora)}: PEFT LoRA r=init_r, then AdaLoRA for each signal."""
    from peftlab.config import TrainConfig
    from peftlab.methods import get_method
    from peftlab.methods.adalora_signals import make_allocator
    from peftlab.models import load_model

    base = load_model(None, num_labels=2)
    cfg = dataclasses.replace(TrainConfig(), targets=tuple(targets.split(",")), rank=init_r, alpha=16.0,
                              init_r=init_r, target_r=target_r, deltaT=delta_t, seed=1)
    variants = {}
    for label, name, signal in [(f"PEFT LoRA r={init_r}", "peft-lora", None)] + [(s, "adalora", s) for s in SIGNALS]:
        method = get_method(name)
        model = method.apply(copy.deepcopy(base), dataclasses.replace(cfg, method=name, signal=signal or "combo"))
        params = [p for _, p in method.trainable_parameters(model)]
        ids = {id(p) for p in params}
        for param in model.parameters():
            param.requires_grad_(id(param) in ids)
        if signal is not None:
            adalora = model.base_model
            config = adalora.peft_config["default"]
            config.total_step, config.tinit, config.tfinal = total, 0, 1  # every step lies in the decrease phase
            adalora.rankallocator = make_allocator(adalora.model, config, "default", signal, 0.9, 1.0)
        variants[label] = (model.train(), torch.optim.AdamW(params, lr=1e-4), signal is not None)
    return variants


def step(model, optimizer, batch, is_adalora: bool, global_step: int) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()
    if is_adalora:
        model.base_model.update_and_allocate(global_step)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="paired repetitions after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--init-r", type=int, default=12)
    parser.add_argument("--target-r", type=int, default=4)
    parser.add_argument("--targets", default="q,k,v,o,ffn_in,ffn_out")
    parser.add_argument("--deltaT", type=int, default=1, help="reallocate every deltaT steps (1 = every step)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from rich.console import Console
    from rich.table import Table

    from peftlab.models import load_tokenizer

    torch.manual_seed(0)
    total = args.warmup + args.reps
    batches = make_batches(load_tokenizer(None), args.data_dir, args.batch_size, args.max_len, n_batches=4)
    variants = build(args.init_r, args.target_r, args.targets, total + 2, args.deltaT)
    labels = list(variants)
    times: dict[str, list[float]] = {label: [] for label in labels}
    print(f"MiniLM-L6, RTE batch {args.batch_size}x{args.max_len}, init_r={args.init_r} target_r={args.target_r} "
          f"targets={args.targets} deltaT={args.deltaT}, threads={torch.get_num_threads()}, "
          f"{args.warmup} warm-up + {args.reps} reps", file=sys.stderr)
    for rep in range(total):
        batch = batches[rep % len(batches)]
        order = labels[rep % len(labels):] + labels[:rep % len(labels)]  # rotate who goes first
        for label in order:
            model, optimizer, is_adalora = variants[label]
            start = time.perf_counter()
            step(model, optimizer, batch, is_adalora, rep + 1)
            if rep >= args.warmup:
                times[label].append(time.perf_counter() - start)

    lora = labels[0]
    table = Table(title="train step (fwd + bwd + AdamW [+ update_and_allocate]), seconds")
    for col in ("variant", "median", "min", "max", "paired ratio / baseline_adalora", f"paired ratio / {lora}"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for label in labels:
        t = times[label]
        to_base = statistics.median(a / b for a, b in zip(t, times["baseline_adalora"]))
        to_lora = statistics.median(a / b for a, b in zip(t, times[lora]))
        table.add_row(label, f"{statistics.median(t):.3f}", f"{min(t):.3f}", f"{max(t):.3f}", f"{to_base:.3f}",
                      f"{to_lora:.3f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
