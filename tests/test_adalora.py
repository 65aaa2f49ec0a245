"""AdaLoRA (issue 9): PEFT AdaLoRA through the one loop, rank-allocation signals, budget, save/load, errors."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from peftlab.config import TrainConfig, load_config
from peftlab.errors import PeftlabError
from peftlab.io import read_json, read_jsonl
from peftlab.methods import get_method
from peftlab.methods.adalora_signals import SIGNALS, SignalRankAllocator, make_allocator, module_of
from peftlab.methods.base import base_fingerprint
from peftlab.runs import load_run_model, run_dir_for
from peftlab.testing import tiny_batch, tiny_model
from peftlab.train import train_run
from peftlab.training.callbacks import StopAfterStepCallback

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ADALORA = get_method("adalora")
ALL = ("q", "k", "v", "o", "ffn_in", "ffn_out")


def cfg_for(**overrides) -> TrainConfig:
    values = dict(method="adalora", targets=ALL, init_r=4, target_r=2, alpha=8.0, dropout=0.0, seed=1,
                  tinit=2, tfinal=2, deltaT=1)
    return dataclasses.replace(TrainConfig(), **{**values, **overrides})


def set_schedule(model, total, tinit, tfinal):
    config = model.base_model.peft_config["default"]
    config.total_step, config.tinit, config.tfinal = total, tinit, tfinal


def labels_of(batch, n=2):
    return torch.arange(batch[0].shape[0]) % n


def manual_train(model, steps, lr=1e-2):
    """PEFT's documented loop: backward, optimizer.step, update_and_allocate(step), zero_grad."""
    batch = tiny_batch(batch_size=4, seq_len=9, seed=5)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    torch.manual_seed(0)  # the body's dropout
    model.train()
    for step in range(1, steps + 1):
        out = model(input_ids=batch[0], attention_mask=batch[1], labels=labels_of(batch))
        out.loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad(set_to_none=True)
    return model


def adalora_model(seed=0, **overrides):
    cfg = cfg_for(**overrides)
    model = ADALORA.apply(tiny_model("bert", seed=seed), cfg)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or ".modules_to_save." in name)
    return model, cfg


# ------------------------------------------------------------------ allocation without the Trainer

def test_baseline_signal_gives_peft_stock_rank_pattern():
    """Our recording allocator (baseline_adalora) == PEFT's own RankAllocator: same seed, data, steps."""
    stock, cfg = adalora_model()
    ours, _ = adalora_model()
    for model in (stock, ours):
        set_schedule(model, total=8, tinit=2, tfinal=2)
    config = ours.base_model.peft_config["default"]
    ours.base_model.rankallocator = make_allocator(ours.base_model.model, config, "default", "baseline_adalora", 0.9, 1.0)
    assert type(stock.base_model.rankallocator).__name__ == "RankAllocator"
    manual_train(stock, 8)
    manual_train(ours, 8)
    pattern_stock = stock.base_model.peft_config["default"].rank_pattern
    pattern_ours = ours.base_model.peft_config["default"].rank_pattern
    assert pattern_stock is not None and pattern_stock == pattern_ours
    assert sum(sum(v) for v in pattern_ours.values()) == cfg.target_r * len(pattern_ours)  # budget = target_r × n
    for (n1, p1), (n2, p2) in zip(stock.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("signal", SIGNALS)
def test_every_signal_shrinks_to_exactly_the_target_budget(signal):
    model, cfg = adalora_model(signal=signal)
    set_schedule(model, total=8, tinit=2, tfinal=2)
    config = model.base_model.peft_config["default"]
    model.base_model.rankallocator = make_allocator(model.base_model.model, config, "default", signal, 0.9, 1.0)
    manual_train(model, 8)
    pattern = config.rank_pattern
    n_matrices = 6 * 2  # 6 targets × 2 layers of the tiny BERT
    assert len(pattern) == n_matrices
    assert sum(sum(v) for v in pattern.values()) == cfg.target_r * n_matrices
    for name, param in model.base_model.model.named_parameters():  # masked triplets have E = 0 after the last step
        if "lora_E" in name:
            kept = torch.tensor(pattern[name])
            assert torch.all(param[~kept] == 0)


def test_signal_scores_equal_a_hand_computation():
    """importance = EMA|w·g|, plasticity = EMA|g|, aggregated E + mean(A row) + mean(B column); combo = z + λz."""
    model, _ = adalora_model(targets=("q",))
    hf = model.base_model.model
    config = model.base_model.peft_config["default"]
    lora = {n: p for n, p in hf.named_parameters() if "lora_" in n}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lora.values():
            p.copy_(torch.randn(p.shape, generator=g))
    grads = [{n: torch.randn(p.shape, generator=g) for n, p in lora.items()} for _ in range(2)]
    d, lam = 0.7, 0.5
    alloc = {s: SignalRankAllocator(hf, config, "default", s, d, lam) for s in SIGNALS[1:]}
    for step_grads in grads:
        for n, p in lora.items():
            p.grad = step_grads[n].clone()
        for a in alloc.values():
            a.update_ipt(hf)

    def ema(fn):
        out = {}
        for n, p in lora.items():
            value = torch.zeros_like(p)
            for step_grads in grads:
                value = d * value + (1 - d) * fn(p.detach(), step_grads[n])
            out[n] = value
        return out

    def by_hand(element):
        triplets = {}
        for n in lora:
            if "lora_E" not in n:
                continue
            a, e, b = element[n.replace("lora_E", "lora_A")], element[n], element[n.replace("lora_E", "lora_B")]
            triplets[n] = torch.tensor([float(e[i, 0] + a[i, :].mean() + b[:, i].mean()) for i in range(e.shape[0])])
        return triplets

    importance = by_hand(ema(lambda w, grad: (w * grad).abs()))
    plasticity = by_hand(ema(lambda w, grad: grad.abs()))
    got = {s: a.current_scores() for s, a in alloc.items()}
    for n in importance:
        torch.testing.assert_close(got["importance_only"][n], importance[n], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got["plasticity_only"][n], plasticity[n], rtol=1e-5, atol=1e-7)
    flat_i = torch.cat([importance[n] for n in importance])
    flat_p = torch.cat([plasticity[n] for n in importance])
    z_i = (flat_i - flat_i.mean()) / flat_i.std(unbiased=False)
    z_p = (flat_p - flat_p.mean()) / flat_p.std(unbiased=False)
    torch.testing.assert_close(torch.cat([got["combo"][n] for n in importance]), z_i + lam * z_p, rtol=1e-5, atol=1e-6)

    # the stock signal (recorded for baseline_adalora): EMA_β1 sensitivity × EMA_β2 uncertainty, same aggregation
    base = make_allocator(hf, config, "default", "baseline_adalora", d, lam)
    for step_grads in grads:
        for n, p in lora.items():
            p.grad = step_grads[n].clone()
        base.update_ipt(hf)
    b1, b2 = config.beta1, config.beta2
    element = {}
    for n, p in lora.items():
        sens, unc = torch.zeros_like(p), torch.zeros_like(p)
        for step_grads in grads:
            ipt = (p.detach() * step_grads[n]).abs()
            sens = b1 * sens + (1 - b1) * ipt
            unc = b2 * unc + (1 - b2) * (ipt - sens).abs()
        element[n] = sens * unc
    expected = by_hand(element)
    got_base = base.current_scores()
    for n in expected:
        torch.testing.assert_close(got_base[n], expected[n], rtol=1e-5, atol=1e-9)
    # every allocator also scores the other signals on the same gradients (signal_scores.jsonl other_signals)
    for n in expected:
        torch.testing.assert_close(base.scores_of("importance_only")[n], importance[n], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(base.scores_of("plasticity_only")[n], plasticity[n], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(alloc["combo"].scores_of("baseline_adalora")[n], expected[n], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(alloc["importance_only"].scores_of("combo")[n], got["combo"][n])


def test_allocation_without_gradients_is_one_clear_line():
    model, _ = adalora_model(signal="combo")
    set_schedule(model, total=8, tinit=0, tfinal=2)
    config = model.base_model.peft_config["default"]
    model.base_model.rankallocator = make_allocator(model.base_model.model, config, "default", "combo", 0.9, 1.0)
    with pytest.raises(PeftlabError, match="no gradient.*on_optimizer_step"):
        model.base_model.update_and_allocate(1)  # no backward yet: what a call after zero_grad would see


def test_dev_loss_is_the_task_loss_alone():
    """PEFT adds the orthogonal regulariser to outputs.loss in eval mode too; peftlab removes it there."""
    model, _ = adalora_model()
    batch = tiny_batch(batch_size=4, seq_len=9, seed=2)
    labels = labels_of(batch)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch[0], attention_mask=batch[1], labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert model.base_model.peft_config["default"].orth_reg_weight == 0.5  # restored after the eval forward
    model.train()  # in training the loss is CE + 0.5·R(A, B), R > 0 for random A, B
    with torch.no_grad():
        out_train = model(input_ids=batch[0], attention_mask=batch[1], labels=labels)
    assert float(out_train.loss) > float(F.cross_entropy(out_train.logits, labels)) + 1e-3
    with pytest.raises(PeftlabError, match="label smoothing"):
        model(input_ids=batch[0], attention_mask=batch[1])  # a training forward without labels


@pytest.mark.parametrize("overrides, message", [
    (["target_r=13"], r"target_r must be in \[1, init_r=12\]"),
    (["signal=magic"], "unknown signal 'magic'; choose one of: baseline_adalora"),
    (["combo_lambda=nan"], "combo_lambda must be a finite number"),
    (["tinit=1.5"], "tinit must be a whole number of steps"),
    (["ema_decay=1"], r"ema_decay must be in \(0, 1\)"),
])
def test_bad_adalora_settings_are_one_line(overrides, message):
    with pytest.raises(PeftlabError, match=message) as err:
        load_config(None, ["method=adalora", *overrides])
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ through the training loop (tiny BERT, real RTE rows)

SMALL = ["max_train_samples=24", "max_eval_samples=16", "batch_size=8", "eval_batch_size=16", "epochs=2",
         "max_len=48", "logging_steps=1", "save_steps=2", "seed=3"]
SCHEDULE = ["method=adalora", "targets=q,k,v,o,ffn_in,ffn_out", "init_r=4", "target_r=2", "tinit=1", "tfinal=2",
            "deltaT=1"]  # 6 optimizer steps: full budget at step 1, decrease over 2..4, fixed for 5..6


@pytest.fixture(scope="module")
def make_cfg(tiny_dir, data_dir):
    def make(out, *overrides):
        return load_config(None, [f"model={tiny_dir}", f"data_dir={data_dir}", f"out={out}", "task=rte",
                                  *SMALL, *SCHEDULE, *overrides])
    return make


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_cfg):
    out = tmp_path_factory.mktemp("adalora")
    cache = {}

    def get(signal):
        if signal not in cache:
            cache[signal] = train_run(make_cfg(out, f"signal={signal}"))
        return cache[signal]
    return get


@pytest.mark.parametrize("signal", SIGNALS)
def test_training_run_reaches_the_target_budget_and_writes_its_files(runs, signal, capfd):
    run = runs(signal)
    assert run.parts[-4:] == ("ADALORA", "RTE", signal, "seed3")
    rows = read_jsonl(run / "rank_pattern.jsonl")
    allocations = [r for r in rows if r["kind"] == "allocation"]
    assert [r["step"] for r in allocations] == [2, 3, 4]  # every deltaT=1 step of the decrease, the last forced
    budgets = [r["budget"] for r in allocations]
    assert budgets == sorted(budgets, reverse=True) and budgets[-1] == 2 * 12  # target_r × 12 matrices
    assert all(r["budget_ok"] for r in allocations) and allocations[-1]["total_rank"] == 24
    assert all(sum(r["ranks"].values()) == r["total_rank"] for r in allocations)
    scores = read_jsonl(run / "signal_scores.jsonl")
    assert [s["step"] for s in scores] == [2, 3, 4] and all(s["signal"] == signal for s in scores)
    assert set(scores[0]["scores"]) == set(allocations[0]["ranks"])
    assert all(set(s["other_signals"]) == set(SIGNALS) - {signal} for s in scores)
    assert all(set(v) == set(s["scores"]) for s in scores for v in s["other_signals"].values())
    for row, allocation in zip(scores, allocations):  # the kept triplets are the top `budget` scores
        pairs = [(v, k) for m in row["scores"] for v, k in zip(row["scores"][m], row["kept"][m])]
        kept = [v for v, k in pairs if k]
        assert len(kept) == allocation["budget"] and min(kept) >= max(v for v, k in pairs if not k)
    summary = read_json(run / "final_summary.json")
    metrics = read_json(run / "final_metrics.json")
    assert summary["budget_ok"] and summary["total_rank"] == summary["target_budget"] == 24
    assert summary["signal"] == signal and summary["dev"] == metrics["dev"]
    assert summary["revived_total"] == sum(r["revived"] for r in allocations)
    assert summary["trainable_params_end"] < summary["trainable_params_start"] == metrics["trainable_params"]


def test_train_command_hint_names_the_signal(runs):
    from peftlab.runs import read_run_info

    command = read_run_info(runs("combo")).train_command()
    assert command.startswith("peftlab train --task RTE --method adalora --seed 3") and command.endswith("signal=combo")


def test_callback_schedule_uses_the_real_step_count(runs):
    end = [r for r in read_jsonl(runs("combo") / "rank_pattern.jsonl") if r["kind"] == "end"][0]
    assert end["schedule"] == {"total_step": 6, "tinit": 1, "tfinal": 2}
    config = read_json(runs("combo") / "ckpt_final" / "adapter_config.json")
    assert (config["total_step"], config["tinit"], config["tfinal"]) == (6, 1, 2)


def test_save_load_keeps_the_final_ranks_and_the_logits(runs):
    run = runs("combo")
    model, tokenizer, _ = load_run_model(run, "final")
    from peftlab.methods.adalora import rank_per_module

    ranks = rank_per_module(model)
    assert ranks == [r for r in read_jsonl(run / "rank_pattern.jsonl") if r["kind"] == "end"][0]["ranks"]
    for name, param in model.base_model.model.named_parameters():  # saved = shrunk to the final pattern
        if "lora_E" in name:
            assert param.shape[0] == ranks[module_of(name)]
    batch = tokenizer(["a first sentence", "and a second one here"], padding=True, return_tensors="pt")
    again, _, _ = load_run_model(run, "final")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)


class KeepModel(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


def test_trained_model_and_saved_model_give_identical_logits(tmp_path, make_cfg, data_dir):
    """In-memory θ1 at the end of training == θ1 loaded from ckpt_final (ranks shrunk, some possibly to 0)."""
    keep = KeepModel()
    run = train_run(make_cfg(tmp_path, "signal=importance_only", "target_r=1"), callbacks=[keep])
    loaded, tokenizer, _ = load_run_model(run, "final")
    from peftlab.methods.adalora import rank_per_module

    ranks = rank_per_module(loaded)
    assert sum(ranks.values()) == 12 and ranks == rank_per_module(keep.model)
    assert 0 in ranks.values()  # (seeded) some matrices lost every triplet: rank 0 saves and loads too
    batch = tokenizer(["a first sentence", "and a second one here"], padding=True, return_tensors="pt")
    keep.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, keep.model(**batch).logits, rtol=0, atol=1e-6)


def test_delta_weights_equal_merged_minus_base(runs):
    run = runs("importance_only")
    final, _, _ = load_run_model(run, "final")
    init, _, _ = load_run_model(run, "init")
    deltas = ADALORA.delta_weights(final, init)
    assert len(deltas) == 12
    merged = copy.deepcopy(final).merge_and_unload()
    for name, delta in deltas.items():
        base = init.get_submodule(name).weight
        torch.testing.assert_close(merged.get_submodule(name).weight - base, delta, rtol=1e-4, atol=1e-6)
    assert any(float(d.abs().max()) > 0 for d in deltas.values())


def test_schedule_that_does_not_fit_fails_before_writing(tmp_path, make_cfg):
    cfg = make_cfg(tmp_path, "tinit=4", "tfinal=2")
    with pytest.raises(PeftlabError, match=r"tinit=4 >= total steps 6 - tfinal=2") as err:
        train_run(cfg)
    assert "\n" not in str(err.value) and not run_dir_for(cfg).exists()


def test_a_killed_adalora_run_refuses_to_resume(tmp_path, make_cfg):
    cfg = make_cfg(tmp_path, "signal=plasticity_only")
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, callbacks=[StopAfterStepCallback(2)])
    with pytest.raises(PeftlabError, match="cannot resume exactly.*--force"):
        train_run(cfg)
    spy = GradientSpy()
    run = train_run(cfg, force=True, callbacks=[spy])
    assert read_json(run / "final_summary.json")["budget_ok"]
    # the allocation hook sees every AdaLoRA gradient; one hook later (on_step_end) they are gone
    assert spy.at_optimizer_step == [True] * 6 and spy.at_step_end == [False] * 6


class GradientSpy(TrainerCallback):
    def __init__(self):
        self.at_optimizer_step, self.at_step_end = [], []

    @staticmethod
    def _all_grads(model):
        return all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.at_optimizer_step.append(self._all_grads(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.at_step_end.append(self._all_grads(model))


def test_fingerprint_unchanged_by_apply():
    base = tiny_model("bert")
    before = base_fingerprint(base)
    model = ADALORA.apply(copy.deepcopy(base), cfg_for())
    assert model.peftlab_base_fingerprint == before


# ------------------------------------------------------------------ CLI: run, plot, compare

def run_cli(args, capsys):
    from peftlab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_run_plot_compare(tmp_path, tiny_dir, data_dir, capsys):
    common = [f"model={tiny_dir}", f"data_dir={data_dir}", *SMALL, *SCHEDULE[2:]]
    common = [c for c in common if not c.startswith("seed=")]
    code, out, err = run_cli(["adalora", "run", "--task", "RTE", "--signals", "baseline_adalora", "combo",
                              "--seeds", "1", "2", "--lora-reference", "--lora-lr", "0.002", "--out", str(tmp_path),
                              *common], capsys)
    assert code in (0, None), err
    for seed in (1, 2):
        for signal in ("baseline_adalora", "combo"):
            assert f"ADALORA/RTE/{signal}/seed{seed}" in out
        assert f"ADALORA/RTE/lora_reference/PEFT-LoRA/RTE/seed{seed}_r2" in out
    assert err.count("[AdaLoRA Update] Step 4") == 4 and "WARNING" not in err
    # non-default options (here the six AdaLoRA targets) name the run dir: seed1_r2__targets-...
    (reference,) = (tmp_path / "ADALORA" / "RTE" / "lora_reference" / "PEFT-LoRA" / "RTE").glob("seed1_r2*")
    ref_config = read_json(reference / "run_config.json")["config"]
    ada_config = read_json(tmp_path / "ADALORA" / "RTE" / "combo" / "seed1" / "run_config.json")["config"]
    assert ref_config["rank"] == ada_config["target_r"] == 2 and ref_config["targets"] == ada_config["targets"]
    assert ref_config["lr"] == 0.002 != ada_config["lr"] and ref_config["epochs"] == ada_config["epochs"]
    code, out, err = run_cli(["adalora", "run", "--task", "RTE", "--signals", "combo", "--seeds", "1",
                              "--out", str(tmp_path), *common], capsys)  # finished runs are skipped
    assert code in (0, None) and "[AdaLoRA]" not in err
    run = tmp_path / "ADALORA" / "RTE" / "combo" / "seed1"
    assert read_json(run / "run_config.json")["config"]["targets"] == list(ALL)  # AdaLoRA's default targets
    code, out, err = run_cli(["adalora", "plot", str(run)], capsys)
    assert code in (0, None), err
    for name in ("rank_evolution.png", "signal_heatmap.png"):
        assert (run / "analysis" / name).read_bytes()[:4] == b"\x89PNG"
    code, out, err = run_cli(["adalora", "compare", "--task", "RTE", "--seeds", "1", "2", "--out", str(tmp_path)], capsys)
    assert code in (0, None), err
    compare = tmp_path / "ADALORA" / "RTE" / "compare"
    data = read_json(compare / "compare.json")
    assert (compare / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert data["signals"]["combo"]["n"] == 2 and data["signals"]["combo"]["se"] is not None
    summaries = {s: [read_json(tmp_path / "ADALORA" / "RTE" / s / f"seed{k}" / "final_summary.json") for k in (1, 2)]
                 for s in ("baseline_adalora", "combo")}
    scores = {s: [x["score"] for x in v] for s, v in summaries.items()}
    diffs = [c - b for c, b in zip(scores["combo"], scores["baseline_adalora"])]
    assert data["vs_baseline"]["combo"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert len(data["missing_runs"]) == 2 * 2  # importance_only, plasticity_only × seeds 1, 2
    lora = data["lora_reference"]  # the equal-budget LoRA reference, paired by seed
    ref_dirs = [reference.parent / reference.name.replace("seed1_", f"seed{k}_") for k in (1, 2)]
    lora_scores = [read_json(d / "final_metrics.json")["score"] for d in ref_dirs]
    assert lora["rank"] == 2 and lora["scores"] == {"1": lora_scores[0], "2": lora_scores[1]}
    assert lora["vs_signal"]["combo"]["mean"] == pytest.approx(
        sum(c - r for c, r in zip(scores["combo"], lora_scores)) / 2)
    overlap = data["rank_overlap"]["baseline_adalora~combo"]  # Σ min(r_a, r_b) / budget, by hand
    by_hand = []
    for a, b in zip(summaries["baseline_adalora"], summaries["combo"]):
        by_hand.append(sum(min(a["ranks"][m], b["ranks"][m]) for m in a["ranks"]) / a["target_budget"])
    assert overlap["shared_rank_mean"] == pytest.approx(sum(by_hand) / 2)
    assert "signals.csv" in {p.name for p in compare.iterdir()} and "lora_r2,1," in (compare / "signals.csv").read_text()
    table = (compare / "table.md").read_text().splitlines()  # the README table
    assert len(table) == 2 + 2 + 1 + 2 and table[4].startswith("| LoRA r=2 on q,k,v,o,ffn_in,ffn_out | 1, 2 |")
    chance, combo = data["chance"], data["signals"]["combo"]  # chance: the constant majority-class predictor
    assert table[5] == "" and table[6].startswith(f"Chance level: accuracy {chance['chance']:.4f} of the constant")
    assert combo["vs_chance"] == ("above chance" if combo["mean"] > chance["above_chance_threshold"] else "AT CHANCE")
    assert f"| {combo['vs_chance']} |" in table[3]
    assert table[3].startswith(f"| combo | 1, 2 | {combo['mean']:.4f} ± {combo['std']:.4f} [{combo['ci_low']:.4f}, ")
    assert "| 24 | True |" in table[3]
    code, out, err = run_cli(["adalora", "run", "--signal", "nope", "--out", str(tmp_path), *common], capsys)
    assert code == 2 and err.strip() == "error: unknown signal 'nope'; choose one of: baseline_adalora, " \
        "importance_only, plasticity_only, combo"
    code, out, err = run_cli(["adalora", "run", "--signals", "combo", "nope", "--out", str(tmp_path / "bad"), *common],
                             capsys)  # every setting is checked before the first run starts
    assert code == 2 and err.startswith("error: unknown signal 'nope'") and not (tmp_path / "bad").exists()


def test_mnli_offline_is_one_clear_line(tmp_path, tiny_dir, capsys, monkeypatch):
    """MNLI has no local copy here: the Hub option is the way for online users; offline it is one line."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "nodata").mkdir()
    code, out, err = run_cli(["adalora", "run", "--task", "MNLI", "--signal", "combo", "--out", str(tmp_path),
                              f"model={tiny_dir}", f"data_dir={tmp_path / 'nodata'}"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: no MNLI train file")
    assert "Hub is off" in err and "glue/MNLI/train.tsv" in err and not (tmp_path / "ADALORA").exists()


def test_budget_mismatch_at_the_end_is_a_loud_warning_with_numbers(capsys):
    """Nothing was allocated (rank 4 everywhere) yet target_r=2: the end-of-training check says so, even quietly."""
    from types import SimpleNamespace

    from peftlab.methods.adalora_callback import AdaLoraCallback

    model, cfg = adalora_model()
    callback = AdaLoraCallback(cfg, run_dir=None, verbose=False)
    callback.on_train_end(None, SimpleNamespace(global_step=8), None, model=model)
    err = capsys.readouterr().err
    assert "WARNING: budget check failed at the end of training: total rank 48 != target_r 2 × 12 matrices = 24" in err


def test_dev_chance_is_the_constant_majority_predictor_with_a_binomial_band(tmp_path):
    """Chance = accuracy of always predicting the TRAIN majority class on the evaluated dev rows (not assumed)."""
    import math

    from peftlab.analysis.adalora_view import chance_caption
    from peftlab.analysis.dev_chance import chance_verdict, dev_chance

    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    train = ["entailment"] * 7 + ["not_entailment"] * 3  # majority: entailment (id 0)
    dev = ["entailment", "not_entailment", "not_entailment", "entailment", "not_entailment", "not_entailment"]
    for name, labels in (("train", train), ("dev", dev)):
        rows = "".join(f"{i}\ta b\tc d\t{label}\n" for i, label in enumerate(labels))
        (rte / f"{name}.tsv").write_text(header + rows)
    chance = dev_chance({"task": "RTE", "data_dir": str(tmp_path), "max_eval_samples": None})
    assert chance["constant_prediction"] == 0 and chance["n_dev"] == 6
    assert chance["chance"] == pytest.approx(2 / 6)
    assert chance["above_chance_threshold"] == pytest.approx(2 / 6 + 1.6448536 * math.sqrt(2 / 6 * 4 / 6 / 6))
    first3 = dev_chance({"task": "RTE", "data_dir": str(tmp_path), "max_eval_samples": 3})
    assert first3["n_dev"] == 3 and first3["chance"] == pytest.approx(1 / 3)  # only the rows the runs evaluated
    assert chance_verdict(0.9, chance) == "above chance" and chance_verdict(0.5, chance) == "AT CHANCE"
    assert chance_verdict(None, chance) == "n/a"
    missing = dev_chance({"task": "RTE", "data_dir": str(tmp_path / "none")})
    assert "chance" not in missing and missing["reason"].startswith("dev/train labels not available here")
    assert chance_caption(missing).startswith("Chance level: not computed (dev/train labels not available")
    assert dev_chance({"task": "STS-B", "data_dir": str(tmp_path)})["reason"].startswith("regression")
