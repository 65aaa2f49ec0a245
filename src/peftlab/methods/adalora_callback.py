"""`AdaLoraCallback`: sets AdaLoRA's schedule when training starts and reallocates ranks at each optimizer step.

Files in the run directory (written as training goes; none marks completion — final_metrics.json does):
  rank_pattern.jsonl   one row per allocation: {kind: "allocation", step, budget (scheduled), total_rank,
                       budget_ok, n_active_modules, revived, changed: {module: [old, new]}, ranks: {module: rank}};
                       a last row {kind: "end", ...} with the trainable parameter counts
  signal_scores.jsonl  one row per allocation: {step, signal, scores: {module: [T_i for each triplet]},
                       kept: {module: [triplet kept?]}, other_signals: {signal: {module: [T_i]}}} (T_i as in
                       adalora_signals; baseline: PEFT's score; other_signals: the three signals not allocating,
                       scored on the same gradients)
  final_summary.json   written by `write_final_summary` before final_metrics.json: dev metrics, total_rank,
                       target_budget, budget_ok, revived_total, trainable params at start and end, train time
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import TrainerCallback

from peftlab.errors import PeftlabError
from peftlab.io import append_jsonl, atomic_write_json, read_jsonl

RANK_PATTERN = "rank_pattern.jsonl"
SIGNAL_SCORES = "signal_scores.jsonl"
FINAL_SUMMARY = "final_summary.json"


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / DataParallel


class AdaLoraCallback(TrainerCallback):
    """Schedule at `on_train_begin`; `update_and_allocate(step)` at `on_optimizer_step` (gradients exist there)."""

    def __init__(self, cfg, run_dir: str | Path | None = None, verbose: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.verbose = verbose
        self.total = self.tinit = self.tfinal = 0
        self.ranks: dict[str, int] = {}
        self.masked: set[tuple[str, int]] = set()  # (module, triplet) masked at the previous allocation
        self.allocations: list[dict] = []
        self.trainable_start = 0

    # ------------------------------------------------------------ start
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from peftlab.methods.adalora import rank_per_module, resolve_schedule
        from peftlab.methods.adalora_signals import make_allocator

        if getattr(args, "label_smoothing_factor", 0):
            raise PeftlabError("AdaLoRA cannot train with label smoothing (the Trainer then computes the loss "
                               "itself and PEFT's orthogonal regulariser is skipped); set label_smoothing_factor=0")
        if state.global_step > 0:
            raise PeftlabError("AdaLoRA cannot resume from a checkpoint (the rank allocator's state is not saved); "
                               "re-run with --force to start over")
        peft_model = _unwrap(model)
        adalora = peft_model.base_model
        adapter = adalora.trainable_adapter_name
        config = adalora.peft_config[adapter]
        self.total = int(state.max_steps)  # the real number of optimizer steps of this Trainer run
        self.tinit, self.tfinal = resolve_schedule(self.cfg, self.total)
        config.total_step, config.tinit, config.tfinal = self.total, self.tinit, self.tfinal
        allocator = make_allocator(adalora.model, config, adapter, self.cfg.signal, self.cfg.ema_decay,
                                   self.cfg.combo_lambda)
        adalora.rankallocator = allocator
        self.ranks = rank_per_module(peft_model)
        self.trainable_start = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        if self.run_dir is not None:
            for name in (RANK_PATTERN, SIGNAL_SCORES, FINAL_SUMMARY):
                (self.run_dir / name).unlink(missing_ok=True)  # a fresh run's files are its own
        self._say(f"[AdaLoRA] signal={self.cfg.signal}: {len(self.ranks)} matrices, budget {allocator.init_bgt} → "
                  f"{allocator.target_bgt} (init_r {self.cfg.init_r} → target_r {self.cfg.target_r}); full budget "
                  f"for steps 1..{self.tinit}, cubic decrease over steps {self.tinit + 1}..{self.total - self.tfinal} "
                  f"(every {config.deltaT} steps), ranks fixed for the last {self.tfinal} of {self.total} steps")

    # ------------------------------------------------------------ every optimizer step
    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        peft_model = _unwrap(model)
        adalora = peft_model.base_model
        allocator = adalora.rankallocator
        step = state.global_step + 1  # global_step is incremented after this hook
        budget, mask_ind = allocator.budget_schedule(step)
        final = self.total - self.tfinal
        adalora.update_and_allocate(step)
        if step < final and mask_ind or step == final:
            self._record(peft_model, step, budget)

    def _record(self, peft_model, step: int, budget: int) -> None:
        from peftlab.methods.adalora import rank_per_module
        from peftlab.methods.adalora_signals import module_of

        adalora = peft_model.base_model
        pattern = adalora.peft_config[adalora.trainable_adapter_name].rank_pattern or {}
        masked = {(module_of(k), i) for k, kept in pattern.items() for i, keep in enumerate(kept) if not keep}
        revived = len(self.masked - masked)
        ranks = rank_per_module(peft_model)
        changed = {m: [self.ranks.get(m), r] for m, r in ranks.items() if self.ranks.get(m) != r}
        total_rank = sum(ranks.values())
        row = {"kind": "allocation", "step": step, "budget": budget, "total_rank": total_rank,
               "budget_ok": total_rank == budget, "n_active_modules": sum(r > 0 for r in ranks.values()),
               "revived": revived, "changed": changed, "ranks": ranks}
        self.allocations.append(row)
        self.masked, self.ranks = masked, ranks
        scores = getattr(adalora.rankallocator, "last_scores", None)
        others = getattr(adalora.rankallocator, "last_scores_all", None) or {}
        if self.run_dir is not None:
            append_jsonl(self.run_dir / RANK_PATTERN, row)
            if scores is not None:
                def per_module(values):
                    return {module_of(k): [float(x) for x in v.view(-1)] for k, v in values.items()}

                append_jsonl(self.run_dir / SIGNAL_SCORES, {
                    "step": step, "signal": self.cfg.signal, "scores": per_module(scores),
                    "kept": {module_of(k): [bool(x) for x in kept] for k, kept in pattern.items()},
                    "other_signals": {s: per_module(v) for s, v in others.items() if s != self.cfg.signal}})
        moved = ", ".join(f"{m} {a}→{b}" for m, (a, b) in list(changed.items())[:8])
        more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
        self._say(f"[AdaLoRA Update] Step {step}: Total budget={budget}, Active modules={row['n_active_modules']}"
                  f", total rank={total_rank}, revived={revived}" + (f"; rank changed: {moved}{more}" if changed else ""))
        if not row["budget_ok"]:
            self._say(f"[AdaLoRA] WARNING: budget check failed at step {step}: total rank {total_rank} != scheduled "
                      f"budget {budget} (tied scores at the threshold?)", force=True)

    # ------------------------------------------------------------ end
    def on_train_end(self, args, state, control, model=None, **kwargs):
        from peftlab.methods.adalora import rank_per_module

        peft_model = _unwrap(model)
        ranks = rank_per_module(peft_model)
        hf_model = peft_model.base_model.model
        end = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n)
        for name, module in hf_model.named_modules():  # parameters left after PEFT drops masked triplets on save
            if name in ranks:
                end += ranks[name] * (module.in_features + module.out_features + 1)  # A row + B column + E
        row = {"kind": "end", "step": state.global_step, "total_rank": sum(ranks.values()),
               "target_budget": self.cfg.target_r * len(ranks), "ranks": ranks,
               "trainable_params_start": self.trainable_start, "trainable_params_end": end,
               "n_allocations": len(self.allocations), "schedule": {"total_step": self.total, "tinit": self.tinit,
                                                                     "tfinal": self.tfinal}}
        if self.run_dir is not None:
            append_jsonl(self.run_dir / RANK_PATTERN, row)
        if row["total_rank"] != row["target_budget"]:  # loud in runs; tests assert budget_ok
            self._say(f"[AdaLoRA] WARNING: budget check failed at the end of training: total rank "
                      f"{row['total_rank']} != target_r {self.cfg.target_r} × {len(ranks)} matrices = "
                      f"{row['target_budget']} (signal {self.cfg.signal}); final_summary.json says budget_ok=false",
                      force=True)

    def _say(self, text: str, force: bool = False) -> None:
        if self.verbose or force:
            print(text, file=sys.stderr, flush=True)


def write_final_summary(run_dir: Path, final_metrics: dict) -> Path:
    """final_summary.json from rank_pattern.jsonl's end row and the run's final metrics."""
    rows = read_jsonl(run_dir / RANK_PATTERN) if (run_dir / RANK_PATTERN).is_file() else []
    end = next((r for r in reversed(rows) if r.get("kind") == "end"), None)
    if end is None:
        raise PeftlabError(f"{run_dir / RANK_PATTERN} has no end row; the AdaLoRA callback did not finish — "
                           f"re-run with --force")
    summary = {
        "task": final_metrics.get("task"), "signal": None, "seed": final_metrics.get("seed"),
        "dev": final_metrics.get("dev"), "main_metric": final_metrics.get("main_metric"),
        "score": final_metrics.get("score"),
        "total_rank": end["total_rank"], "target_budget": end["target_budget"],
        "budget_ok": end["total_rank"] == end["target_budget"],
        "ranks": end["ranks"], "n_allocations": end["n_allocations"], "schedule": end["schedule"],
        # triplets masked at one allocation and kept again at the next, summed over allocations
        "revived_total": sum(int(r.get("revived") or 0) for r in rows if r.get("kind") == "allocation"),
        "trainable_params_start": end["trainable_params_start"], "trainable_params_end": end["trainable_params_end"],
        "train_s": (final_metrics.get("timing") or {}).get("train_s"),
    }
    from peftlab.io import read_json

    config = run_dir / "run_config.json"
    if config.is_file():
        summary["signal"] = (read_json(config).get("config") or {}).get("signal")
    return atomic_write_json(run_dir / FINAL_SUMMARY, summary)
