"""Issue 9 §5: `peftlab analyze` on an AdaLoRA run sets each q/k/v/o module's final rank next to its layer's heads."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from peftlab.analysis.adalora_heads import (FIGURE, MODULE_RANKS_FILE, module_kind, module_rank_table,
                                            rank_vs_heads_stats, read_final_ranks)
from peftlab.io import read_json, read_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

N_LAYERS, N_HEADS = 4, 4


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A tiny 4-layer × 4-head random BERT, trained with AdaLoRA on q,k,v,o (6 steps), measured and analysed."""
    from peftlab.cli import main
    from peftlab.config import load_config
    from peftlab.heads.measure import measure_run
    from peftlab.models import load_tokenizer
    from peftlab.testing import tiny_model, write_generated_rte
    from peftlab.train import train_run

    root = tmp_path_factory.mktemp("adalora_heads")
    data_dir = write_generated_rte(root / "data", n_train=48, n_dev=24)
    body = tiny_model("bert")
    body.config.num_hidden_layers = N_LAYERS
    from transformers import AutoModelForSequenceClassification

    import torch

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(body.config)
    model.save_pretrained(root / "bert4")
    load_tokenizer(None).save_pretrained(root / "bert4")
    cfg = load_config(None, [f"model={root / 'bert4'}", f"data_dir={data_dir}", f"out={root / 'out'}", "task=rte",
                             "method=adalora", "signal=importance_only", "targets=q,k,v,o", "init_r=4", "target_r=2",
                             "tinit=1", "tfinal=2", "deltaT=1", "max_train_samples=48", "batch_size=8", "epochs=1",
                             "max_len=32", "lr=5e-3", "logging_steps=1", "seed=2"])
    run = train_run(cfg)
    measure_run(run, importance="exact", theta0="init", subset_size=16, batch_size=8, progress=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:  # the CLI is the analysis
        main(["analyze", str(run), "--n-resamples", "200", "--n-permutations", "1000", "--bootstrap-seed", "7"])
    assert exit_info.value.code in (0, None), err.getvalue()
    return run, run / "analysis", err.getvalue()


def test_module_ranks_merge_the_saved_ranks_with_the_layer_sums_of_head_measurements(analysed):
    run, out_dir, _ = analysed
    table = pd.read_csv(out_dir / MODULE_RANKS_FILE)
    ranks = read_json(run / "final_summary.json")["ranks"]
    assert len(table) == N_LAYERS * 4 and len(ranks) == N_LAYERS * 4
    assert list(zip(table["layer"], table["module"])) == [(l, m) for l in range(N_LAYERS) for m in "qkvo"]
    assert table["final_rank"].sum() == 2 * N_LAYERS * 4  # target_r × matrices
    assert dict(zip(table["hf_module"], table["final_rank"])) == ranks
    # reference path: straight from the measurement files, not from heads.csv
    pre = read_jsonl(run / "importance_pre.jsonl")
    post = read_jsonl(run / "importance_post.jsonl")
    grad = read_jsonl(run / "gradfisher_pre.jsonl")
    update = [r for r in read_jsonl(run / "update.jsonl") if r.get("kind", "head") == "head"]
    for row in table.itertuples():
        assert row.n_heads == N_HEADS
        assert row.hf_module.endswith({"q": "attention.self.query", "k": "attention.self.key",
                                       "v": "attention.self.value", "o": "attention.output.dense"}[row.module])
        assert f".layer.{row.layer}." in row.hf_module
        for rows, key, column in ((pre, "I", "agg_I_pre"), (post, "I", "agg_I_post"), (grad, "G", "agg_G"),
                                  (update, f"U_{row.module}", "agg_U")):
            expected = sum(r[key] for r in rows if r["layer"] == row.layer)
            assert getattr(row, column) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert row.agg_U_from == f"U_{row.module}" and row.agg_I_pre_from == "I_pre"
    assert len(set(table["final_rank"])) > 1  # the allocation really differed between modules


def test_spearman_equals_scipy_on_the_same_vectors(analysed):
    _, out_dir, _ = analysed
    table = pd.read_csv(out_dir / MODULE_RANKS_FILE)
    block = read_json(out_dir / "stats.json")["adalora_ranks"]
    assert block["bootstrap"] == {"unit": "modules", "n_resamples": 200, "seed": 7, "level": 0.95,
                                  "method": "percentile"}
    assert block["signal"] == "importance_only" and block["ranks_from"] == "final_summary.json"
    assert set(block["spearman"]) == {"q", "k", "v", "o", "pooled"}
    for group, entries in block["spearman"].items():
        rows = table if group == "pooled" else table[table["module"] == group]
        for name in ("I_pre", "G", "U", "I_post"):
            entry = entries[name]
            assert entry["n"] == len(rows) == (16 if group == "pooled" else 4)
            expected = sps.spearmanr(rows["final_rank"], rows[f"agg_{name}"])
            if np.isnan(expected.statistic):
                assert entry["rho"] is None and "no relation can be measured" in entry["verdict"]
                continue
            assert entry["rho"] == pytest.approx(expected.statistic, abs=1e-12)
            assert entry["p"] == pytest.approx(expected.pvalue, abs=1e-12)
            assert entry["ci_low"] <= entry["ci_high"]
            holds_zero = entry["ci_low"] <= 0 <= entry["ci_high"]
            assert ("not distinguishable from no relation" in entry["verdict"]) == holds_zero
            assert ("rough" in entry["verdict"]) == (entry["n"] < 8)


def test_figure_report_section_and_cli_lines(analysed):
    from peftlab.analysis.report import study_report

    run, out_dir, err = analysed
    assert (out_dir / FIGURE).read_bytes()[:4] == b"\x89PNG"
    assert FIGURE in read_json(out_dir / "stats.json")["figures"]
    html = study_report(run.parent / "study", [run]).read_text(encoding="utf-8")
    assert "AdaLoRA: does the final rank follow importance or plasticity?" in html
    assert "module_ranks.csv" in html and "Σ U_q" in html
    assert sum("AdaLoRA rank~Σ" in line for line in err.splitlines()) == 4


def test_verdicts_say_when_the_data_cannot_tell():
    def table(ranks, values, module="q"):
        return pd.DataFrame({"layer": range(len(ranks)), "module": module, "final_rank": ranks,
                             **{f"agg_{a}": values for a in ("I_pre", "G", "U", "I_post")},
                             **{f"agg_{a}_from": a for a in ("I_pre", "G", "U", "I_post")}})

    few = rank_vs_heads_stats(table([1, 2], [0.1, 0.2]), n_resamples=100)
    assert few["pooled"]["G"]["rho"] is None and few["pooled"]["G"]["verdict"].startswith("too few modules (n = 2)")
    flat = rank_vs_heads_stats(table([4, 4, 4, 4], [0.1, 0.2, 0.3, 0.4]), n_resamples=100)
    assert flat["q"]["U"]["verdict"] == "every module has the same final rank: no relation can be measured"
    rng = np.random.default_rng(0)
    noise = rank_vs_heads_stats(table(list(rng.integers(0, 9, 12)), list(rng.normal(size=12))), n_resamples=500)
    assert noise["pooled"]["I_pre"]["ci_low"] < 0 < noise["pooled"]["I_pre"]["ci_high"]
    assert noise["pooled"]["I_pre"]["verdict"] == "not distinguishable from no relation"
    strong = rank_vs_heads_stats(table(list(range(12)), [float(v) ** 2 for v in range(12)]), n_resamples=500)
    assert strong["pooled"]["G"]["rho"] == pytest.approx(1.0)
    assert strong["pooled"]["G"]["verdict"] == "higher rank where the aggregate is higher"


def test_module_kind_per_architecture_and_missing_values():
    assert module_kind("bert.encoder.layer.3.attention.output.dense") == (3, "o")
    assert module_kind("bert.encoder.layer.3.output.dense") is None  # FFN, no heads
    assert module_kind("bert.encoder.layer.11.attention.self.key") == (11, "k")
    assert module_kind("model.layers.1.self_attn.v_proj") == (1, "v")
    assert module_kind("transformer.h.0.attn.c_attn") == (0, "qkv")
    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "I_pre": [1.0, 2.0, np.nan, 4.0],
                          "U": [1.0, 1.0, 1.0, 1.0], "U_q": [0.5, 0.25, 1.0, 2.0]})
    out = module_rank_table(heads, {"bert.encoder.layer.0.attention.self.query": 3,
                                    "bert.encoder.layer.1.attention.self.query": 1,
                                    "bert.encoder.layer.1.attention.output.dense": 2,
                                    "bert.encoder.layer.0.intermediate.dense": 5})
    assert list(zip(out["layer"], out["module"], out["final_rank"])) == [(0, "q", 3), (1, "q", 1), (1, "o", 2)]
    assert out["agg_I_pre"].iloc[0] == 3.0 and np.isnan(out["agg_I_pre"].iloc[1])  # never a partial sum
    assert list(out["agg_U"]) == [0.75, 3.0, 2.0] and list(out["agg_U_from"]) == ["U_q", "U_q", "U"]
    assert out["agg_G"].isna().all() and out["agg_G_from"].isna().all()  # G not measured


def test_ranks_fall_back_to_the_allocation_log(analysed, tmp_path):
    import shutil

    run, _, _ = analysed
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "final_summary.json").unlink()
    ranks, source = read_final_ranks(copy)
    assert source == "rank_pattern.jsonl" and ranks == read_json(run / "final_summary.json")["ranks"]
    (copy / "rank_pattern.jsonl").unlink()
    ranks, source = read_final_ranks(copy)
    assert source == "ckpt_final/adapter_config.json" and ranks == read_json(run / "final_summary.json")["ranks"]


def test_compare_collects_the_rank_vs_heads_correlations_per_signal(analysed):
    from peftlab.analysis.adalora import compare_signals

    run, out_dir, _ = analysed
    out = run.parents[3]  # <out>/ADALORA/RTE/<signal>/seed2
    compare = read_json(compare_signals("RTE", ["importance_only"], [2], out) / "compare.json")
    pooled = read_json(out_dir / "stats.json")["adalora_ranks"]["spearman"]["pooled"]
    entry = compare["rank_vs_heads"]["importance_only"]
    assert entry["per_seed"]["2"] == pooled
    assert entry["mean_rho"] == {name: pooled[name]["rho"] for name in pooled}
