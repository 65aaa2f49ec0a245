"""`peftlab bench` end to end on a tiny model: 2 methods × 2 ranks × 1 seed → tables, figures, skip, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from peftlab.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

FAST = ["max_steps=2", "batch_size=8", "eval_batch_size=8", "max_len=16", "logging_steps=1", "save_steps=100",
        "max_train_samples=16", "lr=1e-3"]


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory):
    from peftlab.testing import save_tiny_model_dir, write_generated_rte

    root = tmp_path_factory.mktemp("bench")
    return root, save_tiny_model_dir(root / "tiny-bert", "bert"), write_generated_rte(root / "data", 16, 8)


def bench_args(root, model_dir, data_dir, *extra):
    return ["bench", "--task", "rte", "--methods", "lora,adapter", "--ranks", "2", "4", "--targets", "q,v",
            "--seeds", "1", "--out", root / "out", "--name", "t", "--latency-iters", "2", "--latency-warmup", "1",
            "--no-isolate", "--save-matrices",
            *extra, f"model={model_dir}", f"data_dir={data_dir}", *FAST]


@pytest.fixture(scope="module")
def bench_dir(bench_inputs):
    root, model_dir, data_dir = bench_inputs
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in bench_args(root, model_dir, data_dir)])
    assert exc.value.code == 0
    return root / "out" / "BENCH" / "RTE" / "t"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bench_writes_one_row_per_cell_with_real_numbers(bench_dir):
    from peftlab.io import read_json
    from peftlab.methods.adapter import adapter_param_count

    rows = read_rows(bench_dir / "bench.csv")
    assert [(r["method"], r["rank"], r["targets"]) for r in rows] == [
        ("lora", "2", "q,v"), ("lora", "4", "q,v"), ("adapter", "2", ""), ("adapter", "4", "")]
    meta = read_json(bench_dir / "bench.json")
    n_classifier = 32 * 2 + 2
    for row in rows:
        final = read_json(Path(read_rows(bench_dir / "runs.csv")[rows.index(row)]["run_dir"]) / "final_metrics.json")
        assert float(row["score_mean"]) == pytest.approx(final["score"]) and row["score_std"] == ""  # one seed
        assert int(row["trainable_params"]) == final["trainable_params"]
        assert int(row["trainable_params"]) - int(row["trainable_params_without_classifier"]) == n_classifier
        assert float(row["pct_of_fft_params"]) == pytest.approx(100 * final["trainable_params"] / meta["fft_params"])
        assert float(row["train_s_mean"]) == pytest.approx(final["timing"]["train_s"])
        parts = final["timing_breakdown"]  # training/timing.py: every part measured, together within train_s
        assert parts["steps"] == 2 and min(parts["forward_s"], parts["backward_s"], parts["optimizer_s"]) > 0
        assert sum(parts[k] for k in ("forward_s", "backward_s", "optimizer_s", "other_s")) <= final["timing"]["train_s"]
        assert float(row["latency_b1_ms"]) > 0 and float(row["latency_b8_ms"]) > 0
    chance = meta["chance"]  # computed from the dev rows the runs were scored on (analysis/dev_chance.py)
    assert 0 < chance["chance"] < 1 and chance["n_dev"] > 0 and chance["above_chance_threshold"] > chance["chance"]
    for row in rows:
        verdict = "above chance" if float(row["score_mean"]) > chance["above_chance_threshold"] else "AT CHANCE"
        assert row["vs_chance"] == verdict
    assert f"Chance level: accuracy {chance['chance']:.4f}" in (bench_dir / "bench.md").read_text()
    lora_r2, adapter_b4 = rows[0], rows[3]
    assert int(lora_r2["trainable_params_without_classifier"]) == 2 * 2 * 2 * (32 + 32)  # 2 layers × q,v × r(d+d)
    assert int(adapter_b4["trainable_params_without_classifier"]) == 2 * 2 * adapter_param_count(32, 4)
    assert float(lora_r2["latency_b8_merged_ms"]) > 0 and lora_r2["merge_note"] == "merged into the base weights"
    assert adapter_b4["latency_b8_merged_ms"] == "" and adapter_b4["merge_note"].startswith("not mergeable")
    for method in ("lora", "adapter"):  # exactly one best rank per (method, targets), the higher score
        group = [r for r in rows if r["method"] == method]
        assert [r["best_rank"] for r in group].count("True") == 1
        best = next(r for r in group if r["best_rank"] == "True")
        assert float(best["score_mean"]) == max(float(r["score_mean"]) for r in group)
    md = (bench_dir / "bench.md").read_text()
    assert "## Best rank per targets set" in md and "one seed: no spread" in md and "not mergeable" in md
    runs = read_rows(bench_dir / "runs.csv")
    assert all(float(r["forward_s"]) > 0 and float(r["optimizer_s"]) > 0 for r in runs)
    assert "running maximum" in md and meta["isolated_runs"] is False
    from peftlab.testing import tiny_model

    assert meta["fft_params"] == sum(p.numel() for p in tiny_model("bert").parameters())  # θ0 = all FFT trains
    assert meta["latency_iters"] == 2
    for name in ("score_vs_params.png", "score_vs_train_time.png", "latency.png", "rank_sweep.png",
                 "heatmap_lora.png"):
        assert (bench_dir / "figures" / name).stat().st_size > 1000, name


def test_save_matrices_writes_delta_and_low_rank_statistics(bench_dir):
    from safetensors.torch import load_file

    lora = bench_dir / "matrices" / "lora_r2_q-v" / "seed1"
    deltas = load_file(str(lora / "delta_weights.safetensors"))
    stats = read_rows(lora / "delta_stats.csv")
    assert sorted(deltas) == sorted(r["module"] for r in stats) and len(stats) == 4  # 2 layers × q, v
    for row in stats:
        assert 1.0 <= float(row["effective_rank"]) <= 2.0 + 1e-9  # a rank-2 update
        assert float(row["spectral"]) <= float(row["frobenius"]) and float(row["frobenius"]) > 0
        assert float(row["frobenius"]) == pytest.approx(float(deltas[row["module"]].double().norm()), rel=1e-6)
    note = (bench_dir / "matrices" / "adapter_b2" / "seed1" / "note.txt").read_text()
    assert "no ΔW matrices for adapter" in note


def test_delta_stats_on_known_matrices():
    import math

    import torch

    from peftlab.bench.matrices import delta_stats

    stats = delta_stats(torch.diag(torch.tensor([3.0, 4.0])))
    assert stats["frobenius"] == pytest.approx(5.0) and stats["spectral"] == pytest.approx(4.0)
    assert stats["effective_rank"] == pytest.approx(math.exp(-(3 / 7) * math.log(3 / 7) - (4 / 7) * math.log(4 / 7)))
    assert delta_stats(torch.outer(torch.ones(3), torch.arange(1.0, 5.0)))["effective_rank"] == pytest.approx(1.0)
    assert delta_stats(torch.zeros(3, 2))["effective_rank"] == 0.0


def test_rerun_skips_finished_runs(bench_dir, bench_inputs, capsys):
    root, model_dir, data_dir = bench_inputs
    finals = sorted(bench_dir.rglob("final_metrics.json"))
    assert len(finals) == 4
    before = [p.stat().st_mtime_ns for p in finals]
    code, out, _ = run_cli(bench_args(root, model_dir, data_dir), capsys)
    assert code == 0 and out.strip().endswith("bench.md")
    assert [p.stat().st_mtime_ns for p in finals] == before


def test_measure_update_says_not_applicable_for_adapters(bench_dir):
    from peftlab.heads.measure import measure_run

    run_dir = next(p.parent for p in bench_dir.rglob("final_metrics.json") if "/Adapter/" in str(p))
    lines = []
    measure_run(run_dir, steps="update", console=type("C", (), {"print": lambda self, t: lines.append(t)})(),
                progress=False)
    assert not (run_dir / "update.jsonl").exists()
    assert any("not applicable for adapter" in line for line in lines)


def test_isolated_run_trains_in_a_child_process(bench_inputs, capsys):
    from peftlab.io import read_json

    root, model_dir, data_dir = bench_inputs
    args = ["bench", "--task", "rte", "--methods", "bitfit", "--out", root / "iso", "--latency-iters", "1",
            f"model={model_dir}", f"data_dir={data_dir}", *FAST]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    bench_dir = root / "iso" / "BENCH" / "RTE" / "quick"
    meta = read_json(bench_dir / "bench.json")
    assert meta["isolated_runs"] is True and "per run" in (bench_dir / "bench.md").read_text()
    (row,) = read_rows(bench_dir / "bench.csv")
    assert row["method"] == "bitfit" and row["rank"] == "" and float(row["peak_memory_mb"]) > 0
    assert row["merge_note"] == "nothing to merge: no modules added"


@pytest.mark.parametrize("extra, message", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--methods", "adapter", "--ranks", "0"], "ranks / adapter bottlenecks must be positive integers, got 0"),
    (["--methods", "lora", "--ranks", ","], "the rank grid is empty but lora need one"),
    (["--methods", "prefix-tuning"], "prefix-tuning' is not available"),
    (["--targets", "q,x"], "unknown target 'x'"),
    (["--profile", "huge"], "unknown profile 'huge'"),
])
def test_bad_input_is_one_line(extra, message, tmp_path, capsys):
    args = ["bench", "--task", "rte", "--out", tmp_path, *extra, "max_steps=1"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "BENCH").exists()
