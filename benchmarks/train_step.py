"""Time one training step (forward + backward + clip + AdamW step) of FFT, own LoRA and PEFT LoRA.

    python benchmarks/train_step.py [--reps 20] [--batch-size 16] [--threads N] [--profile 3]

One process, the packaged all-MiniLM-L6-v2, real RTE training batches padded to --max-len.
The variants run interleaved (rotating order) in every repetition so that load from other
processes hits all of them alike; the table shows per-variant medians and the median (and range)
of the *paired* per-repetition ratios. Every row uses the optimizer peftlab's Trainer uses for
every method, `adamw_torch_fused` (also plain HF Trainer's default in transformers 5 with
torch ≥ 2.8), and, like peftlab's loop, the base model's dropouts from `peftlab.fast_dropout`.
Rows: FFT; FFT as plain HF Trainer runs it (`nn.Dropout` masks); own LoRA (defaults: FastDropout
masks, q/k/v sharing one mask and one A-matmul, wide-output backward GEMMs); own LoRA configured
like PEFT (per-module `nn.Dropout`, no sharing); PEFT LoRA.
Goals (issue 13): own LoRA ≤ 0.85× FFT and ≤ 0.85× PEFT LoRA.
`--profile N` instead runs torch.profiler over N steps per variant and prints the top ops.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("PEFTLAB_DATA") or REPO.parent / "shared" / "data")


def rte_pairs(data_dir: Path, n: int) -> tuple[list[str], list[str], list[int]]:
    """First `n` RTE training rows: (sentence1, sentence2, label id) via peftlab.tasks if present."""
    try:
        from peftlab.tasks import load_split
    except ImportError:  # tasks module not written yet: read the GLUE TSV directly
        load_split = None
    if load_split is not None:
        data = load_split("rte", "train", data_dir)
        return data.text_a[:n], data.text_b[:n], [int(y) for y in data.labels[:n]]
    with open(data_dir / "glue" / "RTE" / "train.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
    return ([r["sentence1"] for r in rows], [r["sentence2"] for r in rows],
            [int(r["label"] != "entailment") for r in rows])


def make_batches(tokenizer, data_dir: Path, batch_size: int, max_len: int, n_batches: int) -> list[dict]:
    """`n_batches` real batches, padded to `max_len` so every step has the same shape (stable timings)."""
    text_a, text_b, labels = rte_pairs(data_dir, batch_size * n_batches)
    batches = []
    for start in range(0, batch_size * n_batches, batch_size):
        end = start + batch_size
        enc = tokenizer(text_a[start:end], text_b[start:end], padding="max_length", truncation=True,
                        max_length=max_len, return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "labels": torch.tensor(labels[start:end])})
    return batches


# label: (method, optimizer as named by TrainingArguments.optim, cfg overrides)
VARIANTS = {
    # peftlab's loop (training/loop.py): fused AdamW and, by default, `fast_dropout` on the base model
    "FFT": ("fft", "adamw_torch_fused", {}),
    # plain HF Trainer: the same fused AdamW (its default), nn.Dropout's bernoulli_ masks
    "FFT plain HF": ("fft", "adamw_torch_fused", {"fast_dropout": False}),
    "own LoRA": ("lora", "adamw_torch_fused", {}),  # defaults: FastDropout + q/k/v shared input
    "own LoRA as PEFT": ("lora", "adamw_torch_fused", {"lora_fast_dropout": False, "lora_share_qkv": False}),
    "PEFT LoRA": ("peft-lora", "adamw_torch_fused", {}),  # through peftlab's loop: its base dropouts are fast too
}
RATIOS = (("own LoRA", "FFT"), ("own LoRA", "PEFT LoRA"), ("own LoRA as PEFT", "PEFT LoRA"),
          ("PEFT LoRA", "FFT"), ("FFT", "FFT plain HF"))


def make_optimizer(params, optim: str, lr: float = 1e-4):
    """torch AdamW as HF's TrainingArguments.optim builds it: "adamw_torch" (loop) or "adamw_torch_fused"."""
    return torch.optim.AdamW(params, lr=lr, fused=optim == "adamw_torch_fused")


def build_models(rank: int, targets: str, dropout: float, variants=VARIANTS):
    """{label: (model in train mode, AdamW over its trainable parameters)} for each variant."""
    from types import SimpleNamespace

    from peftlab.fast_dropout import use_fast_dropout
    from peftlab.methods import get_method
    from peftlab.models import load_model

    base = load_model(None, num_labels=2)
    out = {}
    for label, (name, optim, overrides) in variants.items():
        cfg = SimpleNamespace(rank=rank, alpha=2.0 * rank, dropout=dropout, targets=targets, seed=1, model=None,
                              **overrides)
        method = get_method(name)
        model = copy.deepcopy(base)
        if overrides.get("fast_dropout", True):  # what the training loop does before applying the method
            use_fast_dropout(model)
        model = method.apply(model, cfg).train()
        params = [p for _, p in method.trainable_parameters(model)]
        trainable_ids = {id(p) for p in params}
        for param in model.parameters():  # what the training loop does: train exactly these
            param.requires_grad_(id(param) in trainable_ids)
        out[label] = (model, make_optimizer(params, optim))
    return out


def train_step(model, optimizer, batch, max_grad_norm: float = 1.0) -> None:
    """What one HF Trainer step does on the CPU: zero grads, forward, backward, clip, AdamW."""
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    if max_grad_norm > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()


def profile(models: dict, batches: list[dict], n_steps: int, max_grad_norm: float, row_limit: int = 12) -> None:
    """torch.profiler over `n_steps` steps per variant (after one untimed step): top ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for label, (model, optimizer) in models.items():
        train_step(model, optimizer, batches[0], max_grad_norm)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for step in range(n_steps):
                train_step(model, optimizer, batches[step % len(batches)], max_grad_norm)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f"\n== {label}: {n_steps} steps, self CPU total {total:.2f} s")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:row_limit]:
            seconds = e.self_cpu_time_total / 1e6
            print(f"  {e.key:34s} {seconds:7.3f} s {100 * seconds / total:5.1f} %  {e.count:5d} calls")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="paired repetitions after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="q,k,v,o")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (TrainConfig default 0.05)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="clip as the Trainer does (0: off)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile N steps per variant and print the top ops instead of timing")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from rich.console import Console
    from rich.table import Table

    from peftlab.models import load_tokenizer

    torch.manual_seed(0)
    batches = make_batches(load_tokenizer(None), args.data_dir, args.batch_size, args.max_len, n_batches=4)
    models = build_models(args.rank, args.targets, args.dropout, {v: VARIANTS[v] for v in chosen})
    if args.profile:
        profile(models, batches, args.profile, args.max_grad_norm)
        return
    labels = list(models)
    times: dict[str, list[float]] = {label: [] for label in labels}
    total = args.warmup + args.reps
    print(f"MiniLM-L6, RTE batch {args.batch_size}x{args.max_len}, r={args.rank} targets={args.targets} "
          f"dropout={args.dropout}, threads={torch.get_num_threads()}, {args.warmup} warm-up + {args.reps} reps",
          file=sys.stderr)
    for rep in range(total):
        batch = batches[rep % len(batches)]
        order = labels[rep % len(labels):] + labels[:rep % len(labels)]  # rotate who goes first
        for label in order:
            model, optimizer = models[label]
            start = time.perf_counter()
            train_step(model, optimizer, batch, args.max_grad_norm)
            elapsed = time.perf_counter() - start
            if rep >= args.warmup:
                times[label].append(elapsed)
        if sys.stderr.isatty():  # progress only on a terminal; logs stay clean
            print(f"\rrep {rep + 1}/{total}", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)

    table = Table(title="train step (fwd + bwd + clip + AdamW), seconds")
    for col in ("method", "median", "min", "max", "trainable params"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for label in labels:
        n_train = sum(p.numel() for p in models[label][0].parameters() if p.requires_grad)
        t = times[label]
        table.add_row(label, f"{statistics.median(t):.3f}", f"{min(t):.3f}", f"{max(t):.3f}", f"{n_train:,}")
    console = Console(width=120)  # wide enough that no row wraps
    console.print(table)
    for num, den in RATIOS:
        if num in times and den in times:
            ratios = sorted(a / b for a, b in zip(times[num], times[den]))
            q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            console.print(f"paired ratio {num} / {den}: median {statistics.median(ratios):.3f}  "
                          f"IQR {q1:.3f}-{q3:.3f}  range {ratios[0]:.3f}-{ratios[-1]:.3f}  (n={len(ratios)})")


if __name__ == "__main__":
    main()
