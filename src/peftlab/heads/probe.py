"""θ0 for pre-fine-tuning measurements: a linear probe of the task head on the frozen θ0 body.

Why: θ0 with its freshly initialised classifier says almost nothing (MiniLM-L6 / RTE: every
|I| < 6e-4), because the random head ignores whatever the body computes. `theta0="probe"` first
trains ONLY the classifier modules (`peftlab.arch.classifier_module_names`: BERT `classifier`,
RoBERTa/Electra `classifier`, DeBERTa `pooler` + `classifier`, LLaMA/Qwen/GPT-2 `score`) on
train-split examples that are NOT in the eval subset, starting from the run's seeded head init,
with the body frozen; `theta0="init"` keeps the random head.

How (cached features, chosen because the body is frozen, so one forward pass over the probe
examples is all the body work; the head then trains PROBE_STEPS full-batch steps in milliseconds,
versus PROBE_STEPS body passes for plain frozen-body training):
  1. forward pre-hooks on the classifier modules record the order they are called in and the
     input of the first one (the "features");
  2. a 3-D feature [B, T, H] is cut to the one position the head reads (ArchSpec.read_position):
     "first" → [:, :1] (RoBERTa/Electra head and DeBERTa pooler read [:, 0]); "last" → the last
     non-pad token, found as HF's sequence classifiers do (last position whose id != pad id), as
     LLaMA/GPT-2 apply `score` per position and then pick that token. BERT's classifier already
     reads the pooled [B, H] vector;
  3. head(features) = the classifier modules applied in call order (eval mode: dropout between
     them is the identity); a 3-D output [B, 1, C] is read at [:, 0]. This is checked against the
     model's own logits on the first batch, so a family whose head is wired differently fails
     loudly instead of training the wrong function;
  4. PROBE_STEPS full-batch AdamW steps (lr PROBE_LR, no weight decay, eval mode — no dropout, so the
     probe is deterministic) on cross-entropy (MSE for regression).

The θ0 used for pre measurements is then the same for FFT and LoRA runs of one model/task/seed
(same ckpt_init, same subset, same probe settings → same head). The trained head is saved as
`probe_head.safetensors` (keys = the model's state-dict names) and reused when its settings and
the ckpt_init weights hash match; `probe.json` records settings, accuracy/loss and seconds.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError

PROBE_FILE = "probe.json"
PROBE_HEAD_FILE = "probe_head.safetensors"
PROBE_EXAMPLES = 256  # MiniLM-L6 on RTE (128 tokens): ~10 s of body forward passes on 2 CPU cores
# Chosen on MiniLM-L6 / RTE (256 probe rows, 256 other train rows held out; AdamW full batch):
#   lr 1e-3 × 100 steps: train acc 0.74, held-out loss 0.690 | × 300: 0.79, 0.701 | × 1000: 0.86, 0.788
#   lr 1e-2 × 300 steps: train acc 0.95, held-out loss 1.025 (overfits: frozen MiniLM is near chance on RTE)
# 200 steps at 1e-3 fits the head to what the body offers without memorising the probe rows.
PROBE_STEPS = 200
PROBE_LR = 1e-3
THETA0_CHOICES = ("probe", "init")


def probe_settings(subset: dict[str, Any], n_examples: int = PROBE_EXAMPLES, steps: int = PROBE_STEPS,
                   lr: float = PROBE_LR) -> dict[str, Any]:
    """Everything that determines the probe head (with the ckpt_init weights)."""
    return {
        "method": "cached-features",
        "modules": None,  # filled with the classifier module names when trained
        "split": "train",
        "n_examples": n_examples,
        "seed": int(subset["seed"]),
        "steps": steps,
        "lr": lr,
        "optimizer": "AdamW(weight_decay=0), full batch, eval mode",
        "exclude": f"{subset['task']} {subset['split']} eval subset ({subset['size']} rows)",
    }


def probe_indices(n_train: int, subset: dict[str, Any], n_examples: int) -> list[int]:
    """Train-split row ids for the probe: not in the eval subset, drawn with default_rng(subset seed), sorted."""
    import numpy as np

    excluded = set(subset["indices"]) if subset["split"] == "train" else set()
    pool = np.array([i for i in range(n_train) if i not in excluded], dtype=np.int64)
    if len(pool) == 0:
        raise PeftlabError(
            f"no {subset['task']} train rows are left outside the eval subset to train the θ0 probe; "
            "pass a smaller --subset-size or --theta0 init"
        )
    take = min(n_examples, len(pool))
    chosen = np.random.default_rng(int(subset["seed"])).choice(pool, size=take, replace=False)
    return sorted(int(i) for i in chosen)


def _read_positions(input_ids, attention_mask, pad_token_id):
    """Per row, the index of the last non-pad token ([B]), as HF's *ForSequenceClassification pick it."""
    import torch

    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long)
    non_pad = (input_ids != pad_token_id).long()  # [B, T]
    positions = torch.arange(input_ids.shape[1], dtype=torch.long)  # [T]
    return (positions * non_pad).argmax(-1)  # [B]


class HeadFeatures:
    """Capture the classifier's input for a batch and replay the classifier on saved features."""

    def __init__(self, model):
        from peftlab.arch import classifier_module_names, get_arch

        self.model = model
        self.spec = get_arch(model)
        self.names = classifier_module_names(model)
        if not self.names:
            raise PeftlabError(
                f"this {self.spec.family} model has none of the classifier modules {self.spec.classifier}; "
                "use --theta0 init or fix ArchSpec.classifier in peftlab/arch.py"
            )
        self.order: list[str] = []  # classifier modules in the order the model calls them

    def capture(self, batch) -> tuple[Any, Any]:
        """(features [B, H] or [B, 1, H], model logits [B, C]) for one batch, body and head in no_grad."""
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

    def head(self, features):
        """Logits [B, C] of the classifier modules applied in call order to `features`."""
        out = features
        for name in self.order:
            out = self.model.get_submodule(name)(out)
        return out[:, 0] if out.dim() == 3 else out  # [B, 1, C] -> [B, C]

    def check(self, features, logits) -> None:
        """The replayed head must reproduce the model's logits, or this family's head is wired differently."""
        import torch

        with torch.no_grad():
            replay = self.head(features)
        if replay.shape != logits.shape or not torch.allclose(replay, logits, atol=1e-4, rtol=1e-4):
            raise PeftlabError(
                f"the θ0 probe cannot replay the {self.spec.family} classifier from cached features "
                f"(modules {self.order}); use --theta0 init and report this architecture"
            )


def _loss(logits, labels, regression: bool):
    import torch.nn.functional as fn

    if regression:
        return fn.mse_loss(logits.squeeze(-1), labels.float())
    return fn.cross_entropy(logits, labels)


def train_probe(model, batches, steps: int = PROBE_STEPS, lr: float = PROBE_LR, regression: bool = False,
                progress=None) -> dict[str, Any]:
    """Train the classifier modules of `model` (in place) on cached features of `batches`.

    Returns `{"modules", "train_loss_before", "train_loss", "train_accuracy"}` (accuracy None for
    regression). The body is never run with gradients; `model` is left in eval mode.
    """
    import torch

    model.eval()
    features_of = HeadFeatures(model)
    features, labels = [], []
    for i, batch in enumerate(batches):
        feats, logits = features_of.capture(batch)
        if i == 0:
            features_of.check(feats, logits)
        features.append(feats)
        labels.append(batch["labels"])
        if progress is not None:
            progress(i + 1, len(batches))
    features = torch.cat(features)  # [N, H] or [N, 1, H]
    labels = torch.cat(labels)  # [N]
    params = [p for n in features_of.order for p in model.get_submodule(n).parameters()]
    was_trainable = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    with torch.no_grad():
        loss_before = float(_loss(features_of.head(features), labels, regression))
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(features_of.head(features), labels, regression)
        loss.backward()
        optimizer.step()
    for p, flag in zip(params, was_trainable):
        p.requires_grad_(flag)
    with torch.no_grad():
        logits = features_of.head(features)
        loss_after = float(_loss(logits, labels, regression))
        accuracy = None if regression else float((logits.argmax(-1) == labels).float().mean())
    return {"modules": list(features_of.order), "train_loss_before": loss_before, "train_loss": loss_after,
            "train_accuracy": accuracy}


def head_state(model, modules: list[str]) -> dict[str, Any]:
    """{state-dict name: tensor} of the classifier modules (what `probe_head.safetensors` holds)."""
    return {f"{m}.{k}": v.detach().clone().contiguous() for m in modules
            for k, v in model.get_submodule(m).state_dict().items()}


def load_probe_head(model, path: str | Path) -> None:
    """Load `probe_head.safetensors` into `model`'s classifier modules (all keys must match)."""
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


def ensure_probe(run_dir: str | Path, model, tokenizer, subset: dict[str, Any], batch_size: int = 32,
                 force: bool = False, progress=None) -> dict[str, Any]:
    """Give `model` (θ0, in place) its probe head: reuse `probe_head.safetensors` when settings and the
    θ0 weights hash match, else train it on the run's train split and save it. Returns probe.json."""
    from safetensors.torch import save_file

    from peftlab.heads.subset import run_config, subset_rows, tokenize_batches
    from peftlab.io import atomic_write_json, read_json
    from peftlab.tasks import get_task, load_split

    run_dir = Path(run_dir)
    settings = probe_settings(subset)
    theta0_hash = weights_hash(model)
    info_path, head_path = run_dir / PROBE_FILE, run_dir / PROBE_HEAD_FILE
    if not force and info_path.is_file() and head_path.is_file():
        info = read_json(info_path)
        same = {k: v for k, v in info.get("settings", {}).items() if k != "modules"} == \
               {k: v for k, v in settings.items() if k != "modules"}
        if same and info.get("theta0_sha256") == theta0_hash and info.get("finished"):
            load_probe_head(model, head_path)
            return info
    started = time.perf_counter()
    config = run_config(run_dir)
    spec = get_task(subset["task"])
    train = load_split(spec, "train", config.get("data_dir"))
    indices = probe_indices(len(train.labels), subset, settings["n_examples"])
    text_a, text_b, labels = subset_rows(train, indices)
    batches = tokenize_batches(tokenizer, text_a, text_b, labels, int(config.get("max_len") or 128), batch_size,
                               regression=spec.is_regression)
    result = train_probe(model, batches, settings["steps"], settings["lr"], spec.is_regression, progress)
    settings["modules"] = result.pop("modules")
    state = head_state(model, settings["modules"])
    tmp = head_path.with_name(f"{head_path.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp))
    os.replace(tmp, head_path)  # never a half-written head file
    info = {
        "theta0": "probe",
        "settings": settings,
        "n_examples": len(indices),
        "indices_sha256": hashlib.sha256(str(indices).encode()).hexdigest(),
        **result,
        "subset_loss": None,  # filled by the importance_pre step (its loss_base on the subset)
        "subset_metric": None,
        "theta0_sha256": theta0_hash,
        "seconds": time.perf_counter() - started,
        "finished": True,
    }
    atomic_write_json(info_path, info)
    return info


def record_subset_score(run_dir: str | Path, loss: float, metric_name: str, metric: float) -> None:
    """Add the probe's loss/metric on the eval subset (computed by importance_pre) to probe.json."""
    from peftlab.io import atomic_write_json, read_json

    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        return
    info = read_json(path)
    info.update({"subset_loss": loss, "subset_metric_name": metric_name, "subset_metric": metric})
    atomic_write_json(path, info)
