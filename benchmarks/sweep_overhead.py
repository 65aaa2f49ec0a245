"""Sweep overhead: the same 8 tiny runs with the local backend (one after another) and with Ray (2 concurrent).

    .venv/bin/python benchmarks/sweep_overhead.py                 # packaged MiniLM, 128 RTE rows per run
    .venv/bin/python benchmarks/sweep_overhead.py --model tiny    # a tiny random BERT: almost pure overhead

Grid: method [fft, lora] × seed [1, 2, 3, 4], 1 epoch over `--train-rows` RTE training rows, `--eval-rows`
dev rows, max_len 64, 1 CPU per run. Prints the wall time of each backend, Ray's start-up (`ray.init`)
separately from its trials, the ratios ray/local (whole sweep and trials only) and the largest score
difference between the two backends' runs (expected 0: same seeds, same thread count). The two
backends run one after the other, not interleaved, so machine load hits them unequally: repeat it.
Needs `pip install "peftlab[ray]"` and the data (`PEFTLAB_DATA`, or `data_dir` beside the repo as usual).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    # 128 rows = 16 optimizer steps (batch 8): still a tiny run, but not one that measures only start-up
    parser.add_argument("--train-rows", type=int, default=128)
    parser.add_argument("--eval-rows", type=int, default=32)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--out", default=None, help="Output root (default: a temporary directory, removed after)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from peftlab.io import read_json
    from peftlab.runs import read_final_metrics
    from peftlab.sweep.runner import run_sweep
    from peftlab.sweep.spec import parse_spec

    with tempfile.TemporaryDirectory(prefix="plsw-") as tmp:
        root = Path(args.out or tmp)
        fixed = {"task": "rte", "epochs": 1, "max_train_samples": args.train_rows,
                 "max_eval_samples": args.eval_rows, "batch_size": 8, "max_len": 64}
        if args.model == "tiny":
            from peftlab.models import load_tokenizer
            from peftlab.testing import tiny_model

            tiny_model("bert").base_model.save_pretrained(root / "bert")
            load_tokenizer(None).save_pretrained(root / "bert")
            fixed["model"] = str(root / "bert")
        spec = parse_spec({"name": "overhead", "fixed": fixed, "axes": {"method": ["fft", "lora"], "seed": [1, 2, 3, 4]},
                           "resources": {"cpus_per_run": 1, "max_concurrent": args.max_concurrent}})
        quiet = lambda _line: None  # noqa: E731
        t0 = time.perf_counter()
        local_dir = run_sweep(spec, out=root / "local", echo=quiet)
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray_dir = run_sweep(spec, out=root / "ray", backend="ray", echo=quiet)
        ray_s = time.perf_counter() - t0
        ray_meta = read_json(ray_dir / "sweep.json")["ray"]
        local_meta = read_json(local_dir / "sweep.json")
        for sweep_dir in (local_dir, ray_dir):
            failures = read_json(sweep_dir / "sweep.json").get("failures") or []
            if failures:  # timings of failed runs mean nothing: say why and stop
                raise SystemExit(f"error: {len(failures)} run(s) failed in {sweep_dir}, first: {failures[0]['error']}")
        diffs = []
        for run in local_meta["runs"]:
            rel = Path(run["run_dir"]).relative_to(root / "local")
            a, b = read_final_metrics(root / "local" / rel), read_final_metrics(root / "ray" / rel)
            diffs.append(abs(a["score"] - b["score"]))
        print(f"8 runs ({args.model}, {args.train_rows} train rows, 1 epoch), 1 CPU per run")
        print(f"local (sequential)              {local_s:8.1f} s")
        print(f"ray ({args.max_concurrent} concurrent), whole sweep  {ray_s:8.1f} s")
        print(f"  of which ray.init             {ray_meta['init_s']:8.1f} s")
        print(f"  of which trials (Tuner.fit)   {ray_meta['fit_s']:8.1f} s")
        print(f"ratio ray / local, whole sweep  {ray_s / local_s:8.3f}")
        print(f"ratio ray / local, trials only  {ray_meta['fit_s'] / local_s:8.3f}")
        print(f"max |score difference|          {max(diffs):8.2g}  (over {len(diffs)} runs)")


if __name__ == "__main__":
    main()
