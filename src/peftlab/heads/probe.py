"""θ0 for pre-fine-tuning measurements: a probe of the classifier on the frozen θ0 body.

Why: θ0 with its freshly initialised classifier says almost nothing (MiniLM-L6 / RTE: every
|I| < 6e-4), because the random classifier ignores whatever the body computes. `theta0="probe"`
first trains ONLY the classifier modules on train-split rows that are NOT in the eval subset,
starting from the run's seeded classifier init, with the body frozen; `theta0="init"` keeps the
random classifier.

Which modules ("classifier modules" = everything between the body's last hidden states and the
logits, in the model's own architecture, so I_pre and I_post measure the same function family):
`peftlab.arch.classifier_module_names` (BERT `classifier`, RoBERTa/Electra `classifier` — which
holds dense + tanh + out_proj —, DeBERTa `pooler` + `classifier`, LLaMA/Qwen/GPT-2 `score`) plus
the body's own pooler when the classifier reads it (BERT: `bert.pooler` = dense + tanh on [CLS]).
Whether that pooler is trained too is a selection choice (below): for a sentence embedder such as
all-MiniLM-L6-v2, trained with MEAN pooling, the pretrained pooler was never trained for the
checkpoint's task, so fitting it on [CLS] gives every family the same dense+tanh+linear probe that
RoBERTa/Electra/DeBERTa heads already have. What the pooler reads ([CLS] or the masked token mean) is
a property of the RUN, not of the probe (config `pooling`, peftlab/pooling.py): the probe reads what
the fine-tuned model reads, so I_pre and I_post measure one function family either way. For the
packaged MiniLM on SST-2, pooling=mean lifts the probe from 76.9 % to 81.8 % held-out accuracy
(`benchmarks/probe_quality.py --tasks sst2 --pooling cls mean`).

Rows (train split minus the eval subset, permuted with default_rng(subset seed)):
  train  (≤ PROBE_TRAIN)   the probe is fitted on these;
  select (≤ PROBE_SELECT)  hyper-parameters and the stopping step are chosen on these;
  held-out (≤ PROBE_HELDOUT) never seen by fitting or selection: `heldout_loss/metric`, chance and
  `better_than_chance` are computed on these only, so the reported score is not selection-biased.
A split with fewer free rows than PROBE_TRAIN + PROBE_SELECT + PROBE_HELDOUT is divided in the
same 4:1:2 proportion.

How (cached features: the body is frozen, so one forward pass over the probe rows is all the body
work; the probe then trains full-batch in milliseconds per step):
  1. forward pre-hooks on the candidate modules record the order they are called in and the input
     of the first one (the "features");
  2. a 3-D feature [B, T, H] is cut to the one position the head reads (ArchSpec.read_position):
     "first" → [:, :1]; "last" → the last non-pad token, found as HF's sequence classifiers do;
  3. classifier(features) = the modules applied in call order (eval mode: dropout is the identity);
     a 3-D output [B, 1, C] is read at [:, 0]. This is checked against the model's own logits on the
     first batch, so a family wired differently fails loudly instead of training the wrong function;
  4. for every grid point (modules × lr × l2) full-batch AdamW steps on cross-entropy (MSE for
     regression) + l2·Σ‖θ − θ_start‖² (pulls toward the starting values: the seeded classifier init
     and the pretrained pooler), up to PROBE_MAX_STEPS; every PROBE_EVAL_EVERY steps the loss on the
     select rows is computed. Rule: the (grid point, step) with the lowest select loss wins (ties:
     first in grid order, earlier step). Its weights are kept.

The θ0 used for pre measurements is then the same for FFT and LoRA runs of one model/task/seed.
The trained classifier is saved as `probe_classifier.safetensors` (keys = the model's state-dict
names) and reused when its settings and the ckpt_init weights hash match; `probe.json` records the
settings, the selection (grid, rule, chosen values, select loss per grid point), held-out score next
to chance, and seconds.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from peftlab.errors import PeftlabError
from peftlab.pooling import pooling_of

PROBE_FILE = "probe.json"
PROBE_CLASSIFIER_FILE = "probe_classifier.safetensors"
# Every file the probe writes; measure/reuse code copies exactly these.
PROBE_FILES = (PROBE_FILE, PROBE_CLASSIFIER_FILE)
# Row budget: features are cached, so a row costs one body forward (batched in token-length order) plus its
# share of every full-batch grid step. More training rows bought little on SST-2 (MiniLM-L6, max_len 64, the same
# 1024 select and 1024 held-out rows, seed 1; held-out accuracy): 2048 rows 78.4 %, 4096 rows 78.8 % — within
# the held-out SE of ±1.3 points — while the grid's cost grows with the rows (4096 rows: 2.5× the fitting time).
# So 2048 rows train the probe; the held-out part is 1024 rows (was 512) so the reported score has half the
# variance (SE ≈ 1.3 points instead of 1.8 at 80 %), for ~3 s more of body forward.
PROBE_TRAIN = 2048
PROBE_SELECT = 512
PROBE_HELDOUT = 1024
PROBE_EXAMPLES = PROBE_TRAIN + PROBE_SELECT + PROBE_HELDOUT  # most rows the probe reads
# The search grid (chosen per run on the select rows, see the module docstring). Measured on MiniLM-L6 /
# SST-2 (max_len 64, 2048 train / 512 select / 512 held-out rows; select loss, held-out accuracy):
#   classifier only, lr 1e-3 / 1e-2 / 3e-2 / 1e-1: 0.585 (still falling at 300 steps) / 0.496 / 0.495 / 0.496 — 0.758
#   pooler+classifier, l2 0: lr 1e-3 / 1e-2 best after 20 steps, 0.495 / 0.501, then over-fits (148 k weights)
#   pooler+classifier, lr 1e-2, l2 1e-3: 0.480 at 40 steps — 0.752
#   pooler+classifier, lr 3e-4, l2 1e-2: 0.469 at 280 steps — 0.770 | l2 1e-1: 0.621 (too strong)
# so the grid spans slow-and-regularised to fast; fast pooler points stop early (PROBE_PATIENCE).
PROBE_GRID: dict[str, tuple] = {
    "modules": ("classifier", "pooler+classifier"),  # the second only where the classifier reads a pooler
    "lr": (3e-4, 1e-3, 1e-2, 3e-2),
    "l2": (0.0, 1e-2),
}
# Classifier-only was still improving at step 300 with lr 1e-3, while pooler+classifier at lr ≥ 1e-3 reached
# its best select loss within 20-50 steps; a grid point stops after PROBE_PATIENCE evaluations without a new
# best, so the fast points stop early and the slow ones may run to PROBE_MAX_STEPS. 300 steps and patience 3
# (was 500 / 5) keep the slowest point seen above (best at 280 steps) and halve the grid's cost: the probe
# step of the SST-2 demo spent most of its 170 s in pooler+classifier points that had stopped improving.
PROBE_MAX_STEPS = 300
PROBE_EVAL_EVERY = 10
PROBE_PATIENCE = 3
SELECTION_RULE = (f"lowest cross-entropy (MSE for regression) on the select rows over every grid point and every "
                  f"{PROBE_EVAL_EVERY}th step up to {PROBE_MAX_STEPS} (a grid point stops after {PROBE_PATIENCE} "
                  "evaluations without improving); ties: first grid point, earlier step")
# better_than_chance, classification: the task metric (accuracy, F1, MCC) of the probe minus that of the
# constant predictor, both on the same held-out rows; 95 % percentile bootstrap over held-out rows
# (scipy.stats.bootstrap, rows resampled jointly for both predictors, MARGIN_RESAMPLES, seed 0); better when
# the interval's lower end is above 0. Why: the metric is what the report shows next to chance, and a
# paired interval says whether the difference could be row-sampling noise. Regression (a constant has no
# correlation): the same rule on the per-row loss gain, loss_chance_i − loss_probe_i (squared error), with
# a 95 % t-interval. The per-row loss gain is recorded for every task too (`margin.gain_*`).
MARGIN_RESAMPLES = 1000
MARGIN_RULE = ("classification: 95% paired percentile bootstrap interval (held-out rows resampled) of "
               "metric(probe) - metric(chance) lies above 0; regression: 95% t-interval of "
               "mean_i (loss_chance_i - loss_probe_i) lies above 0; chance = constant predictor fitted on the "
               "probe's training labels")
THETA0_CHOICES = ("probe", "init")


def probe_settings(subset: dict[str, Any], n_train: int = PROBE_TRAIN, n_select: int = PROBE_SELECT,
                   n_heldout: int = PROBE_HELDOUT) -> dict[str, Any]:
    """Everything that determines the probe classifier (with the ckpt_init weights)."""
    return {
        "method": "cached-features, grid selected on held-out select rows",
        "modules": None,  # filled with the trained module names when trained
        "split": "train",
        "n_train": n_train,
        "n_select": n_select,
        "n_heldout": n_heldout,
        "seed": int(subset["seed"]),
        "grid": {k: list(v) for k, v in PROBE_GRID.items()},
        "max_steps": PROBE_MAX_STEPS,
        "eval_every": PROBE_EVAL_EVERY,
        "patience": PROBE_PATIENCE,
        "optimizer": "AdamW(weight_decay=0) + l2·Σ‖θ−θ_start‖², full batch, eval mode",
        "exclude": f"{subset['task']} {subset['split']} eval subset ({subset['size']} rows)",
    }


def probe_splits(n_rows: int, subset: dict[str, Any], n_train: int = PROBE_TRAIN, n_select: int = PROBE_SELECT,
                 n_heldout: int = PROBE_HELDOUT) -> dict[str, list[int]]:
    """{"train", "select", "heldout"}: disjoint train-split row ids, none in the eval subset, each sorted.

    The free rows are permuted with default_rng(subset seed); the first n_train are "train", the next
    n_select "select", the next n_heldout "heldout". With fewer free rows than the three together, each
    part gets its share of the free rows (floor), train taking what rounding leaves.
    """
    import numpy as np

    excluded = set(subset["indices"]) if subset["split"] == "train" else set()
    pool = np.array([i for i in range(n_rows) if i not in excluded], dtype=np.int64)
    wanted = n_train + n_select + n_heldout
    if len(pool) < 3:
        raise PeftlabError(
            f"only {len(pool)} {subset['task']} train rows are left outside the eval subset; the θ0 probe needs "
            "at least 3 (train, select, held-out); pass a smaller --subset-size or --theta0 init"
        )
    if len(pool) < wanted:
        n_select = max(1, len(pool) * n_select // wanted)
        n_heldout = max(1, len(pool) * n_heldout // wanted)
        n_train = len(pool) - n_select - n_heldout
    order = np.random.default_rng(int(subset["seed"])).permutation(pool)
    cuts = np.cumsum([n_train, n_select, n_heldout])
    parts = np.split(order[:cuts[-1]], cuts[:-1])
    return {name: sorted(int(i) for i in part) for name, part in zip(("train", "select", "heldout"), parts)}


def _read_positions(input_ids, attention_mask, pad_token_id):
    """Per row, the index of the last non-pad token ([B]), as HF's *ForSequenceClassification pick it."""
    import torch

    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long)
    non_pad = (input_ids != pad_token_id).long()  # [B, T]
    positions = torch.arange(input_ids.shape[1], dtype=torch.long)  # [T]
    return (positions * non_pad).argmax(-1)  # [B]


def pooler_module_name(model) -> str | None:
    """Name of the body's own pooler (BERT `bert.pooler`), or None; whether the classifier reads it is
    found by the call-order hooks (RoBERTa builds no pooler for classification, BERT's classifier reads it)."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    if body is not None and getattr(body, "pooler", None) is not None:
        return f"{prefix}.pooler"
    return None


class ClassifierFeatures:
    """Capture the classifier's input for a batch and replay the classifier on saved features."""

    def __init__(self, model):
        from peftlab.arch import classifier_module_names, get_arch

        self.model = model
        self.spec = get_arch(model)
        self.classifier_names = classifier_module_names(model)
        if not self.classifier_names:
            raise PeftlabError(
                f"this {self.spec.family} model has none of the classifier modules {self.spec.classifier}; "
                "use --theta0 init or fix ArchSpec.classifier in peftlab/arch.py"
            )
        pooler = pooler_module_name(model)
        self.names = ([pooler] if pooler and pooler not in self.classifier_names else []) + self.classifier_names
        self.order: list[str] = []  # candidate modules in the order the model calls them

    @property
    def pooler(self) -> str | None:
        """The body's pooler when the model really calls it before the classifier, else None."""
        return self.order[0] if self.order and self.order[0] not in self.classifier_names else None

    def capture(self, batch) -> tuple[Any, Any]:
        """(features [B, H] or [B, 1, H], model logits [B, C]) for one batch, body and classifier in no_grad."""
        import torch

        seen: list[str] = []
        first_input: list[Any] = []

        def hook(name):
            def pre_hook(module, args, kwargs):
                seen.append(name)
                if len(seen) == 1:
                    first_input.append(args[0] if args else next(iter(kwargs.values())))
            return pre_hook

        handles = [self.model.get_submodule(n).register_forward_pre_hook(hook(n), with_kwargs=True)
                   for n in self.names]
        try:
            with torch.no_grad():
                logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        finally:
            for handle in handles:
                handle.remove()
        if not self.order:
            self.order = list(dict.fromkeys(seen))
        features = first_input[0].detach()
        if features.dim() == 3:  # [B, T, H] -> [B, 1, H] at the read position
            if self.spec.read_position == "first":
                features = features[:, :1]
            else:
                at = _read_positions(batch["input_ids"], batch.get("attention_mask"),
                                     getattr(self.model.config, "pad_token_id", None))
                features = features[torch.arange(features.shape[0]), at].unsqueeze(1)  # [B, H] -> [B, 1, H]
        return features, logits.detach()

    def apply(self, features, names: list[str] | None = None):
        """The modules `names` (default: all, in call order) applied to `features`; [B, 1, C] -> [B, C] at the end."""
        out = features
        for name in self.order if names is None else names:
            out = self.model.get_submodule(name)(out)
        return out[:, 0] if out.dim() == 3 and names is None else out

    def classifier(self, features):
        """Logits [B, C] of the captured modules applied in call order to `features`."""
        return self.apply(features)

    def check(self, features, logits) -> None:
        """The replayed classifier must reproduce the model's logits, or this family is wired differently."""
        import torch

        with torch.no_grad():
            replay = self.classifier(features)
        if replay.shape != logits.shape or not torch.allclose(replay, logits, atol=1e-4, rtol=1e-4):
            raise PeftlabError(
                f"the θ0 probe cannot replay the {self.spec.family} classifier from cached features "
                f"(modules {self.order}); use --theta0 init and report this architecture"
            )


def _row_losses(logits, labels, regression: bool):
    """Per-row task loss [N]: cross-entropy, or squared error for regression (num_labels = 1)."""
    import torch.nn.functional as fn

    if regression:
        return (logits.reshape(-1) - labels.float()) ** 2
    return fn.cross_entropy(logits, labels, reduction="none")


def _accuracy(logits, labels) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def chance_predictor(train_labels, n_classes: int, regression: bool):
    """The constant predictor fitted on the probe's training labels, as logits [C] (or [1]).

    Classification: class frequencies with add-one smoothing, p_c = (n_c + 1) / (N + C), as log p_c
    (logits whose softmax is p; smoothing keeps the loss finite when a class is missing from the
    training rows); its prediction is the majority class. Regression: the training mean ȳ.
    """
    import torch

    if regression:
        return train_labels.float().mean().reshape(1)
    counts = torch.bincount(train_labels.long(), minlength=n_classes).double()  # [C]
    return torch.log((counts + 1.0) / (counts.sum() + n_classes)).float()


def heldout_report(probe_logits, chance_logits, labels, regression: bool,
                   metric: tuple[str, Callable] | None) -> dict[str, Any]:
    """Held-out loss/metric of the probe and of the constant predictor, and the margin rule's verdict.

    Loss gain per row: gain_i = loss_chance_i − loss_probe_i; mean ± t_{.975, N−1}·sd(gain, ddof=1)/√N.
    Metric gain: metric(probe) − metric(chance) on the held-out rows, 95 % percentile bootstrap interval.
    Chance metric: the task metric of the constant prediction (None for regression: a correlation of a
    constant is undefined). See MARGIN_RULE.
    """
    import numpy as np
    import torch
    from scipy.stats import bootstrap
    from scipy.stats import t as student_t

    n = labels.shape[0]
    chance = chance_logits.unsqueeze(0).expand(n, -1)  # [C] -> [N, C]
    probe_losses = _row_losses(probe_logits, labels, regression)
    chance_losses = _row_losses(chance, labels, regression)
    gain = (chance_losses - probe_losses).double().numpy()
    mean = float(gain.mean())
    se = float(gain.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    half = float(student_t.ppf(0.975, n - 1)) * se if n > 1 else float("nan")
    name, fn = metric if metric is not None else ((None, None) if regression else ("accuracy", _accuracy))
    heldout_metric = None if fn is None else float(fn(probe_logits, labels))
    chance_metric = None if (fn is None or regression) else float(fn(chance, labels))
    margin = {"gain_mean": mean, "gain_se": se, "gain_ci_low": mean - half, "gain_ci_high": mean + half}
    if chance_metric is None:
        better = bool(np.isfinite(margin["gain_ci_low"]) and margin["gain_ci_low"] > 0)
    else:
        def metric_gain(rows):
            rows = torch.as_tensor(rows, dtype=torch.long)
            return float(fn(probe_logits[rows], labels[rows])) - float(fn(chance[rows], labels[rows]))

        low = high = float("nan")
        if n > 1:
            ci = bootstrap((np.arange(n),), metric_gain, vectorized=False, paired=False, n_resamples=MARGIN_RESAMPLES,
                           confidence_level=0.95, method="percentile", rng=np.random.default_rng(0)).confidence_interval
            low, high = float(ci.low), float(ci.high)
        margin.update({"metric_gain": heldout_metric - chance_metric, "metric_gain_ci_low": low,
                       "metric_gain_ci_high": high, "resamples": MARGIN_RESAMPLES})
        better = bool(np.isfinite(low) and low > 0)
    return {
        "heldout_loss": float(probe_losses.mean()),
        "heldout_metric": heldout_metric,
        "metric_name": name,
        "chance_loss": float(chance_losses.mean()),
        "chance_metric": chance_metric,
        "better_than_chance": better,
        "margin_rule": MARGIN_RULE,
        "margin": margin,
    }


def collect_features(model, batches, progress=None, features_of: ClassifierFeatures | None = None):
    """(ClassifierFeatures, features [N, H] or [N, 1, H], labels [N]) of `batches`; the first batch is replay-checked."""
    import torch

    model.eval()
    features_of = features_of or ClassifierFeatures(model)
    features, labels = [], []
    for i, batch in enumerate(batches):
        feats, logits = features_of.capture(batch)
        if i == 0:
            features_of.check(feats, logits)
        features.append(feats)
        labels.append(batch["labels"])
        if progress is not None:
            progress()
    return features_of, torch.cat(features), torch.cat(labels)


def _grid_points(features_of: ClassifierFeatures, grid: dict[str, tuple]) -> list[dict[str, Any]]:
    """Grid points in order; "pooler+classifier" only where the model's classifier reads its pooler."""
    modules = [m for m in grid["modules"] if m == "classifier" or features_of.pooler is not None]
    return [{"modules": m, "lr": float(lr), "l2": float(l2)} for m in modules for lr in grid["lr"] for l2 in grid["l2"]]


def fit_probe(model, features_of: ClassifierFeatures, parts: dict[str, tuple[Any, Any]], regression: bool = False,
              grid: dict[str, tuple] | None = None, max_steps: int = PROBE_MAX_STEPS,
              eval_every: int = PROBE_EVAL_EVERY, patience: int = PROBE_PATIENCE) -> dict[str, Any]:
    """Fit the classifier on parts["train"], choose grid point and step on parts["select"] (SELECTION_RULE),
    and leave `model` holding the chosen weights. parts = {name: (features, labels)}.

    Returns {"modules", "selection": {"grid", "rule", "chosen", "table"}, "train_loss_before", "train_loss",
    "train_accuracy", "select_loss"}.
    """
    import torch

    grid = grid or PROBE_GRID
    x_train, y_train = parts["train"]
    x_select, y_select = parts["select"]
    names = list(features_of.order)
    start = {n: {k: v.detach().clone() for k, v in model.get_submodule(n).state_dict().items()} for n in names}

    def restore(state):
        for n in names:
            model.get_submodule(n).load_state_dict(state[n])

    def mean_loss(logits, labels):
        return _row_losses(logits, labels, regression).mean()

    with torch.no_grad():
        loss_before = float(mean_loss(features_of.classifier(x_train), y_train))
    best: dict[str, Any] = {"select_loss": math.inf}
    table = []
    for point in _grid_points(features_of, grid):
        restore(start)
        trained = names if point["modules"] == "pooler+classifier" else [n for n in names if n != features_of.pooler]
        frozen = [n for n in names if n not in trained]  # a frozen prefix is applied once, not every step
        with torch.no_grad():
            x_tr, x_se = (features_of.apply(x_train, frozen), features_of.apply(x_select, frozen)) if frozen \
                else (x_train, x_select)

        def logits_of(x):
            out = features_of.apply(x, trained)
            return out[:, 0] if out.dim() == 3 else out  # [B, 1, C] -> [B, C]

        params = [p for n in trained for p in model.get_submodule(n).parameters()]
        anchors = [p.detach().clone() for p in params]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=point["lr"], weight_decay=0.0)
        point_best = {"select_loss": math.inf, "steps": 0}
        stale = 0
        try:
            for step in range(1, max_steps + 1):
                optimizer.zero_grad(set_to_none=True)
                loss = mean_loss(logits_of(x_tr), y_train)
                if point["l2"]:
                    loss = loss + point["l2"] * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors))
                loss.backward()
                optimizer.step()
                if step % eval_every and step != max_steps:
                    continue
                with torch.no_grad():
                    select_loss = float(mean_loss(logits_of(x_se), y_select))
                stale += 1
                if select_loss < point_best["select_loss"]:
                    stale = 0
                    point_best = {"select_loss": select_loss, "steps": step}
                    if select_loss < best["select_loss"]:
                        best = {"select_loss": select_loss, "chosen": {**point, "steps": step}, "modules": trained,
                                "state": {n: {k: v.detach().clone() for k, v in model.get_submodule(n).state_dict().items()}
                                          for n in names}}
                if stale >= patience:
                    break
        finally:
            for p, flag in zip(params, flags):
                p.grad = None  # leave no gradient behind on the model
                p.requires_grad_(flag)
        table.append({**point, **point_best})
    if "state" not in best:
        raise PeftlabError("the θ0 probe's select loss was never finite (diverged on every grid point); "
                           "use --theta0 init and report this model/task")
    restore(best["state"])
    with torch.no_grad():
        logits = features_of.classifier(x_train)
        loss_after = float(mean_loss(logits, y_train))
    return {
        "modules": best["modules"],
        "selection": {"grid": {k: list(v) for k, v in grid.items()}, "max_steps": max_steps, "eval_every": eval_every,
                      "patience": patience, "rule": SELECTION_RULE, "chosen": best["chosen"], "table": table},
        "train_loss_before": loss_before,
        "train_loss": loss_after,
        "train_accuracy": None if regression else _accuracy(logits, y_train),
        "select_loss": best["select_loss"],
    }


def train_probe(model, train_batches, select_batches, heldout_batches, regression: bool = False,
                metric: tuple[str, Callable] | None = None, grid: dict[str, tuple] | None = None,
                max_steps: int = PROBE_MAX_STEPS, eval_every: int = PROBE_EVAL_EVERY, n_classes: int | None = None,
                progress=None) -> dict[str, Any]:
    """Train the classifier modules of `model` (in place) on cached features; choose hyper-parameters on
    `select_batches`; score on `heldout_batches` next to chance (see `heldout_report`).

    `metric` = (name, fn(logits [N, C], labels [N]) -> float), default accuracy (None for regression).
    The body is never run with gradients; `model` is left in eval mode with the chosen classifier.
    """
    import torch

    features_of, parts = None, {}
    for name, batches in (("train", train_batches), ("select", select_batches), ("heldout", heldout_batches)):
        features_of, x, y = collect_features(model, batches, progress, features_of)
        parts[name] = (x, y)
    result = fit_probe(model, features_of, parts, regression, grid, max_steps, eval_every)
    x_heldout, y_heldout = parts["heldout"]
    n_classes = n_classes or int(getattr(model.config, "num_labels", 2))
    chance = chance_predictor(parts["train"][1], n_classes, regression)
    with torch.no_grad():
        heldout_logits = features_of.classifier(x_heldout)
    report = heldout_report(heldout_logits, chance, y_heldout, regression, metric)
    return {**result, **report, "pooler": features_of.pooler,
            "n_train": len(parts["train"][1]), "n_select": len(parts["select"][1]), "n_heldout": len(y_heldout)}


def classifier_state(model, modules: list[str]) -> dict[str, Any]:
    """{state-dict name: tensor} of the given modules (what `probe_classifier.safetensors` holds)."""
    return {f"{m}.{k}": v.detach().clone().contiguous() for m in modules
            for k, v in model.get_submodule(m).state_dict().items()}


def load_probe_classifier(model, path: str | Path) -> None:
    """Load `probe_classifier.safetensors` into `model`'s classifier modules (all keys must match)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = model.state_dict()
    missing = [k for k in state if k not in own]
    if missing:
        raise PeftlabError(f"{path} does not fit this model (unknown keys {missing[:3]}); re-measure with --force")
    model.load_state_dict(state, strict=False)


def weights_hash(model) -> str:
    """sha256 over the model's state dict (names, shapes, fp32 bytes): identifies a θ0 exactly."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def probe_batch_count(n_rows: int, subset: dict[str, Any], batch_size: int) -> int:
    """How many feature batches `ensure_probe` will run (for progress bars)."""
    splits = probe_splits(n_rows, subset)
    return sum(-(-len(rows) // batch_size) for rows in splits.values())  # ceil per part


def ensure_probe(run_dir: str | Path, model, tokenizer, subset: dict[str, Any], batch_size: int = 32,
                 force: bool = False, progress=None) -> dict[str, Any]:
    """Give `model` (θ0, in place) its probe classifier: reuse `probe_classifier.safetensors` when settings
    and the θ0 weights hash match, else train it on the run's train split and save it. Returns probe.json.

    `progress()` is called once per feature batch.
    """
    from safetensors.torch import save_file

    from peftlab.heads.subset import length_order, reorder, run_config, subset_rows, tokenize_batches
    from peftlab.io import atomic_write_json, read_json
    from peftlab.tasks import get_task, load_split, metrics_from_logits

    run_dir = Path(run_dir)
    settings = probe_settings(subset)
    theta0_hash = weights_hash(model)
    info_path, classifier_path = run_dir / PROBE_FILE, run_dir / PROBE_CLASSIFIER_FILE
    if not force and info_path.is_file() and classifier_path.is_file():
        info = read_json(info_path)
        same = {k: v for k, v in info.get("settings", {}).items() if k != "modules"} == \
               {k: v for k, v in settings.items() if k != "modules"}
        if same and info.get("theta0_sha256") == theta0_hash and info.get("finished"):
            load_probe_classifier(model, classifier_path)
            return info
    started = time.perf_counter()
    config = run_config(run_dir)
    spec = get_task(subset["task"])
    train = load_split(spec, "train", config.get("data_dir"))
    splits = probe_splits(len(train.labels), subset, settings["n_train"], settings["n_select"],
                          settings["n_heldout"])
    max_len = int(config.get("max_len") or 128)
    batches = {}
    for name, rows in splits.items():
        text_a, text_b, labels = subset_rows(train, rows)
        # Batched in token-length order: the body forward is most of the probe's cost, and random batches of
        # SST-2 phrases pad to ~41 tokens per row against ~14 sorted. Full-batch fitting ignores row order.
        order = length_order(tokenizer, text_a, text_b, max_len)
        batches[name] = tokenize_batches(tokenizer, reorder(text_a, order), reorder(text_b, order),
                                         reorder(labels, order), max_len, batch_size, regression=spec.is_regression)

    def task_metric(logits, labels) -> float:
        return float(metrics_from_logits(spec, logits.detach().numpy(), labels.numpy())[spec.main_metric])

    result = train_probe(model, batches["train"], batches["select"], batches["heldout"], spec.is_regression,
                         (spec.main_metric, task_metric), n_classes=spec.num_labels, progress=progress)
    settings["modules"] = result["modules"]
    state = classifier_state(model, result["modules"])
    tmp = classifier_path.with_name(f"{classifier_path.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp))
    os.replace(tmp, classifier_path)  # never a half-written classifier file
    info = {
        "theta0": "probe",
        "settings": settings,
        "classifier_modules": result["modules"],
        "pooling": _pooling_text(result, pooling_of(model)),
        "model_pooling": pooling_of(model),  # peftlab.pooling: what the classifier reads (cls | mean)
        "n_examples": sum(len(rows) for rows in splits.values()),
        "indices_sha256": hashlib.sha256(str([splits[k] for k in ("train", "select", "heldout")]).encode()).hexdigest(),
        **{k: v for k, v in result.items() if k not in ("modules", "pooler")},
        "subset_loss": None,  # filled by the importance_pre step (its loss_base on the subset)
        "subset_metric": None,
        "theta0_sha256": theta0_hash,
        "seconds": time.perf_counter() - started,
        "finished": True,
    }
    atomic_write_json(info_path, info)
    return info


def _pooling_text(result: dict[str, Any], pooling: str = "cls") -> str:
    """How the probe reads the body, in words, for probe.json."""
    if result["pooler"] is None:
        return "the model's own classifier on the position it reads; no separate pooler"
    reads = ("the masked mean of all tokens (pooling=mean, peftlab.pooling)" if pooling == "mean"
             else "the first token")
    if result["pooler"] in result["modules"]:
        return (f"the model's own pooler ({result['pooler']}: dense+tanh on {reads}) trained together "
                "with the classifier (chosen on the select rows)")
    return (f"the model's own pooler ({result['pooler']}, on {reads}) kept pretrained; only the classifier trained "
            "(chosen on the select rows)")


def probe_summary(info: dict[str, Any]) -> str:
    """One line for logs: chosen values and held-out score next to chance, from probe.json."""
    chosen = info.get("selection", {}).get("chosen", {})
    name = info.get("metric_name") or "loss"
    score = (f"held-out {name} {info['heldout_metric']:.3f} vs chance {info['chance_metric']:.3f}, "
             if isinstance(info.get("heldout_metric"), float) and isinstance(info.get("chance_metric"), float) else "")
    verdict = "better than chance" if info.get("better_than_chance") else "NOT better than chance"
    return (f"{chosen.get('modules')} lr {chosen.get('lr')} l2 {chosen.get('l2')} {chosen.get('steps')} steps on "
            f"{info.get('n_train')} train rows; {score}held-out loss {info.get('heldout_loss', float('nan')):.4f} vs "
            f"chance {info.get('chance_loss', float('nan')):.4f} on {info.get('n_heldout')} rows: {verdict}")


def record_subset_score(run_dir: str | Path, loss: float, metric_name: str, metric: float) -> None:
    """Add the probe's loss/metric on the eval subset (computed by importance_pre) to probe.json."""
    from peftlab.io import atomic_write_json, read_json

    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        return
    info = read_json(path)
    info.update({"subset_loss": loss, "subset_metric_name": metric_name, "subset_metric": metric})
    atomic_write_json(path, info)
