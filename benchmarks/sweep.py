"""Exact head-importance sweep, fast vs naive, on the packaged MiniLM-L6 and real RTE rows — one run.

    .venv/bin/python benchmarks/sweep.py                      # 256 RTE dev rows, max_len 128, batch 32
    .venv/bin/python benchmarks/sweep.py --n-examples 32      # quick (while iterating)
    .venv/bin/python benchmarks/sweep.py --cli --head init    # + the two real `peftlab measure` commands
    .venv/bin/python benchmarks/sweep.py --layers 12 --head init --n-examples 64   # 12 random layers, same width
    .venv/bin/python benchmarks/sweep.py --profile --n-examples 32 --head init     # top ops / functions per impl

`--cli` also times what a user runs, as whole commands in fresh processes, on one throwaway FFT run
(trained on 16 RTE rows in a temp dir; its θ0 = the pretrained body + seeded classifier) or `--run DIR`:

    python -m peftlab measure RUN --steps subset,importance_pre --theta0 init --subset-size N --impl naive --force
    python -m peftlab measure RUN ... --impl fast

`--cli-reps` pairs, alternating which goes first; prints each command's wall time, the ratio per pair,
the median, the torch thread count of the children, and max |ΔI| between the two commands' rows.
`--threads T` sets torch's threads in-process and OMP_NUM_THREADS for the commands (default: torch's
choice, i.e. what users get). `--layers L` (≠ 6) replaces MiniLM by a random-weight BERT of the same
width with L layers (a config copy of MiniLM; for `--cli` saved with MiniLM's tokenizer as the run's model).

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
    parser.add_argument("--layers", type=int, default=6,
                        help="6: the pretrained MiniLM-L6; other: random-weight MiniLM-width BERT with this many layers")
    parser.add_argument("--cli", action="store_true", help="also time the two real `peftlab measure` commands")
    parser.add_argument("--cli-only", action="store_true", help="only the CLI comparison (implies --cli)")
    parser.add_argument("--cli-reps", type=int, default=1, help="naive/fast command pairs (alternating order)")
    parser.add_argument("--run", default=None, help="run dir for --cli (default: a throwaway FFT run)")
    parser.add_argument("--profile", action="store_true",
                        help="profile each impl once (torch.profiler self CPU + cProfile) instead of timing")
    parser.add_argument("--profile-impls", default="naive,fast", help="impls to profile (comma list)")
    parser.add_argument("--no-cprofile", action="store_true", help="--profile: torch.profiler only")
    args = parser.parse_args()
    args.cli = args.cli or args.cli_only
    return args


def random_model_dir(n_layers: int, seed: int, out: str) -> str:
    """A MiniLM-width BERT with `n_layers` random (seeded, HF init) layers, saved with MiniLM's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from peftlab.models import load_tokenizer, resolve_model

    config = AutoConfig.from_pretrained(resolve_model(None), num_hidden_layers=n_layers, num_labels=2)
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    load_tokenizer(None).save_pretrained(out)
    return out


def cli_compare(args, model_dir: str | None) -> None:
    """Time `peftlab measure ... --impl naive` and `--impl fast` as whole commands on one run."""
    import json
    import resource
    import subprocess
    import sys
    import tempfile

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    python = sys.executable
    threads = subprocess.run([python, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            train = [python, "-m", "peftlab", "train", "--task", "RTE", "--method", "fft", "--seed", "1",
                     "--epochs", "1", "--max-train-samples", "16", "--max-eval-samples", "16", "--out", tmp]
            if model_dir:
                train += ["--model", model_dir]
            subprocess.run(train, env=env, check=True, capture_output=True)
            run = next(str(p.parent) for p in __import__("pathlib").Path(tmp).rglob("final_metrics.json"))
        base = [python, "-m", "peftlab", "measure", run, "--steps", "subset,importance_pre", "--theta0", "init",
                "--subset-size", str(args.n_examples), "--batch-size", str(args.batch_size), "--force"]
        print(f"CLI: {' '.join(base[1:])} --impl naive|fast  (torch threads in the commands: {threads})", flush=True)
        seconds = {"naive": [], "fast": []}
        rows = {}
        for rep in range(args.cli_reps):
            for impl in (("naive", "fast") if rep % 2 == 0 else ("fast", "naive")):
                cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                subprocess.run(base + ["--impl", impl], env=env, check=True, capture_output=True)
                wall = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
                seconds[impl].append(wall)
                with open(os.path.join(run, "importance_pre.jsonl")) as handle:
                    rows[impl] = [json.loads(line) for line in handle]
                print(f"  pair {rep + 1}: {impl:5s} command {wall:7.1f} s wall, {cpu_s:7.1f} s CPU", flush=True)
    ratios = sorted(n / f for n, f in zip(seconds["naive"], seconds["fast"]))
    diff = max(abs(a["I"] - b["I"]) for a, b in zip(rows["naive"], rows["fast"]))
    impls = {row["impl"] for row in rows["fast"]}
    print(f"CLI naive/fast = {statistics.median(ratios):.2f}x (median of {len(ratios)} paired whole-command ratios, "
          f"range {ratios[0]:.2f}-{ratios[-1]:.2f}); torch threads {threads}; fast rows impl {sorted(impls)}; "
          f"max |ΔI| between the commands = {diff:.2e} (goal ≤ 1e-5)")


def profile(model, batches, exact_importance, impls=("naive", "fast"), python=True) -> None:
    """Top ops (torch.profiler, self CPU) and top Python functions (cProfile, own time) of each impl."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile as torch_profile

    from peftlab.arch import head_shape

    shape = head_shape(model)
    warm = [(layer, head) for layer in range(shape.n_layers) for head in range(shape.n_heads)][1:]
    for impl in impls:
        exact_importance(model, batches[:1], impl=impl, progress=False, done=warm)  # warm-up: one head
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            exact_importance(model, batches, impl=impl, progress=False)
            wall = time.perf_counter() - start
        print(f"\n== {impl}: {wall:.1f} s under torch.profiler; top ops by self CPU")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
        if not python:
            continue
        stats = cProfile.Profile()
        stats.enable()
        exact_importance(model, batches, impl=impl, progress=False)
        stats.disable()
        text = io.StringIO()
        pstats.Stats(stats, stream=text).sort_stats("tottime").print_stats(12)
        print(f"== {impl}: top Python functions by own time (cProfile)")
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[-2500:])


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
    os.environ.setdefault("PEFTLAB_DATA", data_dir)
    import tempfile

    model_tmp = tempfile.TemporaryDirectory()
    model_dir = random_model_dir(args.layers, args.seed, model_tmp.name) if args.layers != 6 else None
    if args.cli_only:
        cli_compare(args, model_dir)
        return
    tokenizer = load_tokenizer(None)
    dev = load_split("rte", "dev", data_dir)
    n = min(args.n_examples, len(dev.labels))
    batches = tokenize_batches(tokenizer, dev.text_a[:n], dev.text_b[:n], dev.labels[:n], args.max_len,
                               args.batch_size)
    torch.manual_seed(args.seed)
    model = load_model(model_dir, num_labels=2).eval()
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
    body = "MiniLM-L6 (6 layers x 12 heads)" if model_dir is None else \
        f"random-weight MiniLM-width BERT ({args.layers} layers x 12 heads)"
    print(f"{body}, RTE dev rows 0..{n - 1}, max_len {args.max_len}, "
          f"batch {args.batch_size}, {len(batches)} batches, {tokens} tokens ({padded} padded), "
          f"torch threads {torch.get_num_threads()}")
    print(f"classifier head: {head}")
    if args.profile:
        profile(model, batches, exact_importance, args.profile_impls.split(","), not args.no_cprofile)
        return

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
          f"{per_batch_diff:.2e} per batch (goal ≤ 1e-5); torch threads {torch.get_num_threads()}")
    if args.cli:
        cli_compare(args, model_dir)

if __name__ == "__main__":
    main()
