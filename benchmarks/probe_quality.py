"""θ0 probe quality on real data: held-out score next to chance, per task, with the packaged MiniLM-L6.

    PEFTLAB_DATA=../shared/data python benchmarks/probe_quality.py --tasks rte sst2 mrpc [--pooling cls mean]

For each task this builds what `peftlab measure` builds for a run (eval subset from the dev split,
seed 999; probe rows = train split minus that subset, train/select/held-out as in heads/probe.py;
classifier init seeded with --seed like a run's ckpt_init) and prints the held-out metric and loss of
the probe next to the constant predictor fitted on the probe's training labels, the margin rule's
verdict, the chosen grid point and the seconds spent. Too slow for the unit suite (one body forward
per probe row: thousands of rows).
"""

from __future__ import annotations

import argparse
import time

MAX_LEN = {"RTE": 128, "SST-2": 64, "MRPC": 128, "CoLA": 64, "STS-B": 128}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["rte", "sst2"])
    parser.add_argument("--subset-size", type=int, default=256, help="eval subset rows (excluded from the probe)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the classifier init (a run's --seed)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pooling", nargs="+", default=["cls"], choices=["cls", "mean"],
                        help="what the classifier reads (peftlab.pooling); several = one line each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()

    import torch

    from peftlab.heads.probe import probe_splits, train_probe
    from peftlab.heads.subset import length_order, make_subset, reorder, subset_rows, tokenize_batches
    from peftlab.models import load_model, load_tokenizer
    from peftlab.tasks import get_task, load_split, metrics_from_logits

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(None)
    for name, pooling in [(task, pooling) for task in args.tasks for pooling in args.pooling]:
        spec = get_task(name)
        subset = make_subset(spec.name, size=args.subset_size)
        train = load_split(spec, "train")
        splits = probe_splits(len(train.labels), subset)
        max_len = MAX_LEN.get(spec.name, 128)
        torch.manual_seed(args.seed)
        model = load_model(None, spec.num_labels, pooling=pooling).eval()
        started = time.perf_counter()
        parts = []
        for part in ("train", "select", "heldout"):
            text_a, text_b, labels = subset_rows(train, splits[part])
            order = length_order(tokenizer, text_a, text_b, max_len)  # as ensure_probe batches them
            parts.append(tokenize_batches(tokenizer, reorder(text_a, order), reorder(text_b, order),
                                          reorder(labels, order), max_len, args.batch_size,
                                          regression=spec.is_regression))

        def task_metric(logits, labels, spec=spec) -> float:
            return float(metrics_from_logits(spec, logits.detach().numpy(), labels.numpy())[spec.main_metric])

        info = train_probe(model, *parts, regression=spec.is_regression, metric=(spec.main_metric, task_metric),
                           n_classes=spec.num_labels)
        seconds = time.perf_counter() - started
        margin = info["margin"]
        chance_metric = "n/a" if info["chance_metric"] is None else f"{info['chance_metric']:.3f}"
        heldout_metric = "n/a" if info["heldout_metric"] is None else f"{info['heldout_metric']:.3f}"
        ci = (f" (gain 95% CI {margin['metric_gain_ci_low']:+.3f} .. {margin['metric_gain_ci_high']:+.3f})"
              if "metric_gain_ci_low" in margin else "")
        print(f"{spec.name} pooling={pooling}: max_len {max_len}, rows train/select/held-out {info['n_train']}/{info['n_select']}/"
              f"{info['n_heldout']}; held-out {info['metric_name']} {heldout_metric} vs chance {chance_metric}{ci}; "
              f"held-out loss {info['heldout_loss']:.4f} vs chance {info['chance_loss']:.4f}; "
              f"better than chance: {info['better_than_chance']}; chosen {info['selection']['chosen']}; "
              f"{seconds:.0f} s (torch threads {torch.get_num_threads()})", flush=True)


if __name__ == "__main__":
    main()
