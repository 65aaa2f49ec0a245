"""The lr/epoch search (issue 7 §5): its sweep specs expand as intended, and `peftlab.sweep.search`
turns finished sweeps into the search table, the selection (rule: best mean, ties → fewer epochs) and
presets — checked on hand-written run directories (no training)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from peftlab.config import load_config
from peftlab.errors import PeftlabError
from peftlab.io import read_json
from peftlab.sweep.search import main, search_rows, select, write_search
from peftlab.sweep.spec import expand, load_spec

SPECS = sorted(Path(__file__).resolve().parents[1].joinpath("configs", "sweeps").glob("search-*.yaml"))


def test_search_specs_cover_five_tasks_two_methods_and_evaluate_every_epoch(tmp_path):
    assert len(SPECS) == 10
    seen = set()
    for path in SPECS:
        runs = expand(load_spec(path), tmp_path)
        assert len(runs) == 12  # 4 lrs × 3 seeds
        cfgs = [run.cfg for run in runs]
        assert {c.seed for c in cfgs} == {1, 2, 3} and len({c.lr for c in cfgs}) == 4
        # constant lr whenever there is an epoch axis; a one-epoch search (SST-2) has none and decays linearly
        assert all(c.eval_each_epoch and c.max_train_samples is None for c in cfgs)
        assert all(c.lr_scheduler == ("constant_with_warmup" if c.epochs > 1 else "linear") for c in cfgs)
        assert all(c.rank == 8 and c.targets == ("q", "k", "v", "o") for c in cfgs if c.method == "lora")
        assert len({run.run_dir for run in runs}) == 12  # every (lr, seed) its own run directory
        seen.add((cfgs[0].task, cfgs[0].method))
    assert seen == {(t, m) for t in ("RTE", "MRPC", "STS-B", "CoLA", "SST-2") for m in ("fft", "lora")}


def _fake_run(root: Path, method: str, lr: float, seed: int, scores: list[float], steps_per_epoch: int = 50,
              finished: bool = True, scheduler: str = "constant_with_warmup") -> Path:
    """A run directory as `peftlab train` leaves it: config, per-epoch dev evals, final metrics."""
    run_dir = root / f"lr-{lr}" / method / "RTE" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    cfg = load_config("rte", [f"method={method}", f"lr={lr}", f"seed={seed}", f"epochs={len(scores)}",
                              f"lr_scheduler={scheduler}", "warmup_ratio=0.06"])
    (run_dir / "run_config.json").write_text(json.dumps({"config": cfg.to_dict(), "method": method, "task": "RTE"}))
    lines = [{"kind": "train", "step": 10, "epoch": 0.2, "loss": 0.7}]
    lines += [{"kind": "eval", "step": (k + 1) * steps_per_epoch, "epoch": float(k + 1), "eval_accuracy": s,
               "eval_loss": 0.6} for k, s in enumerate(scores)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    final = {"finished": finished, "timing": {"train_s": 100.0 * len(scores)}, "lr": lr,
             "global_step": steps_per_epoch * len(scores)}
    (run_dir / "final_metrics.json").write_text(json.dumps(final))
    return run_dir


def _sweep(root: Path, name: str, run_dirs: list[Path]) -> Path:
    sweep_dir = root / "SWEEP" / name
    sweep_dir.mkdir(parents=True)
    with (sweep_dir / "sweep.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["lr", "seed", "status", "run_dir"])
        writer.writeheader()
        for run_dir in run_dirs:
            writer.writerow({"lr": 0, "seed": 0, "status": "finished", "run_dir": str(run_dir)})
    return sweep_dir


def test_selection_best_mean_ties_to_fewer_epochs_and_presets(tmp_path):
    runs = [
        # lr 1e-4: epoch-2 mean 0.70 (= epoch 3's 0.70: the tie goes to 2 epochs)
        _fake_run(tmp_path, "fft", 1e-4, 1, [0.60, 0.72, 0.71]),
        _fake_run(tmp_path, "fft", 1e-4, 2, [0.62, 0.68, 0.69]),
        # lr 5e-5: a higher single seed, lower mean
        _fake_run(tmp_path, "fft", 5e-5, 1, [0.50, 0.75, 0.60]),
        _fake_run(tmp_path, "fft", 5e-5, 2, [0.50, 0.55, 0.60]),
        # lr 2e-4: best mean but only one seed finished → not eligible; the unfinished run is not in the table
        _fake_run(tmp_path, "fft", 2e-4, 1, [0.90, 0.90, 0.90]),
        _fake_run(tmp_path, "fft", 2e-4, 2, [0.95, 0.95, 0.95], finished=False),
    ]
    sweep_dir = _sweep(tmp_path, "search-rte-fft", runs)
    rows = search_rows([sweep_dir])
    assert len(rows) == 5 * 3  # finished runs × epochs
    assert {r["train_s"] for r in rows if r["lr"] == 1e-4 and r["seed"] == 1} == {100.0, 200.0, 300.0}
    (chosen,) = select(rows)
    assert (chosen["lr"], chosen["epoch"]) == (1e-4, 2) and chosen["seeds"] == [1, 2]
    assert chosen["mean"] == pytest.approx(0.70) and chosen["std"] == pytest.approx(math.sqrt(0.0008))

    out = write_search([sweep_dir], tmp_path / "SEARCH")
    with (out / "search.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 15 and {"task", "method", "lr", "epoch", "seed", "dev_accuracy", "train_s"} <= set(table[0])
    table_md = (out / "search.md").read_text().splitlines()
    assert table_md[0] == "RTE FFT: dev accuracy after each epoch, mean over seeds [1, 2] (chosen in bold)"
    assert table_md[2] == "| lr | ep 1 | ep 2 | ep 3 | train s (whole run) |"
    # lr 1e-4 epoch 2: (0.72 + 0.68) / 2 = 0.700, sample std sqrt(0.0008) = 0.028; runs of 300 s
    assert table_md[5] == "| 0.0001 | 0.610 ± 0.014 | **0.700 ± 0.028** | 0.700 ± 0.014 | 300 |"
    assert table_md[6] == "| 0.0002 | 0.900 | 0.900 | 0.900 | 300 |"  # one finished seed: no ± std
    selection = read_json(out / "selection.json")
    assert "dev split" in selection["note"] and "ties -> fewer epochs" in selection["rule"]
    preset = yaml.safe_load((out / "presets" / "rte-fft.yaml").read_text())
    assert preset["epochs"] == 2 and preset["lr"] == 1e-4 and preset["lr_scheduler"] == "constant_with_warmup"
    assert "rank" not in preset
    # the preset's warmup lasts as many steps as the 3-epoch search run's: ceil(0.06 · 150) = 9
    assert math.ceil(preset["warmup_ratio"] * 2 * 50) == math.ceil(0.06 * 3 * 50) == 9
    cfg = load_config(str(out / "presets" / "rte-fft.yaml"), [])  # a usable --config file
    assert cfg.epochs == 2 and cfg.lr == 1e-4 and cfg.task == "RTE"


def test_decaying_schedule_enters_the_table_at_its_last_epoch_only(tmp_path):
    # linear decay: epoch 1 of a 2-epoch run (0.90) was trained at rates no 1-epoch run sees → not a point
    runs = [_fake_run(tmp_path, "fft", 1e-4, 1, [0.90, 0.70], scheduler="linear"),
            _fake_run(tmp_path, "fft", 5e-5, 1, [0.60, 0.65], scheduler="linear")]
    rows = search_rows([_sweep(tmp_path, "search-rte-fft", runs)])
    assert sorted((r["lr"], r["epoch"]) for r in rows) == [(5e-5, 2), (1e-4, 2)]
    (chosen,) = select(rows)
    assert (chosen["lr"], chosen["epoch"], chosen["mean"]) == (1e-4, 2, 0.70)


def test_missing_sweep_is_one_line_error(tmp_path, capsys):
    with pytest.raises(PeftlabError, match="sweep.csv does not exist"):
        search_rows([tmp_path / "nope"])
    assert main([str(tmp_path / "nope")]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: ") and out.count("\n") == 1
