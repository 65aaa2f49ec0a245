"""Run-directory layout and reading a finished run back.

    <out>/<method.dir_name>/<TASK>/seed<S>[_r<R>]/      (`_r<R>` for low-rank methods)
        run_config.json      resolved config, versions, git commit, data sources
        ckpt_init/           θ0: the model before `method.apply` (+ tokenizer)
        ckpt_final/          θ1 as the method saves it (`method.save_final`)
        metrics.jsonl        one object per logging step / eval
        checkpoints/         Trainer checkpoints for resume (deleted when the run finishes)
        final_metrics.json   written last; `"finished": true` marks a complete run

A run is finished only when `final_metrics.json` says so; everything else may be partial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import PeftlabError
from peftlab.io import read_json

if TYPE_CHECKING:  # pragma: no cover
    from peftlab.config import TrainConfig

RUN_CONFIG = "run_config.json"
FINAL_METRICS = "final_metrics.json"
METRICS_LOG = "metrics.jsonl"
CKPT_INIT = "ckpt_init"
CKPT_FINAL = "ckpt_final"
CHECKPOINTS = "checkpoints"


def run_name(seed: int, rank: int, low_rank: bool) -> str:
    """`seed<S>` or `seed<S>_r<R>` for low-rank methods."""
    return f"seed{seed}_r{rank}" if low_rank else f"seed{seed}"


def run_dir_for(cfg: "TrainConfig") -> Path:
    """`<out>/<method.dir_name>/<TASK>/seed<S>[_r<R>]` for a config (task name canonicalised)."""
    from peftlab.methods import get_method
    from peftlab.tasks import get_task

    method = get_method(cfg.method)
    task = get_task(cfg.task).name
    return Path(cfg.out) / method.dir_name / task / run_name(cfg.seed, cfg.rank, bool(getattr(method, "low_rank", False)))


def read_final_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """`final_metrics.json` as a dict, or None when it is absent or unreadable (a torn write)."""
    path = Path(run_dir) / FINAL_METRICS
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(run_dir: str | Path) -> bool:
    """True only when `final_metrics.json` exists and says `"finished": true`."""
    data = read_final_metrics(run_dir)
    return bool(data and data.get("finished") is True)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """`run_config.json` of a run directory, or a PeftlabError saying this is not a run directory."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_CONFIG
    if not run_dir.is_dir():
        raise PeftlabError(f"run directory '{run_dir}' does not exist; run `peftlab train ...` first or check the path")
    if not path.is_file():
        raise PeftlabError(
            f"'{run_dir}' is not a peftlab run directory (no {RUN_CONFIG}); pass a directory like "
            f"outputs/LoRA/RTE/seed1_r8 written by `peftlab train`"
        )
    try:
        data = read_json(path)
    except ValueError:
        raise PeftlabError(f"'{path}' is not valid JSON; re-run `peftlab train ... --force` to rewrite the run") from None
    return data


@dataclass
class RunInfo:
    """What a run directory says about itself."""

    run_dir: Path
    run_config: dict[str, Any]  # the whole run_config.json
    final_metrics: dict[str, Any] | None  # None until the run finished

    @property
    def config(self) -> "TrainConfig":
        from peftlab.config import config_from_dict

        return config_from_dict(self.run_config["config"])

    @property
    def finished(self) -> bool:
        return bool(self.final_metrics and self.final_metrics.get("finished") is True)

    @property
    def method(self) -> str:
        return self.run_config["method"]

    @property
    def task(self) -> str:
        return self.run_config["task"]

    def train_command(self) -> str:
        """The CLI command that (re)creates this run — used in 'run this first' messages."""
        cfg = self.run_config["config"]
        parts = [f"peftlab train --task {cfg['task']} --method {cfg['method']} --seed {cfg['seed']}"]
        if "_r" in self.run_dir.name:
            parts.append(f"--rank {cfg['rank']} --alpha {cfg['alpha']:g}")
        parts.append(f"--out {cfg['out']}")
        return " ".join(parts)


def read_run_info(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    return RunInfo(run_dir=run_dir, run_config=read_run_config(run_dir), final_metrics=read_final_metrics(run_dir))


def load_run_model(run_dir: str | Path, which: str = "final"):
    """`(model, tokenizer, info)` of a run: θ0 (`which="init"`) or θ1 (`"final"`), eval mode, fp32, CPU.

    θ0 is rebuilt from `ckpt_init/` (pretrained body + the seeded classifier init). θ1 is θ0 with
    the method's saved result loaded on top (`method.load_final`), so a LoRA run gives back the
    wrapped model whose `delta_weights` are exactly the trained low-rank updates.
    `info` is the run_config.json dict.
    """
    from peftlab.methods import get_method
    from peftlab.models import load_model, load_tokenizer

    if which not in ("init", "final"):
        raise PeftlabError(f"which must be 'init' or 'final', got {which!r}")
    info = read_run_info(run_dir)
    run_dir = info.run_dir
    if not info.finished:
        raise PeftlabError(
            f"run '{run_dir}' has not finished (no finished {FINAL_METRICS}); finish it with: {info.train_command()}"
        )
    init_dir = run_dir / CKPT_INIT
    if not init_dir.is_dir():
        raise PeftlabError(f"run '{run_dir}' has no {CKPT_INIT}/; re-run it with: {info.train_command()} --force")
    from peftlab.tasks import get_task

    num_labels = get_task(info.task).num_labels
    model = load_model(str(init_dir), num_labels)
    tokenizer = load_tokenizer(str(init_dir))
    if which == "final":
        final_dir = run_dir / CKPT_FINAL
        if not final_dir.is_dir():
            raise PeftlabError(f"run '{run_dir}' has no {CKPT_FINAL}/; re-run it with: {info.train_command()} --force")
        model = get_method(info.method).load_final(model, final_dir)
    model = model.float().eval()
    return model, tokenizer, info.run_config


__all__ = [
    "RUN_CONFIG", "FINAL_METRICS", "METRICS_LOG", "CKPT_INIT", "CKPT_FINAL", "CHECKPOINTS",
    "run_name", "run_dir_for", "is_finished", "read_run_config", "read_final_metrics",
    "RunInfo", "read_run_info", "load_run_model",
]
