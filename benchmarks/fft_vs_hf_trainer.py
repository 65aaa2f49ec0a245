"""FFT through `peftlab train` vs plain HF Trainer on the same model and data: train time per step.

    python benchmarks/fft_vs_hf_trainer.py [--steps 24] [--reps 3] [--threads N]

Issue 13: "FFT itself: no slower than plain HF Trainer". Both sides train the packaged MiniLM-L6 on
the same first rows of RTE train (batch 16, max_len 48 — every batch full, see MAX_LEN —, dynamic padding, lr 2e-5, fused AdamW —
HF's default optimizer; shuffled batches: plain Trainer has no length grouping in transformers 5, so
peftlab's is off here) for `--steps` optimizer steps with no evaluation and no checkpoint. peftlab's side is the whole `train_run` (its callbacks, step timing, divergence check,
metrics log and `fast_dropout`); its train time is `final_metrics.json`'s `timing.train_s` (training loop
wall time minus eval and checkpoint time). The plain side is `transformers.Trainer` with
`TrainingArguments` defaults except the settings above; its train time is `train_runtime`. The two
alternate in every repetition (rotating who goes first); the table shows seconds per step and the
paired ratio peftlab / plain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("PEFTLAB_DATA") or REPO.parent / "shared" / "data")
BATCH, LR = 16, 2e-5
# 48 tokens: 63 % of RTE train pairs are longer, so every batch of 16 is padded to exactly 48 on both sides;
# at 128 only 11 % are, and the two sides' different (shuffled) batch orders change the padded length per step.
MAX_LEN = 48


def peftlab_side(steps: int, data_dir: Path, out: Path) -> float:
    """Seconds per optimizer step of `train_run` (FFT), from its final_metrics.json."""
    from peftlab.config import load_config
    from peftlab.io import read_json
    from peftlab.train import train_run

    cfg = load_config(None, ["task=rte", "method=fft", f"data_dir={data_dir}", f"out={out}", f"lr={LR}",
                             f"batch_size={BATCH}", f"max_len={MAX_LEN}", f"max_train_samples={steps * BATCH}",
                             "max_eval_samples=16", "epochs=1", "eval_each_epoch=false", f"save_steps={10 * steps}",
                             "group_by_length=false"])  # transformers 5's Trainer has no length grouping
    run_dir = train_run(cfg, force=True)
    metrics = read_json(run_dir / "final_metrics.json")
    return metrics["timing"]["train_s"] / steps


def plain_side(steps: int, data_dir: Path, out: Path) -> float:
    """Seconds per optimizer step of a plain `transformers.Trainer` on the same rows and tokenization."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from peftlab.models import load_model, load_tokenizer
    from peftlab.tasks import get_task, load_split
    from peftlab.training.data import model_input_keys, tokenize_split

    spec = get_task("rte")
    tokenizer = load_tokenizer(None)
    torch.manual_seed(1)
    model = load_model(None, num_labels=spec.num_labels)
    rows = load_split(spec, "train", data_dir)
    rows = rows.subset(range(steps * BATCH))
    train_set = tokenize_split(rows, tokenizer, MAX_LEN, spec.is_regression, model_input_keys(model))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, learning_rate=LR,
                             num_train_epochs=1, save_strategy="no", eval_strategy="no", report_to="none",
                             disable_tqdm=True, use_cpu=True, seed=1)
    trainer = Trainer(model=model, args=args, train_dataset=train_set,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # it prints the metrics dict when tqdm is off
    return trainer.train().metrics["train_runtime"] / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per run")
    parser.add_argument("--reps", type=int, default=3, help="paired repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sides = {"peftlab train (FFT)": peftlab_side, "plain HF Trainer": plain_side}
    times: dict[str, list[float]] = {name: [] for name in sides}
    print(f"MiniLM-L6, RTE batch {BATCH}, max_len {MAX_LEN}, {args.steps} steps per run, {args.reps} paired reps, "
          f"threads={torch.get_num_threads()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="peftlab-fft-vs-hf-") as tmp:
        for rep in range(args.reps):
            names = list(sides)
            for name in names[rep % 2:] + names[:rep % 2]:
                times[name].append(sides[name](args.steps, args.data_dir, Path(tmp) / f"{rep}-{len(times[name])}"))
                print(f"  rep {rep + 1}: {name:22s} {times[name][-1]:.3f} s/step", file=sys.stderr)
    for name, values in times.items():
        print(f"{name:22s} median {statistics.median(values):.3f} s/step  "
              f"(min {min(values):.3f}, max {max(values):.3f})")
    ratios = [a / b for a, b in zip(*times.values())]
    print(f"paired ratio peftlab / plain HF: median {statistics.median(ratios):.3f}  "
          f"range {min(ratios):.3f}-{max(ratios):.3f}  (n={len(ratios)})")


if __name__ == "__main__":
    main()
