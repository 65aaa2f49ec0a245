"""Which hidden state the classifier reads: the model's own `[CLS]` ("cls") or the masked token mean ("mean").

Why an option: a sentence embedder such as the packaged all-MiniLM-L6-v2 was trained with MEAN pooling; its
[CLS] state and BERT pooler were never trained for that objective. Measured on SST-2 (frozen body, logistic
regression on 4096 train rows, 1024 held-out rows; /work notes of 2026-12-06, reproduced by
`benchmarks/probe_quality.py --pooling cls|mean`): [CLS] 78.8 % held-out, mean 82.5 %. So a θ0 probe (and
fine-tuning) on [CLS] uses less of what the frozen body computes than the checkpoint offers.

What "mean" changes, and what it keeps:
    pooler input  h [B, T, H]  ->  mean_t(h · m) / Σ_t m  as [B, 1, H]   (m = attention_mask [B, T])
The model's own pooler (BERT: dense + tanh on position 0) then reads that one position, and the classifier
follows as before. Weights, state-dict names, saved checkpoints and the architecture
(BertForSequenceClassification) are unchanged, so θ0, θ1, the θ0 probe and every measurement use one function
family: only the pooler's input differs from plain HF. The choice is recorded in the model's config
(`config.peftlab_pooling`, saved in config.json of ckpt_init/ and ckpt_final/) and re-applied by every
peftlab load (`peftlab.models.load_model`, FFT's `load_final`), and in run_config.json.

Implementation: two hooks, because BertModel calls its pooler with the hidden states only: a forward
pre-hook on the body keeps the batch's attention mask while the body runs (cleared when it returns, also on
an exception), and a forward pre-hook on the pooler replaces its input by the masked mean. Outside a body
forward (e.g. the θ0 probe replaying the pooler on cached [B, 1, H] features) no mask is held and every
position counts, as HF does for a call without an attention mask.

Only the BERT family has its pooler inside the body (never in PEFT's modules_to_save, so never deep-copied
away from its hook); other families are refused with one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftlab.errors import PeftlabError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import torch.nn as nn

POOLINGS = ("cls", "mean")
CONFIG_KEY = "peftlab_pooling"  # attribute of the HF config (saved in config.json)
MEAN_FAMILIES = ("bert",)


def pooling_of(model_or_config) -> str:
    """The pooling recorded on a model (or its config): "cls" when none was set."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, CONFIG_KEY, None) or "cls"


def masked_mean(hidden: "torch.Tensor", mask: "torch.Tensor | None") -> "torch.Tensor":
    """Mean over positions of `hidden` [B, T, H] where `mask` [B, T] is non-zero, as [B, 1, H].

    mean_b = Σ_t hidden[b, t] · m[b, t] / max(Σ_t m[b, t], 1); no mask = every position counts.
    """
    if mask is None:
        return hidden.mean(dim=1, keepdim=True)
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T] -> [B, T, 1]
    total = (hidden * weights).sum(dim=1, keepdim=True)  # [B, 1, H]
    return total / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


class _MeanPooling:
    """The two hooks of one model (see the module docstring); `handles` removes them."""

    def __init__(self, body: "nn.Module", pooler: "nn.Module"):
        self.mask: "torch.Tensor | None" = None
        self.handles = [
            body.register_forward_pre_hook(self._keep_mask, with_kwargs=True),
            body.register_forward_hook(self._drop_mask, always_call=True),
            pooler.register_forward_pre_hook(self._pool),
        ]

    def _keep_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is not None and mask.dim() != 2:
            raise PeftlabError(f"pooling=mean needs a [batch, tokens] attention mask, got shape {tuple(mask.shape)}; "
                               "pass the tokenizer's attention_mask or use pooling=cls")
        self.mask = mask
        return None

    def _drop_mask(self, module, args, output):
        self.mask = None
        return None

    def _pool(self, module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[1] == 1:
            return None  # already one position per row (cached probe features): nothing to pool
        mask = self.mask if self.mask is not None and tuple(self.mask.shape) == tuple(hidden.shape[:2]) else None
        return (masked_mean(hidden, mask), *args[1:])


def apply_pooling(model: "nn.Module", pooling: str | None = None) -> "nn.Module":
    """Make `model` read `pooling` ("cls" | "mean"; None = what its config records) and record it in the config.

    Idempotent: a model that already pools this way is returned as it is. Returns `model`.
    """
    from peftlab.arch import get_arch

    pooling = pooling or pooling_of(model)
    if pooling not in POOLINGS:
        raise PeftlabError(f"unknown pooling '{pooling}'; choose one of {', '.join(POOLINGS)}")
    current = getattr(model, "_peftlab_mean_pooling", None)
    if pooling == "cls":
        if current is not None:
            raise PeftlabError("this model already pools by the token mean; load it again for pooling=cls")
        if getattr(model.config, CONFIG_KEY, None) is not None:
            setattr(model.config, CONFIG_KEY, "cls")
        return model
    if current is not None:
        return model
    spec = get_arch(model)
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    pooler = getattr(body, "pooler", None) if body is not None else None
    if spec.family not in MEAN_FAMILIES or pooler is None:
        raise PeftlabError(f"pooling=mean is supported for {', '.join(MEAN_FAMILIES)} models with a pooler "
                           f"(this is a {spec.family} model{'' if pooler is not None else ' without one'}); "
                           "use pooling=cls")
    model._peftlab_mean_pooling = _MeanPooling(body, pooler)
    setattr(model.config, CONFIG_KEY, "mean")
    return model
