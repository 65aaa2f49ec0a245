"""The one training loop: every method trains through `train_run` (HF `Trainer` + callbacks).

    train_run(cfg) -> run_dir
      1. validate the config, find the run dir, check it is writable (before any work)
      2. skip a finished run (unless force); resume from the newest complete checkpoint
      3. load + tokenize data; `set_seed(seed)` then load the model (classifier init = f(seed))
      4. save θ0 to ckpt_init/ (before method.apply), apply the method, freeze what it does not train
      5. Trainer: AdamW over trainable params, warmup + linear decay, weight decay, grad accumulation,
         clipping, autocast on CUDA only, eval each epoch, checkpoints every save_steps + epoch end
      6. final eval, ckpt_final/ (method.save_final), final_metrics.json LAST with "finished": true,
         then delete the (big) Trainer checkpoints

Nothing looks complete before it is: ckpt dirs are written under a temporary name and renamed,
JSON files are written atomically, and only `final_metrics.json` marks a finished run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
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
    is_finished,
    read_run_config,
    run_dir_for,
)

log = logging.getLogger("peftlab.train")

# Settings that do not change what is trained: a resumed run may differ in these.
_RESUME_IGNORED = {"out", "data_dir", "device", "logging_steps", "save_steps", "save_total_limit", "eval_batch_size"}
# Everything train_run writes; `force` deletes a directory only if it holds nothing else.
_RUN_ENTRIES = {RUN_CONFIG, FINAL_METRICS, METRICS_LOG, CKPT_INIT, CKPT_FINAL, CHECKPOINTS}


# ---------------------------------------------------------------- run-dir bookkeeping


def check_writable(run_dir: Path, out: str) -> Path | None:
    """Create `run_dir` and a probe file in it; PeftlabError if that fails.

    Returns the topmost directory this call created (None if `run_dir` existed), so that a run
    failing before it writes anything can remove the empty directories again.
    """
    created = None
    for path in [run_dir, *run_dir.parents]:
        if path.exists():
            break
        created = path
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError:
        raise PeftlabError(f"output directory {out} is not writable; choose a writable --out") from None
    return created


def remove_empty_dirs(run_dir: Path, top: Path | None) -> None:
    """rmdir `run_dir` and its parents up to `top` while they are empty (undo `check_writable`)."""
    if top is None:
        return
    for path in [run_dir, *run_dir.parents]:
        if not path.is_dir() or any(path.iterdir()):
            return
        path.rmdir()
        if path == top:
            return


def clear_run_dir(run_dir: Path) -> None:
    """Delete a run directory for `force`, refusing when it holds files peftlab did not write."""
    if not run_dir.exists():
        return
    foreign = [p.name for p in run_dir.iterdir() if p.name not in _RUN_ENTRIES and not _is_peftlab_extra(p.name)]
    if foreign:
        raise PeftlabError(
            f"'{run_dir}' holds files peftlab did not write ({', '.join(sorted(foreign)[:3])}); "
            f"move them away or choose another --out"
        )
    shutil.rmtree(run_dir)


def _is_peftlab_extra(name: str) -> bool:
    # measurement tables, analysis output, temp files of atomic writes
    return (
        name.endswith((".jsonl", ".json", ".csv"))
        or name in ("analysis",)
        or ".tmp-" in name
        or name.startswith(".write-probe-")
    )


def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """Newest `checkpoint-N` whose trainer_state.json (written last by the Trainer) parses."""
    import json

    if not checkpoints_dir.is_dir():
        return None
    candidates = []
    for path in checkpoints_dir.glob("checkpoint-*"):
        try:
            step = int(path.name.split("-", 1)[1])
            json.loads((path / "trainer_state.json").read_text())
        except (ValueError, OSError):
            continue  # torn by a kill: skip it
        candidates.append((step, path))
    return max(candidates)[1] if candidates else None


def _config_diff(old: dict, new: dict) -> list[str]:
    keys = sorted((set(old) | set(new)) - _RESUME_IGNORED)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _atomic_dir(final: Path, write) -> float:
    """Run `write(tmp_dir)` then rename tmp_dir to `final` (replacing it). Returns seconds taken."""
    from peftlab.models import quiet_transformers

    start = time.perf_counter()
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    with quiet_transformers():  # a "Writing model shards" bar per save is noise
        write(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return time.perf_counter() - start


# ---------------------------------------------------------------- provenance


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "peftlab", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the checkout peftlab is imported from; None when it is not a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def peak_memory(device) -> tuple[float, str]:
    """(MB, kind): CUDA max allocated on GPU, else this process's peak resident set size."""
    import torch

    if getattr(device, "type", "") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes. It is the whole process's peak (model, data, Python), since start.
    mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return mb, "cpu_peak_rss_process"


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


# ---------------------------------------------------------------- the loop


def train_run(cfg: TrainConfig, force: bool = False, callbacks: list | None = None) -> Path:
    """Fine-tune one (task, method, seed[, rank]) and write its run directory; returns the run dir.

    A finished run is skipped (returned as is) unless `force`, which deletes it first. An unfinished
    run with a checkpoint resumes from it. `callbacks`: extra `TrainerCallback`s (tests, tools).
    """
    t_start = time.perf_counter()
    cfg = validate(cfg)
    from peftlab.methods import get_method
    from peftlab.tasks import get_task, load_split

    method = get_method(cfg.method)
    spec = get_task(cfg.task)
    run_dir = run_dir_for(cfg)

    created = check_writable(run_dir, cfg.out)
    if force:
        clear_run_dir(run_dir)
        check_writable(run_dir, cfg.out)
    elif is_finished(run_dir):
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # left over by a kill right at the end
        log.info("run %s is finished; skipping (use --force to re-run)", run_dir)
        return run_dir

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # Trainer info lines would drown the progress bar
    try:
        return _train(cfg, method, spec, run_dir, load_split, callbacks or [], t_start)
    except BaseException:
        remove_empty_dirs(run_dir, created)  # failed before writing anything: leave no empty dirs behind
        raise
    finally:
        hf_logging.set_verbosity(verbosity)


def _train(cfg, method, spec, run_dir: Path, load_split, extra_callbacks, t_start) -> Path:
    import torch
    import transformers
    from transformers import DataCollatorWithPadding, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from peftlab.models import load_model, load_tokenizer, pick_device, pick_dtype, resolve_model
    from peftlab.training.callbacks import (
        MetricsLogCallback,
        SaveAtEpochEndCallback,
        TimingCheckpointCallback,
        read_checkpoint_timing,
    )
    from peftlab.training.data import model_input_keys, tokenize_split
    from peftlab.training.trainer import PeftlabTrainer

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    # ---- resume or fresh start (temp dirs/files of writes a kill interrupted are litter)
    for stale in [p for p in run_dir.iterdir() if ".tmp-" in p.name]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    checkpoint = last_complete_checkpoint(run_dir / CHECKPOINTS)
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if checkpoint is not None and (run_dir / RUN_CONFIG).is_file():
        previous = read_run_config(run_dir)
        created_at = previous.get("created", created_at)
        diff = _config_diff(previous.get("config", {}), cfg.to_dict())
        if diff:
            raise PeftlabError(
                f"'{run_dir}' holds an unfinished run with other settings ({'; '.join(diff[:3])}); "
                f"re-run with --force to start over, or choose another --out"
            )
    elif checkpoint is None:
        # nothing to resume: clear partial leftovers so the new run's files are its own
        for name in (METRICS_LOG, FINAL_METRICS, CKPT_FINAL, CHECKPOINTS):
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    resumed_step = int(checkpoint.name.split("-")[1]) if checkpoint else 0
    before = read_checkpoint_timing(checkpoint)

    # ---- data
    t0 = time.perf_counter()
    train_data = load_split(spec, "train", cfg.data_dir)
    dev_data = load_split(spec, "dev", cfg.data_dir)
    n_train_rows, n_dev_rows = len(train_data), len(dev_data)
    if cfg.max_train_samples:
        train_data = train_data.subset(range(min(cfg.max_train_samples, len(train_data))))
    if cfg.max_eval_samples:
        dev_data = dev_data.subset(range(min(cfg.max_eval_samples, len(dev_data))))
    tokenizer = load_tokenizer(cfg.model)
    data_s = time.perf_counter() - t0

    # ---- model: seed BEFORE loading so the classifier init is a function of the seed
    transformers.set_seed(cfg.seed)
    problem_type = "regression" if spec.is_regression else "single_label_classification"
    model = load_model(cfg.model, spec.num_labels, problem_type=problem_type, pad_token_id=tokenizer.pad_token_id)
    keep_keys = model_input_keys(model)

    t0 = time.perf_counter()
    train_set = tokenize_split(train_data, tokenizer, cfg.max_len, spec.is_regression, keep_keys)
    dev_set = tokenize_split(dev_data, tokenizer, cfg.max_len, spec.is_regression, keep_keys)
    data_s += time.perf_counter() - t0

    def save_init(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    save_s = 0.0
    if checkpoint is None or not (run_dir / CKPT_INIT).is_dir():
        save_s += _atomic_dir(run_dir / CKPT_INIT, save_init)

    # ---- run_config.json (provenance; not a completion marker)
    atomic_write_json(run_dir / RUN_CONFIG, {
        "config": cfg.to_dict(),
        "method": cfg.method,
        "task": spec.name,
        "model_path": resolve_model(cfg.model),
        "model_type": model.config.model_type,
        "num_labels": spec.num_labels,
        "data": {"train": _data_info(train_data, len(train_set)) | {"n_rows": n_train_rows},
                 "dev": _data_info(dev_data, len(dev_set)) | {"n_rows": n_dev_rows}},
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created": created_at,
        "resumed_from_step": resumed_step or None,
    })

    # ---- method: apply, then train exactly what it says
    model = method.apply(model, cfg)
    trainable = method.trainable_parameters(model)
    trainable_ids = {id(p) for _, p in trainable}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable_ids)
    n_trainable = sum(p.numel() for _, p in trainable)
    n_total = sum(p.numel() for p in model.parameters())

    device = pick_device(cfg.device)
    dtype = pick_dtype(device)
    batches_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = cfg.max_steps or math.ceil(steps_per_epoch * cfg.epochs)

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
        optim="adamw_torch",
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
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=dev_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics_fn,
        seed=cfg.seed,
        group_by_length=cfg.group_by_length,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off
    t_train = time.perf_counter()

    def elapsed() -> dict[str, float]:
        """Time so far (this process + the checkpoint it resumed from)."""
        wall = time.perf_counter() - t_train
        return {
            "train_s": before["train_s"] + wall - trainer.ledger["eval_s"] - trainer.ledger["checkpoint_s"],
            "eval_s": before["eval_s"] + trainer.ledger["eval_s"],
            "save_s": before["save_s"] + save_s + trainer.ledger["checkpoint_s"],
        }

    trainer.add_callback(MetricsLogCallback(run_dir / METRICS_LOG))
    trainer.add_callback(SaveAtEpochEndCallback())
    trainer.add_callback(TimingCheckpointCallback(elapsed))
    method_callbacks = getattr(method, "callbacks", None)
    for callback in (method_callbacks(cfg, total_steps) if method_callbacks else []) or []:
        trainer.add_callback(callback)
    for callback in extra_callbacks:
        trainer.add_callback(callback)

    if checkpoint is not None:
        _truncate_log(run_dir / METRICS_LOG, resumed_step)
        log.info("resuming %s from %s", run_dir, checkpoint.name)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    timing = elapsed()

    # ---- final dev scores (reuse the epoch-end eval when it already saw the final weights)
    if trainer.last_eval and trainer.last_eval["step"] == trainer.state.global_step:
        eval_metrics = trainer.last_eval["metrics"]
    else:
        t0 = time.perf_counter()
        eval_metrics = trainer.evaluate()
        timing["eval_s"] += time.perf_counter() - t0
    dev = _strip_eval(eval_metrics)

    # ---- θ1, then the completion marker, then drop the checkpoints
    trained = trainer.accelerator.unwrap_model(trainer.model)
    timing["save_s"] += _atomic_dir(run_dir / CKPT_FINAL, lambda tmp: method.save_final(trained, tmp))
    timing["data_s"] = data_s
    timing["total_s"] = time.perf_counter() - t_start + (sum(before.values()) if checkpoint else 0.0)
    memory_mb, memory_kind = peak_memory(device)
    atomic_write_json(run_dir / FINAL_METRICS, {
        "task": spec.name,
        "method": cfg.method,
        "seed": cfg.seed,
        "rank": cfg.rank if getattr(method, "low_rank", False) else None,
        "dev": dev,
        "main_metric": spec.main_metric,
        "score": dev.get(spec.main_metric),
        "timing": {k: round(timing[k], 3) for k in ("data_s", "train_s", "eval_s", "save_s", "total_s")},
        "peak_memory_mb": round(memory_mb, 1),
        "peak_memory_kind": memory_kind,
        "trainable_params": n_trainable,
        "total_params": n_total,
        "train_samples": len(train_set),
        "eval_samples": len(dev_set),
        "global_step": trainer.state.global_step,
        "train_loss": _mean_logged_loss(run_dir / METRICS_LOG),
        "lr": cfg.lr,
        "device": str(device),
        "autocast_dtype": str(dtype).replace("torch.", "") if device.type == "cuda" else None,
        "resumed_from_step": resumed_step or None,
        "finished": True,
    })
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    return run_dir


def _mean_logged_loss(path: Path) -> float | None:
    """Mean of the logged training losses (each the mean over its `logging_steps` window).

    Read from metrics.jsonl rather than the Trainer's `training_loss`, which covers only the steps
    of the last `train()` call and so would differ between a resumed and an uninterrupted run.
    """
    losses = [row["loss"] for row in read_jsonl(path) if row.get("kind") == "train" and "loss" in row]
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
    return (f"{data.get('task')} {data.get('method')} {data.get('main_metric')}={score_text} "
            f"(train {data.get('timing', {}).get('train_s', float('nan')):.1f}s)")


__all__ = ["train_run", "summary_line", "check_writable", "last_complete_checkpoint", "package_versions", "git_commit"]
