"""Run-directory layout and reading a finished run back.

    <out>/<method.dir_name>/<TASK>/[<dir_keys values>/]seed<S>[_r<R>]/   (`_r<R>` for low-rank methods;
                                                                          AdaLoRA: ADALORA/<TASK>/<signal>/seed<S>)
        run_config.json      resolved config, versions, git commit, data sources
        ckpt_init/           θ0: the model before `method.apply` (+ tokenizer)
        ckpt_final/          θ1 as the method saves it (`method.save_final`)
        metrics.jsonl        one object per logging step / eval
        checkpoints/         Trainer checkpoints for resume (deleted when the run finishes)
        final_metrics.json   written last; `"finished": true` marks a complete run

A run is finished only when `final_metrics.json` says so; everything else may be partial.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import struct
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

# Names (fnmatch patterns) of everything peftlab writes into a run directory: training, measurement,
# analysis, and the temp names of its atomic writes. `--force` deletes only these, and refuses to touch
# a run directory that holds anything else (a user's own file).
PEFTLAB_RUN_FILES = (
    RUN_CONFIG, FINAL_METRICS, METRICS_LOG, CKPT_INIT, CKPT_FINAL, CHECKPOINTS, "analysis",
    "eval_subset.json", "measure_manifest.json", "importance_pre.jsonl", "importance_post.jsonl",
    "importance_*.partial.jsonl", "importance_*_per_example.npy", "importance_taylor_vs_exact.json",
    "gradfisher_pre.jsonl", "gradfisher_pre.partial.jsonl", "update.jsonl", "update_meta.json",
    "probe.json", "probe_*.safetensors", "*.partial.jsonl", "*.tmp-*", ".write-probe-*",
    "rank_pattern.jsonl", "signal_scores.jsonl", "final_summary.json",  # AdaLoRA
)


def run_name(seed: int, rank: int, low_rank: bool) -> str:
    """`seed<S>` or `seed<S>_r<R>` for low-rank methods."""
    return f"seed{seed}_r{rank}" if low_rank else f"seed{seed}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _option_text(key: str, value: Any) -> str:
    """`targets` → `q-v` (canonical order: the set, not the typing order, decides the run); 32.0 → `32`."""
    if key == "targets":
        from peftlab.arch import CANONICAL_TARGETS

        value = "-".join(t for t in CANONICAL_TARGETS if t in value)
    elif isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, float):
        value = format(value, "g")
    return _UNSAFE.sub("-", str(value))


def option_suffix(cfg: "TrainConfig", method) -> str:
    """`__<key>-<value>` for each of the method's `option_keys` whose value differs from TrainConfig's default
    ("" when all are default), e.g. `__targets-q-v`, `__adapter_bottleneck-16__adapter_ln-true`."""
    from peftlab.config import TrainConfig

    default = TrainConfig()
    parts = []
    for key in getattr(method, "option_keys", ()):
        value, base = getattr(cfg, key), getattr(default, key)
        if key == "targets":
            same = set(value) == set(base)
        elif isinstance(base, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            same = float(value) == base
        else:
            same = value == base
        if not same:
            parts.append(f"__{key}-{_option_text(key, value)}")
    return "".join(parts)


def run_dir_for(cfg: "TrainConfig") -> Path:
    """`<out>/<method.dir_name>/<TASK>/seed<S>[_r<R>][__<option>-<value>...]` for a config (task canonicalised).

    The option part names every method option (`Method.option_keys`: targets, alpha, dropout, adapter
    bottleneck/act/LN, prompt tokens) set to a non-default value, so that two runs differing only in them
    never share a directory; with default options the name is the plain `seed<S>[_r<R>]`.
    """
    from peftlab.methods import get_method
    from peftlab.tasks import get_task

    method = get_method(cfg.method)
    task = get_task(cfg.task).name
    levels = [str(getattr(cfg, key)) for key in getattr(method, "dir_keys", ())]  # e.g. AdaLoRA's signal
    name = run_name(cfg.seed, cfg.rank, bool(getattr(method, "low_rank", False))) + option_suffix(cfg, method)
    return Path(cfg.out, method.dir_name, task, *levels, name)


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
    except (ValueError, UnicodeDecodeError):
        raise PeftlabError(f"'{path}' is not valid JSON (truncated or garbled); re-run `peftlab train ... --force` "
                           f"to rewrite the run") from None
    except OSError as err:
        raise PeftlabError(f"cannot read '{path}' ({err.strerror}); check its permissions") from None
    if not (isinstance(data, dict) and isinstance(data.get("config"), dict)
            and isinstance(data.get("method"), str) and isinstance(data.get("task"), str)):
        raise PeftlabError(f"'{path}' is not a peftlab run config (no config/method/task); it looks foreign or "
                           f"edited: re-run `peftlab train ... --force` to rewrite the run")
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

    @property
    def low_rank(self) -> bool:
        """Whether the run's method (read from run_config.json, never from the directory name) has a rank."""
        from peftlab.methods import METHODS

        method = METHODS.get(self.method)
        return bool(getattr(method, "low_rank", False))

    @property
    def rank(self) -> int | None:
        """The LoRA rank from run_config.json (None for methods without one)."""
        return self.run_config["config"].get("rank") if self.low_rank else None

    def weight_problems(self) -> list[str]:
        """Unreadable/truncated files of ckpt_init/ and ckpt_final/ (header checks only; [] when fine)."""
        return checkpoint_problems(self.run_dir / CKPT_INIT) + checkpoint_problems(self.run_dir / CKPT_FINAL)

    def train_command(self) -> str:
        """The CLI command that (re)creates this run — used in 'run this first' messages."""
        cfg = self.run_config["config"]
        parts = [f"peftlab train --task {cfg.get('task')} --method {cfg.get('method')} --seed {cfg.get('seed')}"]
        if self.low_rank:
            parts.append(f"--rank {cfg.get('rank')} --alpha {cfg.get('alpha')}")
        parts.append(f"--out {cfg['out']}")
        from peftlab.methods import get_method

        try:  # run-dir levels of the method (AdaLoRA: signal=...) as trailing key=value overrides
            keys = get_method(str(cfg.get("method"))).dir_keys
        except PeftlabError:
            keys = ()
        parts.extend(f"{key}={cfg.get(key)}" for key in keys if cfg.get(key) is not None)
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
    redo = f"re-run the run with: {info.train_command()} --force"
    check_checkpoint_dir(init_dir, redo)  # one line naming a truncated file, not a loader traceback
    if which == "final":
        check_checkpoint_dir(run_dir / CKPT_FINAL, redo)
    model = load_model(str(init_dir), num_labels)
    tokenizer = load_tokenizer(str(init_dir))
    if which == "final":
        final_dir = run_dir / CKPT_FINAL
        if not final_dir.is_dir():
            raise PeftlabError(f"run '{run_dir}' has no {CKPT_FINAL}/; re-run it with: {info.train_command()} --force")
        model = get_method(info.method).load_final(model, final_dir)
    model = model.float().eval()
    return model, tokenizer, info.run_config


# ---------------------------------------------------------------- what peftlab wrote, and --force


def is_peftlab_file(name: str) -> bool:
    """True when `name` (an entry of a run directory) is one peftlab writes (see PEFTLAB_RUN_FILES)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in PEFTLAB_RUN_FILES)


def foreign_entries(run_dir: str | Path) -> list[str]:
    """Entries of `run_dir` that peftlab did not write (sorted)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if not is_peftlab_file(p.name))


def clear_run_dir(run_dir: str | Path) -> list[str]:
    """Delete what peftlab wrote in `run_dir` (for `--force`); returns the names deleted.

    Refuses (PeftlabError, nothing deleted) when the directory holds an entry peftlab did not write:
    a user's own file is never deleted. The directory itself is kept.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    foreign = foreign_entries(run_dir)
    if foreign:
        raise PeftlabError(
            f"'{run_dir}' holds files peftlab did not write ({', '.join(foreign[:3])}); "
            f"move them away or choose another --out (nothing was deleted)"
        )
    deleted = []
    for path in sorted(run_dir.iterdir()):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        deleted.append(path.name)
    return deleted


# ---------------------------------------------------------------- output paths from run-file values

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def safe_name(value: Any, what: str = "name") -> str:
    """`value` as one path component, or a PeftlabError.

    Values read from run files (task, method, labels) are data, not paths: a name like `../x`, `/etc`
    or `a/b` must not steer where outputs go. Allowed: letters, digits, `. _ + -`, not starting with
    `.` or `-`, at most 128 characters.
    """
    text = str(value)
    if not _SAFE_NAME.match(text) or text in (".", ".."):
        raise PeftlabError(f"{what} {text!r} read from a run file is not a plain name (letters, digits, . _ + -); "
                           f"the run file looks edited or foreign: re-create it with `peftlab train`")
    return text


def safe_output_path(root: str | Path, *names: Any) -> Path:
    """`root/names[0]/names[1]/...` after checking each name with `safe_name` and that the result
    (symlinks resolved) lies under `root`; PeftlabError otherwise."""
    root = Path(root)
    path = root.joinpath(*(safe_name(n, "path component") for n in names))
    root_resolved = root.resolve()
    resolved = path.resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise PeftlabError(f"output path '{path}' resolves to '{resolved}', outside the output root '{root}'; "
                           f"remove the symlink or choose another --out")
    return path


# ---------------------------------------------------------------- weight files: readable? finite?


def safetensors_problem(path: str | Path) -> str | None:
    """Why `path` is not a complete safetensors file (None when its header checks out).

    Cheap (reads 8 bytes + the JSON header, never the tensors): the format is an 8-byte little-endian
    header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}}, then the data;
    the last tensor's end must equal the data size. A truncated or garbled file fails one of these.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "shorter than a safetensors header (truncated or empty)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                return "header length points past the end of the file (truncated or not safetensors)"
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as err:
        return f"unreadable ({err.strerror or type(err).__name__})"
    except (UnicodeDecodeError, ValueError):
        return "garbled header (not valid JSON)"
    if not isinstance(header, dict):
        return "garbled header (not a mapping)"
    data_size = size - 8 - n
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"garbled header (tensor {name!r} has no data_offsets)"
        ends.append(offsets[1])
    if max(ends, default=0) != data_size:
        return f"tensor data is {data_size} bytes but the header needs {max(ends, default=0)} (truncated)"
    return None


def checkpoint_problems(directory: str | Path) -> list[str]:
    """`file: problem` for every unreadable weight file (safetensors) or JSON file in `directory`."""
    directory = Path(directory)
    problems = []
    if not directory.is_dir():
        return [f"{directory}: missing"]
    for path in sorted(directory.iterdir()):
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
                problem = None
            except (OSError, UnicodeDecodeError, ValueError):
                problem = "not valid JSON (truncated or garbled)"
        else:
            continue
        if problem:
            problems.append(f"{path}: {problem}")
    if not any(p.suffix in (".safetensors", ".bin") for p in directory.iterdir()):
        problems.append(f"{directory}: holds no weight file")
    return problems


def check_checkpoint_dir(directory: str | Path, todo: str) -> None:
    """PeftlabError naming the first unreadable file in `directory` and `todo` (what to do)."""
    problems = checkpoint_problems(directory)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PeftlabError(f"{problems[0]}{more}; {todo}")


def nonfinite_parameters(model) -> list[str]:
    """Names of the parameters/buffers of `model` that hold a NaN or ±inf."""
    import torch

    bad = []
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
    return bad


def check_finite_weights(model, where: str = "the model") -> None:
    """PeftlabError when any weight of `model` is NaN/inf: measuring such a model gives NaN everywhere.

    `where` names the source (e.g. a checkpoint directory) in the message.
    """
    bad = nonfinite_parameters(model)
    if bad:
        raise PeftlabError(f"{where} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): training "
                           f"diverged; re-train with a lower lr (and max_grad_norm=1.0), then measure again")


__all__ = [
    "RUN_CONFIG", "FINAL_METRICS", "METRICS_LOG", "CKPT_INIT", "CKPT_FINAL", "CHECKPOINTS",
    "run_name", "run_dir_for", "is_finished", "read_run_config", "read_final_metrics",
    "RunInfo", "read_run_info", "load_run_model", "PEFTLAB_RUN_FILES", "is_peftlab_file", "foreign_entries",
    "clear_run_dir", "safe_name", "safe_output_path", "safetensors_problem", "checkpoint_problems",
    "check_checkpoint_dir", "nonfinite_parameters", "check_finite_weights",
]
