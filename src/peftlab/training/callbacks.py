"""TrainerCallbacks of the training loop: the metrics log, epoch-end checkpoints, the time ledger."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

from peftlab.io import append_jsonl, atomic_write_json

TIMING_FILE = "peftlab_timing.json"


def log_kind(logs: dict) -> str:
    """'eval' for evaluation logs, 'summary' for the end-of-training summary, else 'train'."""
    if any(key.startswith("eval_") for key in logs):
        return "eval"
    if "train_runtime" in logs:
        return "summary"
    return "train"


class MetricsLogCallback(TrainerCallback):
    """Append one JSON object per Trainer log (training step or evaluation) to `metrics.jsonl`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The Trainer's end-of-train summary is skipped: its train_loss/runtime cover only the last
        # `train()` call, so after a resume they would disagree with an uninterrupted run.
        # final_metrics.json holds the whole run's timing and mean training loss instead.
        # only the main process writes (under torchrun every rank sees the same logs)
        if logs and log_kind(logs) != "summary" and state.is_world_process_zero:
            row = {"kind": log_kind(logs), "step": state.global_step, "epoch": state.epoch, **logs}
            append_jsonl(self.path, row)


class SaveAtEpochEndCallback(TrainerCallback):
    """Checkpoint at every epoch end as well as every `save_steps` (the Trainer allows only one strategy)."""

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True
        return control


class TimingCheckpointCallback(TrainerCallback):
    """Write the time spent so far into each checkpoint, so a resumed run reports the total time.

    `elapsed()` returns `{"train_s", "eval_s", "save_s"}` accumulated up to now (including the
    time recorded in the checkpoint this run resumed from).
    """

    def __init__(self, elapsed):
        self.elapsed = elapsed

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir() and state.is_world_process_zero:  # one writer under torchrun
            atomic_write_json(checkpoint / TIMING_FILE, self.elapsed())


def read_checkpoint_timing(checkpoint: Path | None) -> dict[str, float]:
    zero = {"train_s": 0.0, "eval_s": 0.0, "save_s": 0.0}
    if checkpoint is None or not (Path(checkpoint) / TIMING_FILE).is_file():
        return zero
    try:
        data = json.loads((Path(checkpoint) / TIMING_FILE).read_text())
    except ValueError:
        return zero
    return {key: float(data.get(key, 0.0)) for key in zero}


class StopAfterStepCallback(TrainerCallback):
    """Raise `KeyboardInterrupt` after optimizer step `step` (after any checkpoint at that step).

    For tests and demos of resume: it behaves like a user pressing Ctrl-C mid-run.
    """

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"stopped after step {state.global_step}")

    def on_step_end(self, args, state, control, **kwargs):
        # without a checkpoint at this step, stop right away (the next run resumes from the last one)
        if state.global_step >= self.step and not control.should_save:
            raise KeyboardInterrupt(f"stopped after step {state.global_step}")



class DivergenceCallback(TrainerCallback):
    """Stop training at the first non-finite loss or gradient norm, before the optimizer applies it.

    `PeftlabTrainer` reports every micro-batch loss (`record_loss`) and the pre-clipping gradient norm
    of each optimizer step (`record_grad_norm`); `on_pre_optimizer_step` — after the gradients are
    known, before `optimizer.step()` writes them into the weights — raises `DivergedError` with the
    step, the last finite loss and the settings to look at. Nothing non-finite reaches a checkpoint,
    and no completion marker is written. Why here and not in `on_log`: the Trainer's
    `logging_nan_inf_filter` replaces a NaN loss in the logs by the running mean, so logs never show it.
    """

    def __init__(self, lr: float, max_grad_norm: float):
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self.last_finite_loss: float | None = None
        self.last_finite_step: int | None = None
        self.bad: tuple[str, float] | None = None  # (what, value) of the first non-finite value this step
        self.step = 0

    def record_loss(self, value: float) -> None:
        if math.isfinite(value):
            if self.bad is None:
                self.last_finite_loss, self.last_finite_step = value, self.step
        elif self.bad is None:
            self.bad = ("loss", value)

    def record_grad_norm(self, value: float) -> None:
        if not math.isfinite(value) and self.bad is None:
            self.bad = ("gradient norm", value)

    def on_step_begin(self, args, state, control, **kwargs):
        self.step = state.global_step + 1  # the optimizer step being computed (1-based, as logged)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.bad is None:
            return
        from peftlab.errors import DivergedError

        what, value = self.bad
        last = (f"last finite loss {self.last_finite_loss:.4g} at step {self.last_finite_step}"
                if self.last_finite_loss is not None else "no finite loss before it")
        clip = f"max_grad_norm={self.max_grad_norm:g}" if self.max_grad_norm > 0 else "max_grad_norm=0 (no clipping)"
        raise DivergedError(
            f"training diverged at step {state.global_step + 1}: {what} is {value} ({last}); no result was "
            f"written. Look at lr={self.lr:g} (try 10x lower) and {clip}, then re-run with --force"
        )
