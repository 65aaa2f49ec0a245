"""`peftlab measure` + `peftlab analyze` on runs of methods without a ΔW of attention weights (issue 10):
U columns are null with the reason recorded (never 0, never a crash), and the report says so."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from peftlab.io import read_json

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
U_COLUMNS = ["U", "Urel", "U_q", "U_k", "U_v", "U_o"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from peftlab.testing import save_tiny_model_dir, write_generated_rte

    root = tmp_path_factory.mktemp("noupdate")
    return root, save_tiny_model_dir(root / "tiny-bert", "bert"), write_generated_rte(root / "data", 16, 16)


def train_and_measure(inputs, method, *extra):
    from peftlab.config import load_config
    from peftlab.heads.measure import measure_run
    from peftlab.train import train_run

    root, model, data = inputs
    cfg = load_config(None, [f"method={method}", f"model={model}", f"data_dir={data}", f"out={root / 'out'}",
                             "max_steps=1", "max_train_samples=8", "max_eval_samples=8", "batch_size=8", "max_len=16",
                             "eval_each_epoch=false", "prompt_tokens=2", "adapter_bottleneck=2", *extra])
    run_dir = train_run(cfg)
    lines = []
    measure_run(run_dir, steps="subset,importance_pre,gradfisher_pre,update", importance="taylor", subset_size=8,
                batch_size=8, theta0="init", progress=False,
                console=type("C", (), {"print": lambda self, t: lines.append(str(t))})())
    return run_dir, "\n".join(lines)


@pytest.mark.parametrize("method, extra, why", [
    ("bitfit", (), "BitFit trains only biases"),
    ("adapter", (), "adapters add new modules"),
    ("ln-tuning", (), "LayerNorm tuning changes only LayerNorm"),
    ("prompt-tuning", (), "prompt tuning changes no weight matrix"),
    ("ia3", ("targets=ffn_out",), "ia3 adapted no attention matrix (targets ffn_out)"),
])
def test_analyze_leaves_U_null_with_the_reason(inputs, method, extra, why):
    from peftlab.analysis.analyze import analyze_run
    from peftlab.analysis.report import run_warnings

    run_dir, said = train_and_measure(inputs, method, *extra)
    assert f"not applicable for {method}" in said and not (run_dir / "update.jsonl").exists()
    meta = read_json(run_dir / "update_meta.json")
    assert meta["update_defined"] is False and why in meta["reason"]

    out = analyze_run(run_dir, n_resamples=100, n_permutations=1000, figures=method == "bitfit")
    heads = pd.read_csv(out / "heads.csv")
    assert len(heads) == 2 * 4 and all(c in heads for c in U_COLUMNS)
    assert heads[U_COLUMNS].isna().all().all()  # null, not 0
    assert heads["taylor_pre"].notna().all() and heads["G"].notna().all()  # the rest was analysed
    stats = read_json(out / "stats.json")
    assert stats["update"] == {"defined": False, "method": method, "why": meta["reason"]}
    assert any(n.startswith(f"update not defined for {method}: ") for n in stats["notes"])
    assert not any("U" in key.split("~") for key in stats["spearman"])  # no ρ with an empty column
    assert "taylor_pre~G" in stats["spearman"] and math.isfinite(stats["spearman"]["taylor_pre~G"]["rho"])
    cases = read_json(out / "cases.json")
    assert cases["important_static"]["count"] is None and cases["important_static"]["measured"] is False
    assert isinstance(cases["plastic_unimportant"]["count"], int)  # by G alone, and the rule says so
    assert "(U not defined)" in cases["plastic_unimportant"]["rule"]
    warnings = run_warnings(stats)
    assert any(f"update not defined for {method}" in w for w in warnings)
    if method == "bitfit":  # the figures draw with the empty U (counter-example bar "n/a")
        assert "fig_stats.png" in stats["figures"] and (out / "fig_stats.png").is_file()


def test_lora_on_attention_still_measures_U(inputs):
    """The guard is specific: a LoRA run on q,v keeps real (non-null, non-zero) U."""
    from peftlab.analysis.analyze import analyze_run

    run_dir, _ = train_and_measure(inputs, "lora", "targets=q,v", "rank=2", "lr=1e-2", "warmup_ratio=0",
                                    "max_steps=2")
    heads = pd.read_csv(analyze_run(run_dir, n_resamples=100, n_permutations=1000, figures=False) / "heads.csv")
    assert heads["U"].notna().all() and (heads["U"] > 0).all() and (heads["U_k"] == 0).all()
