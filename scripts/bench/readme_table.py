"""One markdown table from several `peftlab bench` folders of one task (the README's §5 tables).

    python scripts/bench/readme_table.py outputs/BENCH/AG-News s5_main s5_fft s5_ranks s5_targets

Reads only each folder's bench.csv and bench.json (nothing is recomputed) and prints, per row: bench,
method, rank, targets, dev metric mean ± sample std (seeds), vs chance, trainable parameters without the
classifier, % of FFT, train seconds (mean), latency at batch 8 unmerged / merged. A folder without
bench.csv (its grid did not finish) is named on stderr and skipped.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def _fmt(value: str, digits: int = 1) -> str:
    return f"{float(value):.{digits}f}" if value not in ("", None) else "—"


def rows_of(folder: Path) -> list[str]:
    with open(folder / "bench.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    lines = []
    for cell in cells:
        mean = float(cell["score_mean"])
        spread = f" ± {float(cell['score_std']):.3f}" if cell["score_std"] not in ("", None) else ""
        params = int(cell["trainable_params_without_classifier"])
        lines.append(" | ".join([
            folder.name, cell["method"], cell["rank"] or "—", cell["targets"] or "—",
            f"{mean:.3f}{spread} ({cell['seeds']})", cell["vs_chance"], f"{params:,}",
            _fmt(cell["pct_of_fft_params"], 2), _fmt(cell["train_s_mean"], 0),
            _fmt(cell["latency_b8_ms"]), _fmt(cell["latency_b8_merged_ms"]) if cell["latency_b8_merged_ms"] else
            (cell["merge_note"].split(":")[0] or "—"),
        ]))
    return lines


def main(root: str, names: list[str]) -> None:
    metric = None
    body = []
    for name in names:
        folder = Path(root) / name
        if not (folder / "bench.csv").exists():
            print(f"{folder}: no bench.csv (grid not finished): skipped", file=sys.stderr)
            continue
        with open(folder / "bench.csv", newline="") as handle:
            metric = metric or next(csv.DictReader(handle), {}).get("metric") or "dev metric"
        body += [f"| {line} |" for line in rows_of(folder)]
    print(f"| bench | method | rank | targets | {metric} mean ± std (seeds) | vs chance | trainable params "
          "(no classifier) | % of FFT | train s | b8 ms | b8 merged ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(body))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python scripts/bench/readme_table.py BENCH_TASK_DIR NAME [NAME ...]")
    main(sys.argv[1], sys.argv[2:])
