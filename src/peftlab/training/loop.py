"""The one training loop: every method trains through `train_run` (HF `Trainer` + callbacks).

    train_run(cfg) -> run_dir, in named stages, each a function of a shared `Run` state:
      preflight  validate every input before anything is written or deleted: config values (finite,
                 in range), the device really exists, the run dir is writable, the data splits exist
                 and are not empty, the model and tokenizer load. Only then may `--force` delete.
      resume     skip a finished run; clear temp litter; pick the newest *complete* checkpoint (a
                 corrupt newer one is reported and skipped); refuse to resume other settings
      theta0     `set_seed(seed)`, load the model (classifier init = f(seed)), save θ0 to ckpt_init/,
                 write run_config.json, apply the method, freeze what it does not train
      data       tokenize the splits (loaded and checked in preflight) with the model's input names
      trainer    HF Trainer: AdamW, warmup + decay, weight decay, grad accumulation, clipping, autocast on
                 CUDA only, eval each epoch, checkpoints every save_steps + epoch end; stops with one
                 line on a non-finite loss/gradient norm (`DivergenceCallback`)
      finalize   final eval, ckpt_final/ (method.save_final), final_metrics.json LAST with
                 "finished": true, then delete the (big) Trainer checkpoints

Nothing looks complete before it is: ckpt dirs are written under a temporary name and renamed,
JSON files are written atomically, and only `final_metrics.json` marks a finished run.

Under `torchrun --nproc_per_node N` (HF Trainer DDP) every rank runs every stage, but only rank 0
writes or deletes files; the other ranks wait for it where it changes the run directory
(`training/distributed.py`). The Trainer itself also writes one `rng_state_<rank>.pth` per rank into
each checkpoint, which resuming needs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftlab.config import TrainConfig, validate
from peftlab.errors import PeftlabError
from peftlab.io import atomic_write_json, read_jsonl, write_jsonl_atomic
from peftlab.runs import (
    CHECKPOINTS,
    CKPT_FINAL,
    CKPT_INIT,
    FINAL_METRICS,
    METRICS_LOG,
    RUN_CONFIG,
    clear_run_dir,
    foreign_entries,
    is_finished,
    read_run_config,
    run_dir_for,
)
from peftlab.training import distributed
from peftlab.training.provenance import git_commit, package_versions, peak_memory
from peftlab.training.rundir import (
    atomic_dir,
    check_writable,
    last_complete_checkpoint,
    remove_empty_dirs,
    remove_litter,
)

log = logging.getLogger("peftlab.train")

# Settings that do not change what is trained: a resumed run may differ in these.
_RESUME_IGNORED = {"out", "data_dir", "device", "logging_steps", "save_steps", "save_total_limit", "eval_batch_size"}


@dataclasses.dataclass
class Run:
    """State handed from stage to stage of one `train_run` call."""

    cfg: TrainConfig
    method: Any
    spec: Any  # TaskSpec
    run_dir: Path
    device: Any  # torch.device
    t_start: float
    callbacks: list
    # preflight
    train_data: Any = None
    dev_data: Any = None
    n_train_rows: int = 0
    n_dev_rows: int = 0
    tokenizer: Any = None
    data_s: float = 0.0
    # resume
    checkpoint: Path | None = None
    resumed_step: int = 0
    created_at: str = ""
    before: dict = dataclasses.field(default_factory=dict)  # time recorded in the resumed checkpoint
    resume_note: str | None = None
    # theta0
    model: Any = None
    keep_keys: set | None = None
    # data
    train_set: Any = None
    dev_set: Any = None
    save_s: float = 0.0
    n_trainable: int = 0
    n_total: int = 0
    n_classifier: int = 0  # trainable classifier parameters (part of n_trainable)
    # trainer
    trainer: Any = None
    timing: dict = dataclasses.field(default_factory=dict)
    step_timing: Any = None  # training/timing.py StepTimingCallback


# ---------------------------------------------------------------- entry point


def train_run(cfg: TrainConfig, force: bool = False, callbacks: list | None = None) -> Path:
    """Fine-tune one (task, method, seed[, rank]) and write its run directory; returns the run dir.

    A finished run is skipped (returned as is) unless `force`, which deletes what peftlab wrote there —
    only after every input was checked, and never a file peftlab did not write. An unfinished run with a
    checkpoint resumes from it. `callbacks`: extra `TrainerCallback`s (tests, tools).
    """
    t_start = time.perf_counter()
    cfg = validate(cfg)  # every value finite and in range, names canonical — before any file is touched
    from peftlab.methods import get_method
    from peftlab.models import pick_device
    from peftlab.tasks import get_task

    run = Run(cfg=cfg, method=get_method(cfg.method), spec=get_task(cfg.task), run_dir=run_dir_for(cfg),
              device=pick_device(cfg.device), t_start=t_start, callbacks=list(callbacks or []))
    main = distributed.is_main()  # torchrun: rank 0 writes, the other ranks only read (see module docstring)
    if force and foreign_entries(run.run_dir):
        clear_run_dir(run.run_dir)  # raises, deleting nothing: the dir holds a user's file
    if not force and is_finished(run.run_dir):
        diff = finished_run_diff(run.run_dir, cfg, run.method)
        if diff:  # e.g. a run written before option suffixes existed (runs.run_dir_for), or another lr
            raise PeftlabError(f"'{run.run_dir}' holds a finished run with other settings ({'; '.join(diff[:3])}); "
                               f"re-run with --force to replace it, or choose another --out to keep both")
        shutil.rmtree(run.run_dir / CHECKPOINTS, ignore_errors=True)  # left over by a kill right at the end
        log.info("run %s is finished; skipping (use --force to re-run)", run.run_dir)
        return run.run_dir

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # Trainer info lines would drown the progress bar
    created = check_writable(run.run_dir, cfg.out)  # fails fast; empty dirs it made are removed on failure
    try:
        preflight(run)
        if main:
            if force:
                clear_run_dir(run.run_dir)  # inputs are known good now; deletes only peftlab's files
            resume(run)
        distributed.barrier(run.device)  # other ranks pick their checkpoint only after rank 0 cleaned up
        if not main:
            resume(run, writes=False)
        theta0(run)
        data(run)
        train(run)
        finalize(run)
        distributed.barrier(run.device)  # no rank returns (and reads final_metrics.json) before rank 0 wrote it
        return run.run_dir
    except BaseException:
        remove_empty_dirs(run.run_dir, created)  # failed before writing anything: leave no empty dirs behind
        raise
    finally:
        hf_logging.set_verbosity(verbosity)


# ---------------------------------------------------------------- stages


def preflight(run: Run) -> None:
    """Load and check every input (data splits, tokenizer, model config); writes nothing."""
    from transformers import AutoConfig

    from peftlab.models import load_tokenizer, resolve_model
    from peftlab.tasks import load_split

    cfg, spec = run.cfg, run.spec
    t0 = time.perf_counter()
    run.train_data = load_split(spec, "train", cfg.data_dir)
    run.dev_data = load_split(spec, "dev", cfg.data_dir)
    for split, data in (("train", run.train_data), ("dev", run.dev_data)):
        if len(data) == 0:  # header-only or empty file: the Trainer would fail deep inside with an IndexError
            raise PeftlabError(f"the {split} split of {spec.name} ({data.source}) has no rows; "
                               f"check the file (it may hold only a header) or pass another --data-dir")
    run.n_train_rows, run.n_dev_rows = len(run.train_data), len(run.dev_data)
    if cfg.max_train_samples:
        run.train_data = run.train_data.subset(range(min(cfg.max_train_samples, len(run.train_data))))
    if cfg.max_eval_samples:
        run.dev_data = run.dev_data.subset(range(min(cfg.max_eval_samples, len(run.dev_data))))
    run.method.preflight(cfg, optimizer_steps(cfg, len(run.train_data)))  # e.g. AdaLoRA's schedule fits
    run.tokenizer = load_tokenizer(cfg.model)
    path = resolve_model(cfg.model)
    try:
        AutoConfig.from_pretrained(path)  # cheap: a model that cannot load fails here, before --force deletes
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeftlabError(f"'{path}' is not a loadable Hugging Face model ({first}); pass --model a model "
                           f"directory or Hub id") from None
    run.data_s = time.perf_counter() - t0


def resume(run: Run, writes: bool = True) -> None:
    """Resume from the newest complete checkpoint, or clear partial leftovers for a fresh start.

    `writes=False` (torchrun ranks > 0): choose the same checkpoint, delete nothing."""
    from peftlab.training.callbacks import read_checkpoint_timing

    run_dir = run.run_dir
    if writes:
        remove_litter(run_dir)  # temp dirs/files of writes a kill interrupted
    checkpoints = sorted((run_dir / CHECKPOINTS).glob("checkpoint-*")) if (run_dir / CHECKPOINTS).is_dir() else []
    checkpoint = last_complete_checkpoint(run_dir / CHECKPOINTS)
    newest = max(checkpoints, key=lambda p: _step_of(p), default=None)
    if newest is not None and checkpoint != newest:
        run.resume_note = (f"{newest.name} was incomplete or corrupt; resumed from "
                           f"{checkpoint.name if checkpoint else 'the start'} instead")
        if writes:
            print(f"note: {run.resume_note}", file=sys.stderr)
    run.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if checkpoint is not None and (run_dir / RUN_CONFIG).is_file():
        previous = read_run_config(run_dir)
        run.created_at = previous.get("created", run.created_at)
        diff = _config_diff(previous.get("config", {}), run.cfg.to_dict())
        if previous.get("world_size", 1) != distributed.world_size():  # DDP splits each batch: another data order
            diff.append(f"world_size: {previous.get('world_size', 1)} -> {distributed.world_size()} processes")
        if diff:
            raise PeftlabError(
                f"'{run_dir}' holds an unfinished run with other settings ({'; '.join(diff[:3])}); "
                f"re-run with --force to start over, or choose another --out"
            )
    else:
        checkpoint = None  # a checkpoint without its run_config.json cannot be trusted
        # nothing to resume: clear partial leftovers so the new run's files are its own
        for name in (METRICS_LOG, FINAL_METRICS, CKPT_FINAL, CHECKPOINTS) if writes else ():
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if checkpoint is not None and not getattr(run.method, "resumable", True):
        raise PeftlabError(
            f"'{run_dir}' holds an unfinished {run.cfg.method} run ({checkpoint.name}), but {run.cfg.method} cannot "
            f"resume exactly (its state outside the weights is not in Trainer checkpoints); re-run with --force to "
            f"start over"
        )
    run.checkpoint = checkpoint
    run.resumed_step = _step_of(checkpoint) if checkpoint else 0
    run.before = read_checkpoint_timing(checkpoint)


def theta0(run: Run) -> None:
    """Load θ0 with the seeded classifier, save it (before `method.apply`) and the run's provenance, then
    apply the method and freeze what it does not train."""
    import transformers

    from peftlab.models import load_model, resolve_model
    from peftlab.training.data import model_input_keys

    cfg, spec, run_dir, tokenizer = run.cfg, run.spec, run.run_dir, run.tokenizer
    transformers.set_seed(cfg.seed)  # BEFORE loading, so the classifier init is a function of the seed
    problem_type = "regression" if spec.is_regression else "single_label_classification"
    model = load_model(cfg.model, spec.num_labels, problem_type=problem_type, pad_token_id=tokenizer.pad_token_id,
                       pooling=cfg.pooling)
    run.keep_keys = model_input_keys(model)  # of the HF model, before a PEFT wrapper hides its signature
    regression_bias = None
    if spec.is_regression:  # before ckpt_init is saved: θ0, the probe and every pre measurement see this head
        from peftlab.training.head_init import init_regression_bias

        regression_bias = init_regression_bias(model, run.train_data.labels, cfg.regression_bias)

    def save_init(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    main = distributed.is_main()
    if main and (run.checkpoint is None or not (run_dir / CKPT_INIT).is_dir()):
        run.save_s += atomic_dir(run_dir / CKPT_INIT, save_init)

    # After saving ckpt_init (a plain HF checkpoint either way): swap the base model's dropouts only, so a
    # method's own (e.g. PEFT's lora_dropout) stay as they are.
    fast_dropout = None
    if cfg.fast_dropout:
        from peftlab.fast_dropout import use_fast_dropout

        fast_dropout = use_fast_dropout(model)

    # run_config.json (provenance; not a completion marker). Tokenizing keeps every row, so n_used = rows.
    world = distributed.world_size()
    provenance = {
        "config": cfg.to_dict(),
        "method": cfg.method,
        "task": spec.name,
        "model_path": resolve_model(cfg.model),
        "model_type": model.config.model_type,
        "num_labels": spec.num_labels,
        "data": {"train": _data_info(run.train_data, len(run.train_data)) | {"n_rows": run.n_train_rows},
                 "dev": _data_info(run.dev_data, len(run.dev_data)) | {"n_rows": run.n_dev_rows}},
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created": run.created_at,
        "resumed_from_step": run.resumed_step or None,
        "resume_note": run.resume_note,
        # one optimizer step sees batch_size rows on each of world_size processes, grad_accum times
        "world_size": world,
        "effective_batch_size": cfg.batch_size * cfg.grad_accum * world,
        # {"dropouts": n nn.Dropout swapped for FastDropout, "attention": implementation} or None (plain HF masks)
        "fast_dropout": fast_dropout,
        # regression only: {"rule", "module", "value"} of the output bias at θ0 (training/head_init.py)
        "regression_bias": regression_bias,
    }
    if main:
        atomic_write_json(run_dir / RUN_CONFIG, provenance)

    model = run.method.apply(model, cfg)
    trainable = run.method.trainable_parameters(model)
    trainable_ids = {id(p) for _, p in trainable}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable_ids)
    run.n_trainable = sum(p.numel() for _, p in trainable)
    run.n_total = sum(p.numel() for p in model.parameters())
    from peftlab.methods.base import trainable_counts

    run.n_classifier = trainable_counts(run.method, model)["classifier"]
    run.model = model


def data(run: Run) -> None:
    """Tokenize the (already loaded and checked) splits, keeping only the inputs the model accepts."""
    from peftlab.training.data import tokenize_split

    cfg, spec = run.cfg, run.spec
    t0 = time.perf_counter()
    run.train_set = tokenize_split(run.train_data, run.tokenizer, cfg.max_len, spec.is_regression, run.keep_keys)
    run.dev_set = tokenize_split(run.dev_data, run.tokenizer, cfg.max_len, spec.is_regression, run.keep_keys)
    run.data_s += time.perf_counter() - t0


def train(run: Run) -> None:
    """Build the Trainer with every callback and train (resuming from `run.checkpoint`)."""
    import torch
    from transformers import DataCollatorWithPadding, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from peftlab.models import pick_dtype
    from peftlab.training.callbacks import (
        DivergenceCallback,
        MetricsLogCallback,
        SaveAtEpochEndCallback,
        TimingCheckpointCallback,
    )
    from peftlab.training.trainer import PeftlabTrainer

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    cfg, spec, run_dir, device = run.cfg, run.spec, run.run_dir, run.device
    dtype = pick_dtype(device)
    total_steps = optimizer_steps(cfg, len(run.train_set))

    args = TrainingArguments(
        output_dir=str(run_dir / CHECKPOINTS),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps in transformers 5.x
        weight_decay=cfg.weight_decay,  # AdamW; biases and LayerNorm weights are excluded by the Trainer
        # Fused AdamW, the HF Trainer's own default: one kernel over all parameters instead of a Python loop
        # per tensor (benchmarks/adamw_step.py: 0.14 s vs 0.79 s per FFT step of MiniLM-L6 on 2 CPU threads).
        optim="adamw_torch_fused",
        gradient_accumulation_steps=cfg.grad_accum,
        max_grad_norm=cfg.max_grad_norm,
        bf16=device.type == "cuda" and dtype == torch.bfloat16,  # autocast on CUDA only; fp32 master weights
        fp16=device.type == "cuda" and dtype == torch.float16,
        use_cpu=device.type == "cpu",
        eval_strategy="epoch" if cfg.eval_each_epoch else "no",
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,  # optimizer, scheduler and RNG states are needed to resume exactly
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
        label_names=["labels"],  # PEFT-wrapped models hide `labels` from signature inspection
        remove_unused_columns=False,  # tokenize_split already keeps only the model's inputs
    )

    def metrics_fn(eval_pred) -> dict[str, float]:
        from peftlab.tasks import metrics_from_logits

        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return metrics_from_logits(spec, logits, eval_pred.label_ids)

    trainer = PeftlabTrainer(
        model=run.model,
        args=args,
        train_dataset=run.train_set,
        eval_dataset=run.dev_set,
        processing_class=run.tokenizer,
        data_collator=DataCollatorWithPadding(run.tokenizer),
        compute_metrics=metrics_fn,
        seed=cfg.seed,
        group_by_length=cfg.group_by_length,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off
    t_train = time.perf_counter()
    before = run.before

    def elapsed() -> dict[str, float]:
        """Time so far (this process + the checkpoint it resumed from)."""
        wall = time.perf_counter() - t_train
        return {
            "train_s": before["train_s"] + wall - trainer.ledger["eval_s"] - trainer.ledger["checkpoint_s"],
            "eval_s": before["eval_s"] + trainer.ledger["eval_s"],
            "save_s": before["save_s"] + run.save_s + trainer.ledger["checkpoint_s"],
        }

    divergence = DivergenceCallback(cfg.lr, cfg.max_grad_norm)
    trainer.divergence_monitor = divergence
    trainer.add_callback(divergence)
    trainer.add_callback(MetricsLogCallback(run_dir / METRICS_LOG))
    trainer.add_callback(SaveAtEpochEndCallback())
    trainer.add_callback(TimingCheckpointCallback(elapsed))
    method_callbacks = getattr(run.method, "callbacks", None)
    for callback in (method_callbacks(cfg, total_steps) if method_callbacks else []) or []:
        trainer.add_callback(callback)
    for callback in run.callbacks:
        trainer.add_callback(callback)
    from peftlab.training.timing import StepTimingCallback

    run.step_timing = StepTimingCallback(run.model)  # forward / backward / optimizer split of train_s
    trainer.add_callback(run.step_timing)

    if run.checkpoint is not None:
        _truncate_log(run_dir / METRICS_LOG, run.resumed_step)
        log.info("resuming %s from %s", run_dir, run.checkpoint.name)
    try:
        trainer.train(resume_from_checkpoint=str(run.checkpoint) if run.checkpoint else None)
    finally:
        run.step_timing.remove_hooks()
    run.trainer = trainer
    run.timing = elapsed()


def finalize(run: Run) -> Path:
    """Final dev scores, θ1 to ckpt_final/, then the completion marker, then drop the checkpoints."""
    from peftlab.models import pick_dtype

    cfg, spec, run_dir, trainer = run.cfg, run.spec, run.run_dir, run.trainer
    timing = run.timing
    # reuse the epoch-end eval when it already saw the final weights
    if trainer.last_eval and trainer.last_eval["step"] == trainer.state.global_step:
        eval_metrics = trainer.last_eval["metrics"]
    else:
        t0 = time.perf_counter()
        eval_metrics = trainer.evaluate()
        timing["eval_s"] += time.perf_counter() - t0
    dev = _strip_eval(eval_metrics)

    if not distributed.is_main():  # torchrun: the evaluation above is collective; writing is rank 0's job
        return run_dir
    trained = trainer.accelerator.unwrap_model(trainer.model)
    timing["save_s"] += atomic_dir(run_dir / CKPT_FINAL, lambda tmp: run.method.save_final(trained, tmp))
    timing["data_s"] = run.data_s
    timing["total_s"] = time.perf_counter() - run.t_start + (sum(run.before.values()) if run.checkpoint else 0.0)
    # record where the weights really were, not what was asked for
    ran_on = next(trained.parameters()).device
    memory_mb, memory_kind = peak_memory(ran_on)
    dtype = pick_dtype(ran_on)
    score = dev.get(spec.main_metric)
    final_metrics = {
        "task": spec.name,
        "method": cfg.method,
        "seed": cfg.seed,
        "rank": cfg.rank if getattr(run.method, "low_rank", False) else None,
        "dev": dev,
        "main_metric": spec.main_metric,
        "score": score,
        "score_note": None if score is None or math.isfinite(score) else "the dev metric was not finite (written as null)",
        "timing": {k: round(timing[k], 3) for k in ("data_s", "train_s", "eval_s", "save_s", "total_s")},
        "timing_breakdown": run.step_timing.summary() if run.step_timing else None,
        "peak_memory_mb": round(memory_mb, 1),
        "peak_memory_kind": memory_kind,
        "trainable_params": run.n_trainable,
        "trainable_params_without_classifier": run.n_trainable - run.n_classifier,
        "total_params": run.n_total,
        "train_samples": len(run.train_set),
        "eval_samples": len(run.dev_set),
        "global_step": trainer.state.global_step,
        "train_loss": _mean_logged_loss(run_dir / METRICS_LOG),
        "lr": cfg.lr,
        "device": str(ran_on),
        "device_requested": cfg.device,
        "autocast_dtype": str(dtype).replace("torch.", "") if ran_on.type == "cuda" else None,
        "resumed_from_step": run.resumed_step or None,
        "finished": True,
    }
    run.method.finish(run_dir, final_metrics)  # method result files, complete before the completion marker
    atomic_write_json(run_dir / FINAL_METRICS, final_metrics)
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    return run_dir


# ---------------------------------------------------------------- helpers


def optimizer_steps(cfg: TrainConfig, n_train: int) -> int:
    """Optimizer steps of a run: `max_steps`, else ceil(ceil(n_train / (batch_size · world_size)) / grad_accum · epochs).

    Each of the world_size processes takes its own batch_size rows per micro-step (DDP).
    """
    batches_per_epoch = math.ceil(n_train / (cfg.batch_size * distributed.world_size()))
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    return cfg.max_steps or math.ceil(steps_per_epoch * cfg.epochs)


def _step_of(checkpoint: Path) -> int:
    try:
        return int(checkpoint.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


# Config keys that change what any method trains (the method's own keys are added in `finished_run_diff`).
_TRAINING_KEYS = ("task", "method", "seed", "epochs", "lr", "batch_size", "max_len", "weight_decay", "warmup_ratio",
                  "grad_accum", "max_grad_norm", "lr_scheduler", "max_steps", "model", "max_train_samples",
                  "max_eval_samples", "group_by_length", "pooling", "regression_bias")
# Keys added after runs were written: a run_config without one had the value given here.
_KEY_DEFAULTS_OF_OLD_RUNS = {"pooling": "cls", "regression_bias": "zero"}


_ADALORA_KEYS = {"alpha", "dropout", "targets", "init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2",
                 "orth_reg_weight", "signal", "ema_decay", "combo_lambda"}


def finished_run_diff(run_dir: Path, cfg: TrainConfig, method) -> list[str]:
    """Settings that change the numbers and differ between `cfg` and the finished run in `run_dir`.

    Compared: `_TRAINING_KEYS`, the method's `option_keys` and `dir_keys`, `rank` for low-rank methods, and
    for AdaLoRA its LoRA and schedule keys (`_ADALORA_KEYS`). Keys a method ignores (e.g. `rank` for FFT)
    are not compared, so a sweep point that differs only in them still reuses the run.
    """
    try:
        old = read_run_config(run_dir).get("config", {})
    except PeftlabError:
        return []  # unreadable config of a finished run: the skip is reported elsewhere (`peftlab info`)
    new = cfg.to_dict()
    keys = set(_TRAINING_KEYS) | set(getattr(method, "option_keys", ())) | set(getattr(method, "dir_keys", ()))
    if getattr(method, "low_rank", False):
        keys.add("rank")
    if method.name == "adalora":
        keys |= _ADALORA_KEYS

    def pick(config: dict) -> dict:
        out = {k: config.get(k, _KEY_DEFAULTS_OF_OLD_RUNS.get(k)) for k in keys}
        if isinstance(out.get("targets"), list):  # a set of matrices: typing order does not change the run
            out["targets"] = sorted(out["targets"])
        return out

    return _config_diff(pick(old), pick(new))


def _keys_without_effect(config: dict) -> set[str]:
    """Keys that cannot change this run's numbers: `regression_bias` on a classification task."""
    from peftlab.tasks import get_task

    try:
        regression = get_task(str(config.get("task"))).is_regression
    except PeftlabError:  # an unknown or custom task name: compare everything
        return set()
    return set() if regression else {"regression_bias"}


def _config_diff(old: dict, new: dict) -> list[str]:
    old = {**_KEY_DEFAULTS_OF_OLD_RUNS, **old}
    new = {**_KEY_DEFAULTS_OF_OLD_RUNS, **new}
    ignored = _RESUME_IGNORED | (_keys_without_effect(old) & _keys_without_effect(new))
    keys = sorted((set(old) | set(new)) - ignored)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _data_info(data, n_used: int) -> dict[str, Any]:
    return {"source": data.source, "split": data.split, "n_rows": len(data), "n_used": n_used,
            "split_info": dict(getattr(data, "split_info", {}) or {})}


def _strip_eval(metrics: dict[str, Any]) -> dict[str, float]:
    """Trainer eval metrics without the `eval_` prefix and without runtime bookkeeping."""
    skip = {"runtime", "samples_per_second", "steps_per_second", "epoch"}
    out = {}
    for key, value in metrics.items():
        name = key[5:] if key.startswith("eval_") else key
        if name not in skip:
            out[name] = float(value)
    return out


def _mean_logged_loss(path: Path) -> float | None:
    """Mean of the logged training losses (each the mean over its `logging_steps` window).

    Read from metrics.jsonl rather than the Trainer's `training_loss`, which covers only the steps
    of the last `train()` call and so would differ between a resumed and an uninterrupted run.
    """
    losses = [row["loss"] for row in read_jsonl(path)
              if row.get("kind") == "train" and isinstance(row.get("loss"), (int, float))]
    return sum(losses) / len(losses) if losses else None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (the resumed run logs them again)."""
    if path.is_file():
        write_jsonl_atomic(path, [row for row in read_jsonl(path) if row.get("step", 0) <= step])


def summary_line(run_dir: Path) -> str:
    """`RTE lora acc=0.6245 (train 81.2s)` from a finished run's final_metrics.json."""
    from peftlab.runs import read_final_metrics

    data = read_final_metrics(run_dir) or {}
    score = data.get("score")
    score_text = f"{score:.4f}" if isinstance(score, (int, float)) else "n/a"
    train_s = (data.get("timing") or {}).get("train_s")
    train_text = f"{train_s:.1f}s" if isinstance(train_s, (int, float)) else "n/a"
    return f"{data.get('task')} {data.get('method')} {data.get('main_metric')}={score_text} (train {train_text})"


__all__ = ["train_run", "summary_line", "Run", "preflight", "resume", "theta0", "data", "train", "finalize"]
