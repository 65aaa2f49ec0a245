"""Equal-budget view of `peftlab bench` (issue 10 §2): the adapter matched to LoRA's parameters at its best rank."""

from __future__ import annotations

import csv

import pytest

from peftlab.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
FAST = ["max_steps=2", "batch_size=8", "eval_batch_size=8", "max_len=16", "logging_steps=1", "save_steps=100",
        "max_train_samples=16", "lr=1e-3"]


@pytest.mark.parametrize("d, n_adapters", [(32, 4), (384, 12), (768, 24)])
def test_matched_bottleneck_is_the_closest_by_brute_force(d, n_adapters):
    from peftlab.bench.budget import adapter_budget, matched_bottleneck

    for target in (1, 388, 512, 1024, 73_728, 147_456, 294_912, 10**6):
        best = min(range(1, 10_000), key=lambda b: (abs(adapter_budget(d, n_adapters, b) - target), b))
        assert matched_bottleneck(target, d, n_adapters) == best
    # MiniLM-L6 (d 384, 6 layers × 2 adapters): LoRA r=8 on q,v = 6·2·8·(384+384) = 73,728 params -> b = 7
    assert matched_bottleneck(73_728, 384, 12) == 7 and adapter_budget(384, 12, 7) == 12 * (2 * 384 * 7 + 7 + 384)


def test_bench_equal_budget_trains_the_matched_adapter(tmp_path, capsys):
    from peftlab.io import read_json
    from peftlab.testing import save_tiny_model_dir, write_generated_rte

    model, data = save_tiny_model_dir(tmp_path / "tiny", "bert"), write_generated_rte(tmp_path / "data", 16, 8)
    args = ["bench", "--task", "rte", "--methods", "lora", "--ranks", "2", "--targets", "q,v", "--seeds", "1",
            "--out", tmp_path / "out", "--name", "eb", "--latency-iters", "1", "--latency-warmup", "0",
            "--no-isolate", "--equal-budget", f"model={model}", f"data_dir={data}", *FAST]
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    assert exc.value.code == 0, capsys.readouterr().err
    bench = tmp_path / "out" / "BENCH" / "RTE" / "eb"
    with open(bench / "bench.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # tiny BERT: d 32, 2 layers × 2 adapters; LoRA r2 on q,v: 2·2·2·(32+32) = 512 params -> b = 1 (388) beats b = 2 (648)
    assert [(r["method"], r["rank"], r["equal_budget_for"]) for r in rows] == [
        ("lora", "2", ""), ("adapter", "1", "lora_r2_q-v")]
    lora, adapter = rows
    assert int(lora["trainable_params_without_classifier"]) == 512
    assert int(adapter["trainable_params_without_classifier"]) == 4 * (2 * 32 * 1 + 1 + 32)
    (entry,) = read_json(bench / "bench.json")["equal_budget"]["rows"]
    assert entry["bottleneck"] == 1 and entry["adapter_cell"] == "adapter_b1" and entry["params"] == 512
    md = (bench / "bench.md").read_text()
    assert "## Equal budget" in md and "| lora_r2_q-v | 512 |" in md and "b = 1 | 388 |" in md
