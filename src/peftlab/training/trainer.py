"""`PeftlabTrainer`: the HF `Trainer` with a seeded sampler, exact checkpoints and a time ledger.

Four changes to the stock Trainer, each for a reason:
  - training order comes from `EpochSeededSampler` (resume gives the same order as no kill);
  - checkpoint weights are the model's raw `state_dict` saved with safetensors and loaded back
    strictly. The stock path goes through `save_pretrained` (which may rename keys) and loads
    with `load_state_dict(strict=False)`, which would silently drop a custom module's weights
    (peftlab's own LoRA) on resume; here a mismatch is an error;
  - evaluation and checkpoint saving are timed, so `train_s` excludes them;
  - every loss and gradient norm is shown to a `DivergenceCallback`, which stops a diverging run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from transformers import Trainer

from peftlab.errors import PeftlabError
from peftlab.training.data import EpochSeededSampler

from peftlab.training.rundir import STATE_FILE  # one name for the writer here and the resume check


class PeftlabTrainer(Trainer):
    def __init__(self, *args, seed: int = 0, group_by_length: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.peftlab_seed = seed
        self.peftlab_group_by_length = group_by_length
        self.ledger = {"eval_s": 0.0, "checkpoint_s": 0.0}
        self.last_eval: dict | None = None  # (step, metrics) of the most recent evaluation
        self.divergence_monitor = None  # a DivergenceCallback: sees every loss and gradient norm

    # ------------------------------------------------------------ divergence
    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        if self.divergence_monitor is not None:
            self.divergence_monitor.record_loss(float(loss.detach()))
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.divergence_monitor is not None and grad_norm is not None:
            self.divergence_monitor.record_grad_norm(float(grad_norm))
        return grad_norm

    # ------------------------------------------------------------ data order
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return EpochSeededSampler(dataset.lengths, batch, self.peftlab_seed, self.peftlab_group_by_length)

    # ------------------------------------------------------------ timing
    def evaluate(self, *args, **kwargs):
        start = time.perf_counter()
        metrics = super().evaluate(*args, **kwargs)
        self.ledger["eval_s"] += time.perf_counter() - start
        self.last_eval = {"step": self.state.global_step, "metrics": dict(metrics)}
        return metrics

    def _save_checkpoint(self, model, trial):
        start = time.perf_counter()
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as err:
            # disk full / unwritable while saving (torch.save raises RuntimeError for a failed write): one
            # line; the torn checkpoint is skipped by the next resume (training/rundir.checkpoint_problem)
            if isinstance(err, RuntimeError) and "writ" not in str(err).lower():
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise PeftlabError(f"cannot write a checkpoint under {self.args.output_dir} ({first}); free some "
                               f"space or choose another --out, then re-run the same command to resume") from err
        self.ledger["checkpoint_s"] += time.perf_counter() - start

    # ------------------------------------------------------------ exact checkpoint weights
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        from safetensors.torch import save_model

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        # save_model de-duplicates shared tensors (tied embeddings) that save_file would reject
        save_model(self.accelerator.unwrap_model(self.model), os.path.join(output_dir, STATE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from safetensors.torch import load_model

        model = model if model is not None else self.model
        path = Path(resume_from_checkpoint) / STATE_FILE
        if not path.is_file():
            raise PeftlabError(
                f"checkpoint '{resume_from_checkpoint}' has no {STATE_FILE}; re-run with --force to start over"
            )
        missing, unexpected = load_model(self.accelerator.unwrap_model(model), str(path), strict=False)
        if missing or unexpected:
            raise PeftlabError(
                f"checkpoint '{resume_from_checkpoint}' does not match the model (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}); re-run with --force to start over"
            )
