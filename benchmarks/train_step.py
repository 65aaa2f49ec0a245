"""Time one training step (forward + backward + AdamW step) of FFT, own LoRA and PEFT LoRA.

    python benchmarks/train_step.py [--reps 10] [--batch-size 16] [--threads 2]

One process, the packaged all-MiniLM-L6-v2, real RTE training batches padded to --max-len.
The three methods run interleaved (rotating order) in every repetition so that load from other
processes hits all of them alike; the table shows per-method medians and the median of the
*paired* per-repetition ratios own/PEFT, own/FFT and PEFT/FFT.
Goal: own LoRA ≤ 1.0× PEFT LoRA.
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


def build_models(rank: int, targets: str, dropout: float):
    """{label: (model in train mode, AdamW over its trainable parameters)} for FFT, own LoRA, PEFT LoRA."""
    from types import SimpleNamespace

    from peftlab.methods import get_method
    from peftlab.models import load_model

    base = load_model(None, num_labels=2)
    cfg = SimpleNamespace(rank=rank, alpha=2.0 * rank, dropout=dropout, targets=targets, seed=1, model=None)
    out = {}
    for label, name in (("FFT", "fft"), ("own LoRA", "lora"), ("PEFT LoRA", "peft-lora")):
        method = get_method(name)
        model = method.apply(copy.deepcopy(base), cfg).train()
        params = [p for _, p in method.trainable_parameters(model)]
        trainable_ids = {id(p) for p in params}
        for param in model.parameters():  # what the training loop does: train exactly these
            param.requires_grad_(id(param) in trainable_ids)
        out[label] = (model, torch.optim.AdamW(params, lr=1e-4))
    return out


def train_step(model, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="paired repetitions after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="q,k,v,o")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (TrainConfig default 0.05)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from rich.console import Console
    from rich.table import Table

    from peftlab.models import load_tokenizer

    torch.manual_seed(0)
    batches = make_batches(load_tokenizer(None), args.data_dir, args.batch_size, args.max_len, n_batches=4)
    models = build_models(args.rank, args.targets, args.dropout)
    labels = list(models)
    times: dict[str, list[float]] = {label: [] for label in labels}
    total = args.warmup + args.reps
    print(f"MiniLM-L6, RTE batch {args.batch_size}x{args.max_len}, r={args.rank} targets={args.targets} "
          f"dropout={args.dropout}, threads={torch.get_num_threads()}, {args.warmup} warm-up + {args.reps} reps",
          file=sys.stderr)
    for rep in range(total):
        batch = batches[rep % len(batches)]
        order = labels[rep % 3:] + labels[:rep % 3]  # rotate who goes first
        for label in order:
            model, optimizer = models[label]
            start = time.perf_counter()
            train_step(model, optimizer, batch)
            elapsed = time.perf_counter() - start
            if rep >= args.warmup:
                times[label].append(elapsed)
        if sys.stderr.isatty():  # progress only on a terminal; logs stay clean
            print(f"\rrep {rep + 1}/{total}", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)

    table = Table(title="train step (fwd + bwd + AdamW), seconds")
    for col in ("method", "median", "min", "max", "trainable params"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for label in labels:
        n_train = sum(p.numel() for p in models[label][0].parameters() if p.requires_grad)
        t = times[label]
        table.add_row(label, f"{statistics.median(t):.3f}", f"{min(t):.3f}", f"{max(t):.3f}", f"{n_train:,}")
    console = Console(width=120)  # wide enough that no row wraps
    console.print(table)
    for num, den in (("own LoRA", "PEFT LoRA"), ("own LoRA", "FFT"), ("PEFT LoRA", "FFT")):
        ratios = [a / b for a, b in zip(times[num], times[den])]
        console.print(f"median paired ratio {num} / {den}: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
