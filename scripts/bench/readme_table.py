"""One markdown table from several `peftlab bench` folders of one task (the README's §5 tables).

    python scripts/bench/readme_table.py [--scores-only] outputs/BENCH/AG-News s5_main s5_fft s5_ranks s5_targets

Reads only each folder's bench.csv and bench.json (nothing is recomputed) and prints, per row: bench,
method, rank, targets, dev metric mean ± sample std (seeds), vs chance, trainable parameters without the
classifier, % of FFT, train seconds (mean), latency at batch 8 unmerged / merged. A folder without
bench.csv (its grid did not finish) is named on stderr and skipped. `--scores-only` leaves out the train seconds
and latencies: for benches that ran beside other jobs, where those columns measure the machine's load, not the method.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def _fmt(value: str, digits: int = 1) -> str:
    return f"{float(value):.{digits}f}" if value not in ("", None) else "—"


def rows_of(folder: Path, scores_only: bool = False) -> list[str]:
    with open(folder / "bench.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    lines = []
    for cell in cells:
        mean = float(cell["score_mean"])
        spread = f" ± {float(cell['score_std']):.3f}" if cell["score_std"] not in ("", None) else ""
        params = int(cell["trainable_params_without_classifier"])
        values = [folder.name, cell["method"], cell["rank"] or "—", cell["targets"] or "—",
                  f"{mean:.3f}{spread} ({cell['seeds']})", cell["vs_chance"], f"{params:,}",
                  _fmt(cell["pct_of_fft_params"], 2)]
        if not scores_only:
            values += [_fmt(cell["train_s_mean"], 0), _fmt(cell["latency_b8_ms"]),
                       _fmt(cell["latency_b8_merged_ms"]) if cell["latency_b8_merged_ms"] else
                       (cell["merge_note"].split(":")[0] or "—")]
        lines.append(" | ".join(values))
    return lines


def main(root: str, names: list[str], scores_only: bool = False) -> None:
    metric = None
    body = []
    for name in names:
        folder = Path(root) / name
        if not (folder / "bench.csv").exists():
            print(f"{folder}: no bench.csv (grid not finished): skipped", file=sys.stderr)
            continue
        with open(folder / "bench.csv", newline="") as handle:
            metric = metric or next(csv.DictReader(handle), {}).get("metric") or "dev metric"
        body += [f"| {line} |" for line in rows_of(folder, scores_only)]
    columns = ["bench", "method", "rank", "targets", f"{metric} mean ± std (seeds)", "vs chance",
               "trainable params (no classifier)", "% of FFT"] + ([] if scores_only else
                                                                 ["train s", "b8 ms", "b8 merged ms"])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    print("\n".join(body))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the task's bench folder, e.g. outputs/BENCH/AG-News")
    parser.add_argument("names", nargs="+", help="bench names (folders under root)")
    parser.add_argument("--scores-only", action="store_true", help="leave out train seconds and latencies")
    args = parser.parse_args()
    main(args.root, args.names, args.scores_only)
