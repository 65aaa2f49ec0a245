"""Exact head-importance sweep, fast vs naive, on the packaged MiniLM-L6 and real RTE rows — one run.

    .venv/bin/python benchmarks/sweep.py                      # 256 RTE dev rows, max_len 128, batch 32
    .venv/bin/python benchmarks/sweep.py --n-examples 32      # quick (while iterating)

Both sweeps use the same model, subset and batches. Prints the time of each, the ratio naive/fast,
max |ΔI| (goal ≤ 1e-5) and the Spearman correlation of Taylor scores with exact importance.

The classifier head: at θ0 a random head makes every I ≈ 0, so by default it is a linear probe
(`peftlab.heads.probe.train_probe`: classifier only, frozen body, on RTE *train* rows, disjoint from
the measured dev rows); `--head init` keeps the seeded random head (equality and speed do not depend
on it, the Spearman does).
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-examples", type=int, default=256, help="RTE dev rows measured (first N)")
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head", choices=("probe", "init"), default="probe")
    parser.add_argument("--probe-examples", type=int, default=256, help="RTE train rows for the probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-naive", action="store_true", help="time the fast path only")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    from scipy.stats import spearmanr

    from peftlab.heads.importance import exact_importance, taylor_importance
    from peftlab.heads.probe import train_probe
    from peftlab.heads.subset import tokenize_batches
    from peftlab.models import load_model, load_tokenizer
    from peftlab.tasks import load_split

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = os.environ.get("PEFTLAB_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    tokenizer = load_tokenizer(None)
    dev = load_split("rte", "dev", data_dir)
    n = min(args.n_examples, len(dev.labels))
    batches = tokenize_batches(tokenizer, dev.text_a[:n], dev.text_b[:n], dev.labels[:n], args.max_len,
                               args.batch_size)
    torch.manual_seed(args.seed)
    model = load_model(None, num_labels=2).eval()
    head = "seeded random init (seed %d)" % args.seed
    if args.head == "probe":
        train = load_split("rte", "train", data_dir)
        k = args.probe_examples
        probe_batches = tokenize_batches(tokenizer, train.text_a[:k], train.text_b[:k], train.labels[:k],
                                         args.max_len, 64)
        info = train_probe(model, probe_batches)
        head = (f"linear probe: classifier only, {k} RTE train rows, frozen body "
                f"(train acc {info['train_accuracy']:.3f})")
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(int(b["input_ids"].numel()) for b in batches)
    print(f"MiniLM-L6 (6 layers x 12 heads), RTE dev rows 0..{n - 1}, max_len {args.max_len}, "
          f"batch {args.batch_size}, {len(batches)} batches, {tokens} tokens ({padded} padded), "
          f"torch threads {torch.get_num_threads()}")
    print(f"classifier head: {head}")

    start = time.perf_counter()
    fast = exact_importance(model, batches, impl="fast")
    fast_s = time.perf_counter() - start
    print(f"fast   exact sweep: {fast_s:8.1f} s")
    start = time.perf_counter()
    taylor = taylor_importance(model, batches)
    taylor_s = time.perf_counter() - start
    print(f"taylor sweep:       {taylor_s:8.1f} s")
    exact_I = [row["I"] for row in fast]
    rho, p = spearmanr([row["taylor"] for row in taylor], exact_I)
    print(f"Spearman(taylor, exact I) = {rho:.3f} (p = {p:.1e}); max |I| = {max(map(abs, exact_I)):.2e}")
    if args.skip_naive:
        return
    start = time.perf_counter()
    naive = exact_importance(model, batches, impl="naive")
    naive_s = time.perf_counter() - start
    print(f"naive  exact sweep: {naive_s:8.1f} s")
    max_diff = max(abs(a["I"] - b["I"]) for a, b in zip(fast, naive))
    max_metric = max(abs(a["metric_ablate"] - b["metric_ablate"]) for a, b in zip(fast, naive))
    print(f"speed-up naive/fast = {naive_s / fast_s:.2f}x; max |ΔI| = {max_diff:.2e} (goal ≤ 1e-5); "
          f"max |Δmetric| = {max_metric:.2e}")


if __name__ == "__main__":
    main()
