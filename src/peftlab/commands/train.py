"""`peftlab train` (fine-tune one run) and `peftlab info RUN_DIR` (summarise a run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

# CLI option -> config key. Options left unset do not override the preset/config file.
_OPTION_KEYS = {
    "task": "task", "method": "method", "seed": "seed", "rank": "rank", "alpha": "alpha",
    "dropout": "dropout", "targets": "targets", "epochs": "epochs", "lr": "lr", "batch_size": "batch_size",
    "max_len": "max_len", "model": "model", "data_dir": "data_dir", "out": "out",
    "max_train_samples": "max_train_samples", "max_eval_samples": "max_eval_samples",
}

# Files other parts of peftlab write into a run directory, shown by `info`.
MEASUREMENT_FILES = (
    "eval_subset.json", "importance_pre.jsonl", "importance_pre_per_example.npy", "importance_post.jsonl",
    "importance_post_per_example.npy", "gradfisher_pre.jsonl",
    "update.jsonl", "importance_taylor_vs_exact.json", "measure_manifest.json", "analysis/heads.csv",
    "analysis/stats.json",
)


def cli_overrides(options: dict[str, Any], extra: list[str] | None) -> list[str]:
    """`key=value` overrides from the given options (None = not given), then the trailing ones."""
    out = [f"{_OPTION_KEYS[name]}={value}" for name, value in options.items() if value is not None]
    return out + list(extra or [])


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def register(app: typer.Typer) -> None:
    """Attach `train` and `info` to `app`."""

    @app.command("train")
    def train_command(
        overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...",
                                              help="Any config key, e.g. lr=1e-4 warmup_ratio=0.1 (applied last)."),
        task: str = typer.Option(None, "--task", help="Task name (RTE, SST-2, MRPC, STS-B, CoLA, ...)."),
        method: str = typer.Option(None, "--method", help="fft | lora | peft-lora | dora | rslora | pissa | vera | ia3 | "
                                   "adalora | adapter | bitfit | ln-tuning | prompt-tuning (README 'Methods')."),
        seed: int = typer.Option(None, "--seed", help="Seed for the classifier init, data order and dropout."),
        rank: int = typer.Option(None, "--rank", help="LoRA rank r (low-rank methods)."),
        alpha: float = typer.Option(None, "--alpha", help="LoRA alpha (scale = alpha / r)."),
        dropout: float = typer.Option(None, "--dropout", help="Dropout on the LoRA branch, in [0, 1)."),
        targets: str = typer.Option(None, "--targets", help="Comma list of q,k,v,o,ffn_in,ffn_out."),
        epochs: float = typer.Option(None, "--epochs"),
        lr: float = typer.Option(None, "--lr", help="Peak learning rate (default: 5e-5 FFT, 5e-4 otherwise)."),
        batch_size: int = typer.Option(None, "--batch-size"),
        max_len: int = typer.Option(None, "--max-len", help="Truncate inputs to this many tokens."),
        model: str = typer.Option(None, "--model", help="Model dir or Hub id (default: packaged all-MiniLM-L6-v2)."),
        data_dir: str = typer.Option(None, "--data-dir", help="Data directory (default: $PEFTLAB_DATA, else ./data)."),
        out: str = typer.Option(None, "--out", help="Output root (default: outputs)."),
        config: str = typer.Option(None, "--config", help="Preset name(s) from configs/ (quick, full, rte, ...) "
                                   "or a YAML file; comma-separate several."),
        max_train_samples: int = typer.Option(None, "--max-train-samples", help="Use the first N training rows."),
        max_eval_samples: int = typer.Option(None, "--max-eval-samples", help="Use the first N dev rows."),
        force: bool = typer.Option(False, "--force", help="Re-run a finished run: once every input checks out, "
                                   "delete the files peftlab wrote in its run directory (never other files)."),
    ) -> None:
        """Fine-tune one run; writes <out>/<METHOD>/<TASK>/seed<S>[_r<R>]/ (resumes an interrupted run)."""
        from peftlab.config import load_config
        from peftlab.runs import is_finished, run_dir_for
        from peftlab.train import summary_line, train_run

        options = dict(task=task, method=method, seed=seed, rank=rank, alpha=alpha, dropout=dropout,
                       targets=targets, epochs=epochs, lr=lr, batch_size=batch_size, max_len=max_len, model=model,
                       data_dir=data_dir, out=out, max_train_samples=max_train_samples,
                       max_eval_samples=max_eval_samples)
        cfg = load_config(config, cli_overrides(options, overrides))
        skipped = not force and is_finished(run_dir_for(cfg))
        run_dir = train_run(cfg, force=force)
        from peftlab.training.distributed import is_main

        if not is_main():  # torchrun: rank 0 reports, the other ranks stay quiet
            return
        typer.echo(str(run_dir))
        typer.echo(summary_line(run_dir) + (" (already finished: skipped; --force re-runs it)" if skipped else ""))

    @app.command("info")
    def info_command(run_dir: Path = typer.Argument(..., help="A run directory written by `peftlab train`.")) -> None:
        """Summarise a run: config, dev scores, timing, parameters, which measurement files exist."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        from peftlab.runs import CHECKPOINTS, CKPT_FINAL, CKPT_INIT, read_run_info

        info = read_run_info(run_dir)
        console = Console()
        cfg = info.run_config.get("config", {})
        # task, method, seed and rank come from run_config.json, never from the directory's name
        problems = info.weight_problems() if info.finished else []
        if problems:
            status = (f"finished, but its weights are unreadable: {problems[0]}; re-run with: "
                      f"{info.train_command()} --force")
        elif info.finished:
            status = "finished"
        else:
            status = ("interrupted (re-run the same command to resume)" if (info.run_dir / CHECKPOINTS).is_dir()
                      else "unfinished")
        rank = f" / r={info.rank}" if info.rank is not None else ""
        console.print(Text(f"{info.run_dir}  —  {info.task} / {info.method}{rank} / seed {cfg.get('seed')}  [{status}]",
                           style="bold"), soft_wrap=True)  # one line: paths and the status stay greppable

        table = Table(title="config", title_justify="left", show_header=False)
        for key, value in cfg.items():
            table.add_row(key, Text(_fmt(value)))
        table.add_row("model_path", Text(str(info.run_config.get("model_path"))))
        table.add_row("git_commit", Text(str(info.run_config.get("git_commit"))))
        versions = info.run_config.get("versions", {})
        table.add_row("versions", Text(", ".join(f"{k} {v}" for k, v in versions.items())))
        for split, d in (info.run_config.get("data") or {}).items():
            table.add_row(f"data {split}", Text(f"{d.get('n_used')} of {d.get('n_rows')} rows from {d.get('source')}"))
        console.print(table)

        fm = info.final_metrics or {}
        if fm:
            scores = Table(title="dev scores", title_justify="left")
            scores.add_column("metric")
            scores.add_column("value", justify="right")
            for name, value in (fm.get("dev") or {}).items():
                label = f"{name} (main)" if name == fm.get("main_metric") else name
                scores.add_row(label, _fmt(value))
            console.print(scores)
            timing = fm.get("timing") or {}
            trainable, total = fm.get("trainable_params"), fm.get("total_params")
            share = (f" ({100 * trainable / total:.2f}%)" if isinstance(trainable, int) and isinstance(total, int)
                     and total > 0 else "")
            console.print(Text(
                "timing: " + ", ".join(f"{k} {_fmt(v)}" for k, v in timing.items())
                + f"  |  peak memory {fm.get('peak_memory_mb')} MB ({fm.get('peak_memory_kind')})"
                + f"  |  device {fm.get('device')}"
                + f"  |  params trainable {_fmt(trainable)} / total {_fmt(total)}{share}"
                + f"  |  steps {fm.get('global_step')}"
            ))
        files = Table(title="files", title_justify="left", show_header=False)
        for name in (CKPT_INIT, CKPT_FINAL, "metrics.jsonl", *MEASUREMENT_FILES):
            present = (info.run_dir / name).exists()
            files.add_row(name, Text("yes" if present else "—", style="green" if present else "dim"))
        console.print(files)

