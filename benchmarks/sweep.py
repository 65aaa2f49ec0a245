"""Exact head-importance sweep, fast vs naive, on the packaged MiniLM-L6 and real RTE rows — one run.

    .venv/bin/python benchmarks/sweep.py                      # 256 RTE dev rows, max_len 128, batch 32
    .venv/bin/python benchmarks/sweep.py --n-examples 32      # quick (while iterating)

Both sweeps use the same model, subset and batches, interleaved batch by batch (alternating which goes
first) so that both see the same machine load. Prints the time of each, the ratio naive/fast (total and
median of per-batch paired ratios), max |ΔI| (goal ≤ 1e-5) and the Spearman correlation of Taylor
scores with exact importance.

The classifier head: at θ0 a random head makes every I ≈ 0, so by default it is a linear probe
(`peftlab.heads.probe.train_probe`: classifier (and pooler) on the frozen body, RTE *train* rows, disjoint from
the measured dev rows); `--head init` keeps the seeded random head (equality and speed do not depend
on it, the Spearman does).
"""

from __future__ import annotations

import argparse
import os
import statistics
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
        cuts = (0, 4 * k // 6, 5 * k // 6, k)  # train / select / held-out rows, 4:1:1 as in heads/probe.py
        parts = [tokenize_batches(tokenizer, train.text_a[a:b], train.text_b[a:b], train.labels[a:b], args.max_len, 64)
                 for a, b in zip(cuts, cuts[1:])]
        info = train_probe(model, *parts)
        head = (f"probe: {info['selection']['chosen']}, {k} RTE train rows, frozen body "
                f"(held-out acc {info['heldout_metric']:.3f} vs chance {info['chance_metric']:.3f})")
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(int(b["input_ids"].numel()) for b in batches)
    print(f"MiniLM-L6 (6 layers x 12 heads), RTE dev rows 0..{n - 1}, max_len {args.max_len}, "
          f"batch {args.batch_size}, {len(batches)} batches, {tokens} tokens ({padded} padded), "
          f"torch threads {torch.get_num_threads()}")
    print(f"classifier head: {head}")

    # Interleaved, batch by batch, alternating which path goes first: both see the same machine load
    # (a lone absolute time on a shared machine means little). Per-batch rows are combined into
    # subset-level I as the example-weighted mean of the per-batch losses, which is what one sweep over
    # all batches computes.
    times = {"fast": [], "naive": []}
    rows = {"fast": [], "naive": []}
    order = ("fast",) if args.skip_naive else ("fast", "naive")
    for index, batch in enumerate(batches):
        for impl in (order if index % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            rows[impl].append(exact_importance(model, [batch], impl=impl, progress=False))
            times[impl].append(time.perf_counter() - start)
        done = ", ".join(f"{impl} {sum(times[impl]):.1f} s" for impl in order)
        print(f"  batch {index + 1}/{len(batches)}: {done}", flush=True)
    start = time.perf_counter()
    taylor = taylor_importance(model, batches, progress=False)
    taylor_s = time.perf_counter() - start

    sizes = [int(b["input_ids"].shape[0]) for b in batches]

    def subset_I(per_batch):  # I over the subset = Σ_b n_b I_b / N, per head in (layer, head) order
        return [sum(n * batch_rows[i]["I"] for n, batch_rows in zip(sizes, per_batch)) / sum(sizes)
                for i in range(len(per_batch[0]))]

    fast_I = subset_I(rows["fast"])
    fast_s = sum(times["fast"])
    print(f"fast   exact sweep: {fast_s:8.1f} s")
    print(f"taylor sweep:       {taylor_s:8.1f} s")
    rho, p = spearmanr([row["taylor"] for row in taylor], fast_I)
    print(f"Spearman(taylor, exact I) = {rho:.3f} (p = {p:.1e}); max |I| = {max(map(abs, fast_I)):.2e}")
    if args.skip_naive:
        return
    naive_s = sum(times["naive"])
    naive_I = subset_I(rows["naive"])
    print(f"naive  exact sweep: {naive_s:8.1f} s")
    per_batch_diff = max(abs(a["I"] - b["I"]) for fb, nb in zip(rows["fast"], rows["naive"]) for a, b in zip(fb, nb))
    max_diff = max(abs(a - b) for a, b in zip(fast_I, naive_I))
    ratios = sorted(n / f for n, f in zip(times["naive"], times["fast"]))
    median_ratio = statistics.median(ratios)
    print(f"speed-up naive/fast = {naive_s / fast_s:.2f}x (total); median per-batch paired ratio {median_ratio:.2f}x "
          f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f}); max |ΔI| = {max_diff:.2e} over the subset, "
          f"{per_batch_diff:.2e} per batch (goal ≤ 1e-5)")

if __name__ == "__main__":
    main()
