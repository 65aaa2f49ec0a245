"""Chance level of a fine-tuned run's dev score: is the model better than ignoring its input?

A dev accuracy means little next to an unknown baseline (RTE dev is 52.7 % one class). The chance level here
is computed from the data, never assumed:

  constant predictor  ŷ_i = argmax_c n_c(train)  (the majority class of the TRAIN labels: a predictor that
                      cannot see the input; the dev labels would be peeking), scored on the dev rows the runs
                      were evaluated on (the first `max_eval_samples` rows) with the task's main metric.
  above-chance band   for accuracy over n dev rows, a score a is "above chance" when
                      a > p0 + z_0.95 · sqrt(p0 (1 − p0) / n)   (one-sided 95 %, binomial sampling of n rows at
                      the constant predictor's accuracy p0). For other metrics (F1, MCC, correlations) the
                      constant predictor's value is reported without a verdict: their sampling law under
                      "no skill" is not binomial, and these runs do not keep their predictions to permute.

Used by `peftlab adalora compare` (and anything else that tabulates dev scores of finished runs).
"""

from __future__ import annotations

import math
from typing import Any

from peftlab.errors import PeftlabError

Z_ONE_SIDED_95 = 1.6448536269514722  # scipy.stats.norm.ppf(0.95)


def dev_chance(config: dict[str, Any]) -> dict[str, Any]:
    """{metric, constant_prediction, chance, n_dev, above_chance_threshold (accuracy only), rule} or {reason}.

    `config` is a run's `run_config.json` "config" block (task, data_dir, max_eval_samples).
    """
    import torch

    from peftlab.heads.probe import chance_predictor
    from peftlab.tasks import get_task, load_split
    from peftlab.tasks.metrics import METRICS

    try:
        task = get_task(config["task"])
        if task.is_regression:
            return {"reason": "regression: a constant prediction has no correlation (undefined), no chance score"}
        train = load_split(task, "train", config.get("data_dir"))
        dev = load_split(task, task.eval_split, config.get("data_dir"))
    except (PeftlabError, KeyError, OSError) as error:
        return {"reason": f"dev/train labels not available here ({str(error).splitlines()[0]})"}
    labels = [int(y) for y in dev.labels]
    limit = config.get("max_eval_samples")
    if limit:
        labels = labels[: int(limit)]
    # the θ0 probe's constant predictor (heads/probe.py): its argmax is the majority class, ties → smaller id
    train_labels = torch.tensor([int(y) for y in train.labels])
    majority = int(chance_predictor(train_labels, task.num_labels, regression=False).argmax())
    metric = task.main_metric
    if metric not in METRICS or not labels:
        return {"reason": f"no chance rule for metric '{metric}'"}
    chance = float(METRICS[metric]([majority] * len(labels), labels))
    out = {"metric": metric, "constant_prediction": majority, "chance": chance, "n_dev": len(labels),
           "rule": "constant predictor = majority class of the train labels, scored on the evaluated dev rows"}
    if metric == "accuracy":
        out["above_chance_threshold"] = chance + Z_ONE_SIDED_95 * math.sqrt(chance * (1 - chance) / len(labels))
        out["rule"] += "; above chance when accuracy > p0 + 1.645·sqrt(p0(1−p0)/n) (one-sided 95 %, binomial)"
    return out


def chance_verdict(score: float | None, chance: dict[str, Any]) -> str:
    """"above chance", "AT CHANCE" or "n/a" for one (mean) dev score against `dev_chance`'s result."""
    threshold = chance.get("above_chance_threshold")
    if score is None or threshold is None:
        return "n/a"
    return "above chance" if score > threshold else "AT CHANCE"


def chance_caption(chance: dict) -> str:
    """One plain line under the table: the chance level the "vs chance" column was judged against."""
    if "chance" not in chance:
        return f"Chance level: not computed ({chance.get('reason', 'unknown')})."
    text = (f"Chance level: {chance['metric']} {chance['chance']:.4f} of the constant predictor (majority train class "
            f"{chance['constant_prediction']}) on the {chance['n_dev']} evaluated dev rows")
    if chance.get("above_chance_threshold") is not None:
        text += (f"; a mean above {chance['above_chance_threshold']:.4f} is above chance (one-sided 95 %, binomial). "
                 f"Rows AT CHANCE carry no evidence about the signals")
    return text + "."
