"""Where training time goes: forward, backward, optimizer, other — per optimizer step, via Trainer callbacks.

Transformers 5.24's loop per optimizer step (gradient accumulation k):
    on_step_begin → k × (forward + backward) → clip grads → on_pre_optimizer_step → optimizer.step()
    → on_optimizer_step → scheduler, zero_grad → on_step_end
Measured (wall clock; `torch.cuda.synchronize()` first on CUDA so queued kernels count where they run):
    forward_s   = Σ time inside the model's forward during a step (module pre/post hooks; eval passes excluded)
    backward_s  = (on_pre_optimizer_step − on_step_begin) − forward: backward + gradient clipping + earlier callbacks
    optimizer_s = on_optimizer_step − on_pre_optimizer_step (+ callbacks registered before this one, e.g. AdaLoRA)
    other_s     = on_step_end − on_optimizer_step: scheduler step, zero_grad
Batch loading happens before on_step_begin and is in none of them. Only this process's steps are counted:
a resumed run reports the resumed part (`steps` says how many). Eval and checkpoint time are in `timing`.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StepTimingCallback(TrainerCallback):
    """Accumulates forward/backward/optimizer/other seconds over the optimizer steps of one `train()` call."""

    def __init__(self, model):
        self.totals = {"forward_s": 0.0, "backward_s": 0.0, "optimizer_s": 0.0, "other_s": 0.0}
        self.steps = 0
        self._in_step = False
        self._forward = 0.0  # forward seconds of the current step
        self._t_forward = None
        self._t_begin = self._t_pre = self._t_opt = None
        self._handles = [model.register_forward_pre_hook(self._forward_start),
                         model.register_forward_hook(self._forward_end)]

    def _forward_start(self, module, args):
        if self._in_step:
            _sync()
            self._t_forward = time.perf_counter()

    def _forward_end(self, module, args, output):
        if self._in_step and self._t_forward is not None:
            _sync()
            self._forward += time.perf_counter() - self._t_forward
            self._t_forward = None

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        self._in_step, self._forward, self._t_begin = True, 0.0, time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        _sync()
        self._t_pre = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        _sync()
        self._t_opt = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        end = time.perf_counter()
        if None not in (self._t_begin, self._t_pre, self._t_opt):
            self.totals["forward_s"] += self._forward
            self.totals["backward_s"] += (self._t_pre - self._t_begin) - self._forward
            self.totals["optimizer_s"] += self._t_opt - self._t_pre
            self.totals["other_s"] += end - self._t_opt
            self.steps += 1
        self._in_step = False
        self._t_begin = self._t_pre = self._t_opt = None

    def on_train_end(self, args, state, control, **kwargs):
        self.remove_hooks()

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def summary(self) -> dict:
        """{"forward_s", "backward_s", "optimizer_s", "other_s", "steps", "note"} (seconds rounded to ms)."""
        return {**{k: round(v, 3) for k, v in self.totals.items()}, "steps": self.steps,
                "note": "this process's optimizer steps only; batch loading, eval and saving excluded "
                        "(see training/timing.py)"}
