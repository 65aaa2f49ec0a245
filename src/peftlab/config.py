"""Typed training configuration: one `TrainConfig` dataclass, YAML presets, `key=value` overrides.

Resolution order (later wins): dataclass defaults → presets/YAML files (left to right) →
`key=value` overrides. Every value is coerced by the dataclass field's type and validated; any
bad value is one `PeftlabError` line that names the key and what to do.

Learning-rate default (`lr: null` → chosen by method, recorded resolved in `run_config.json`):
  - `fft`: 5e-5. MiniLM-L6 (22.7M params, hidden 384) is small; BERT-base's usual 2e-5 barely
    moves its classifier in the 1–3 epochs used here, while 5e-5 is the common MiniLM setting.
  - every other method (LoRA, PEFT-LoRA, AdaLoRA, adapters): 5e-4, the usual LoRA setting for
    small encoders (the low-rank update starts at zero and needs a larger step size).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from peftlab.errors import PeftlabError

FFT_LR = 5e-5
PEFT_LR = 5e-4
MAX_SEED = 2**32 - 1  # numpy's seed range (transformers.set_seed seeds numpy, random and torch)
# Example values used in "pass e.g. key=..." hints of the finiteness check.
_EXAMPLES = {"lr": "5e-4", "alpha": "16", "dropout": "0.05", "epochs": "3", "weight_decay": "0.01",
             "warmup_ratio": "0.06", "max_grad_norm": "1.0"}
ADAPTER_ACTS = ("gelu", "relu", "tanh", "silu")  # adapter_act values (torch.nn.functional names)
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial", "cosine_with_restarts")


@dataclass
class TrainConfig:
    """Everything that determines one fine-tuning run (saved resolved in `run_config.json`)."""

    task: str = "RTE"  # canonical task name (see `peftlab.tasks`)
    method: str = "lora"  # registry key in `peftlab.methods.METHODS`
    seed: int = 1
    # low-rank methods
    rank: int = 8
    alpha: float = 16.0  # LoRA scale = alpha / rank
    dropout: float = 0.05  # dropout on the LoRA/adapter branch input
    targets: tuple[str, ...] = ("q", "k", "v", "o")  # canonical names, see peftlab.arch
    # --- methods benchmark (issue 10): adapter, prompt-tuning (methods/adapter.py, methods/prompt_tuning.py)
    adapter_bottleneck: int = 64  # Houlsby adapter width b (params per adapter 2·d·b + b + d)
    adapter_act: str = "gelu"  # adapter nonlinearity: one of ADAPTER_ACTS
    adapter_ln: bool = False  # adapters also train the layers' LayerNorms (as in Houlsby et al.)
    prompt_tokens: int = 20  # prompt tuning: number of virtual tokens prepended to the input
    # --- end methods benchmark keys
    # optimisation
    epochs: float = 3.0
    lr: float | None = None  # None = method default (FFT_LR / PEFT_LR)
    batch_size: int = 32
    eval_batch_size: int = 64
    max_len: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs); tests, smoke runs
    # model and data
    model: str | None = None  # None = the packaged all-MiniLM-L6-v2
    # what the classifier reads: "cls" (the model's own [CLS] path, plain HF) or "mean" (masked token mean into
    # the model's pooler; BERT family only): see peftlab.pooling, which records it in the saved config.json
    pooling: str = "cls"
    # regression tasks: start the output bias at the training-label mean ("mean") or HF's 0 ("zero");
    # see peftlab.training.head_init (a LoRA run on STS-B otherwise spends its steps moving the offset)
    regression_bias: str = "mean"
    data_dir: str | None = None  # None = $PEFTLAB_DATA, else ./data
    out: str = "outputs"
    max_train_samples: int | None = None  # first N training rows (file order)
    max_eval_samples: int | None = None  # first N dev rows
    # bookkeeping
    logging_steps: int = 10
    save_steps: int = 200  # checkpoint cadence (optimizer steps) for resume; also saved at each epoch end
    save_total_limit: int = 2  # keep the last 2 so a checkpoint torn by a kill never leaves none
    eval_each_epoch: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    group_by_length: bool = True
    # CPU dropout masks without bernoulli_ (same distribution, another random stream; peftlab.fast_dropout).
    # false: exactly the masks plain HF Trainer draws.
    fast_dropout: bool = True
    # ---- AdaLoRA (method `adalora`; read only by peftlab.methods.adalora) -----------------------------
    # PEFT AdaLoRA: every adapted matrix starts at rank `init_r`; the total rank budget falls (cubic)
    # to `target_r` × n_matrices between step tinit and total − tfinal, reallocated every `deltaT`
    # steps. tinit/tfinal: optimizer steps (>= 1, whole numbers) or a fraction of all steps (0 < x < 1).
    # `alpha`/`dropout`/`targets` above are shared with the other low-rank methods.
    init_r: int = 12
    target_r: int = 4
    tinit: float = 200
    tfinal: float = 200
    deltaT: int = 10
    beta1: float = 0.85  # PEFT's EMA of sensitivity |w·∂L/∂w| (baseline_adalora)
    beta2: float = 0.85  # PEFT's EMA of its uncertainty (baseline_adalora)
    orth_reg_weight: float = 0.5  # weight of PEFT's orthogonality regulariser on A and B (training loss only)
    signal: str = "baseline_adalora"  # rank-allocation score: baseline_adalora | importance_only | plasticity_only | combo
    ema_decay: float = 0.9  # EMA decay of the importance / plasticity signals (not baseline_adalora)
    combo_lambda: float = 1.0  # combo = zscore(importance) + combo_lambda · zscore(plasticity)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["targets"] = list(self.targets)
        return out

    @property
    def resolved_lr(self) -> float:
        """`lr`, or the method default when it is None."""
        if self.lr is not None:
            return float(self.lr)
        return FFT_LR if self.method == "fft" else PEFT_LR


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
_HINTS = typing.get_type_hints(TrainConfig)


# ---------------------------------------------------------------- coercion


def _unknown_key(key: str) -> PeftlabError:
    return PeftlabError(f"unknown config key '{key}'; valid keys: {', '.join(FIELD_NAMES)}")


def _coerce(key: str, value: Any) -> Any:
    """Convert `value` (a YAML value or a `key=value` string) to the type of field `key`."""
    hint = _HINTS[key]
    args = typing.get_args(hint)
    optional = (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = [str(v).strip() for v in value]
        else:
            raise PeftlabError(f"config key '{key}' expects a comma-separated list, got {value!r}")
        return tuple(items)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(value)
            as_float = float(value)  # accepts "1e3" and 8.0, rejects "8.5" below
            if not as_float.is_integer():
                raise ValueError(value)
            return int(as_float)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise PeftlabError(
            f"config key '{key}' expects {getattr(hint, '__name__', hint)}, got {value!r}; fix the value"
        ) from None
    raise PeftlabError(f"config key '{key}' has an unsupported type {hint}")  # pragma: no cover


def apply_updates(cfg: TrainConfig, updates: dict[str, Any]) -> TrainConfig:
    """A copy of `cfg` with `updates` (key → raw value) coerced and applied (not validated)."""
    changes = {}
    for key, value in updates.items():
        key = key.strip().replace("-", "_")
        if key not in FIELD_NAMES:
            raise _unknown_key(key)
        changes[key] = _coerce(key, value)
    return dataclasses.replace(cfg, **changes)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """`["lr=1e-4", "targets=q,v"]` → `{"lr": "1e-4", "targets": "q,v"}` (order kept, last wins)."""
    out: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise PeftlabError(f"override '{item}' is not key=value; write e.g. lr=1e-4 (valid keys: {', '.join(FIELD_NAMES)})")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- presets


def config_dirs() -> list[Path]:
    """Where preset names are looked up: `$PEFTLAB_CONFIGS`, `./configs`, the repo's `configs/`."""
    dirs = []
    if os.environ.get("PEFTLAB_CONFIGS"):
        dirs.append(Path(os.environ["PEFTLAB_CONFIGS"]))
    dirs.append(Path.cwd() / "configs")
    dirs.append(Path(__file__).resolve().parents[2] / "configs")  # src/peftlab/config.py → repo/configs
    return list(dict.fromkeys(dirs))


def available_presets() -> list[str]:
    names = {p.stem for d in config_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def find_preset(preset_or_file: str) -> Path:
    """A YAML file path as given, or `<configs dir>/<name>.yaml` for a preset name."""
    path = Path(preset_or_file).expanduser()
    if path.suffix in (".yaml", ".yml") or os.sep in preset_or_file:
        if path.is_file():
            return path
        raise PeftlabError(f"config file '{preset_or_file}' not found; pass an existing YAML file or a preset name")
    for directory in config_dirs():
        candidate = directory / f"{preset_or_file}.yaml"
        if candidate.is_file():
            return candidate
    raise PeftlabError(
        f"unknown config preset '{preset_or_file}'; available presets: {', '.join(available_presets()) or 'none'} "
        f"(or pass a YAML file path)"
    )


def read_yaml_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise PeftlabError(f"config file '{path}' is not valid YAML ({first}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PeftlabError(f"config file '{path}' must hold a mapping of key: value; fix the file")
    return data


# ---------------------------------------------------------------- validation


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every value; return a copy with canonical task/method/targets names and `lr` resolved."""
    from peftlab.arch import parse_targets
    from peftlab.methods import get_method
    from peftlab.tasks import get_task

    def bad(msg: str) -> PeftlabError:
        return PeftlabError(msg)

    # Finiteness first, for every numeric field at once: `nan` fails every `<`/`>` comparison below
    # silently, and a NaN learning rate would otherwise train (and write files) before anyone notices.
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(f"{field.name} must be a finite number, got {value}; pass a real value, e.g. "
                      f"{field.name}={_EXAMPLES.get(field.name, 1)}")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise bad(f"seed must be an integer in [0, {MAX_SEED}], got {cfg.seed}; pass e.g. --seed 1")
    if cfg.rank <= 0:
        raise bad(f"rank must be a positive integer, got {cfg.rank}; pass e.g. --rank 8")
    if cfg.alpha <= 0:
        raise bad(f"alpha must be > 0, got {cfg.alpha}; pass e.g. --alpha 16")
    if not 0.0 <= cfg.dropout < 1.0:
        raise bad(f"dropout must be in [0, 1), got {cfg.dropout}; pass e.g. dropout=0.05")
    # methods benchmark keys (issue 10)
    if cfg.adapter_bottleneck <= 0:
        raise bad(f"adapter_bottleneck must be a positive integer, got {cfg.adapter_bottleneck}; "
                  f"pass e.g. adapter_bottleneck=64")
    if cfg.adapter_act not in ADAPTER_ACTS:
        raise bad(f"unknown adapter_act '{cfg.adapter_act}'; choose from {', '.join(ADAPTER_ACTS)}")
    if cfg.prompt_tokens <= 0:
        raise bad(f"prompt_tokens must be a positive integer, got {cfg.prompt_tokens}; pass e.g. prompt_tokens=20")
    if cfg.epochs <= 0:
        raise bad(f"epochs must be > 0, got {cfg.epochs}; pass e.g. --epochs 3")
    if cfg.lr is not None and cfg.lr <= 0:
        raise bad(f"lr must be > 0, got {cfg.lr}; pass e.g. --lr 5e-4")
    for key in ("batch_size", "eval_batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit"):
        if getattr(cfg, key) < 1:
            raise bad(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.max_len < 8:
        raise bad(f"max_len must be >= 8 tokens, got {cfg.max_len}; pass e.g. --max-len 128")
    for key in ("max_train_samples", "max_eval_samples", "max_steps"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise bad(f"{key} must be >= 1 (or null for all), got {getattr(cfg, key)}")
    if cfg.weight_decay < 0:
        raise bad(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise bad(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.max_grad_norm < 0:
        raise bad(f"max_grad_norm must be >= 0 (0 disables clipping), got {cfg.max_grad_norm}")
    from peftlab.pooling import POOLINGS

    if cfg.pooling not in POOLINGS:
        raise bad(f"unknown pooling '{cfg.pooling}'; choose from {', '.join(POOLINGS)}")
    from peftlab.training.head_init import REGRESSION_BIASES

    if cfg.regression_bias not in REGRESSION_BIASES:
        raise bad(f"unknown regression_bias '{cfg.regression_bias}'; choose from {', '.join(REGRESSION_BIASES)}")
    if cfg.lr_scheduler not in LR_SCHEDULERS:
        raise bad(f"unknown lr_scheduler '{cfg.lr_scheduler}'; choose from {', '.join(LR_SCHEDULERS)}")
    if not (cfg.device in ("auto", "cpu", "cuda", "mps") or cfg.device.startswith("cuda:")):
        raise bad(f"unknown device '{cfg.device}'; choose auto, cpu, cuda, cuda:N or mps")
    if not str(cfg.out).strip():
        raise bad("out must be a directory path; pass e.g. --out outputs")

    _validate_adalora(cfg)

    method = get_method(cfg.method)  # unknown method -> PeftlabError listing the registry
    task = get_task(cfg.task)  # unknown task -> PeftlabError listing the task names
    targets = parse_targets(cfg.targets)  # unknown target -> PeftlabError listing q,k,v,o,...
    cfg = dataclasses.replace(cfg, task=task.name, method=method.name, targets=targets)
    return dataclasses.replace(cfg, lr=cfg.resolved_lr)


ADALORA_SIGNALS = ("baseline_adalora", "importance_only", "plasticity_only", "combo")


def _validate_adalora(cfg: TrainConfig) -> None:
    """The AdaLoRA block (finiteness is checked for every field before this)."""
    if cfg.init_r < 1:
        raise PeftlabError(f"init_r must be >= 1, got {cfg.init_r}; pass e.g. init_r=12")
    if not 1 <= cfg.target_r <= cfg.init_r:
        raise PeftlabError(f"target_r must be in [1, init_r={cfg.init_r}], got {cfg.target_r}; AdaLoRA only "
                           f"removes rank, so pass e.g. target_r=4 init_r=12")
    for key in ("tinit", "tfinal"):
        value = getattr(cfg, key)
        if value < 0 or (value >= 1 and not float(value).is_integer()):
            raise PeftlabError(f"{key} must be a whole number of steps (>= 0) or a fraction in (0, 1), got {value}; "
                               f"pass e.g. {key}=200 or {key}=0.1")
    if cfg.deltaT < 1:
        raise PeftlabError(f"deltaT must be >= 1 step, got {cfg.deltaT}; pass e.g. deltaT=10")
    for key in ("beta1", "beta2", "ema_decay"):
        if not 0.0 < getattr(cfg, key) < 1.0:
            raise PeftlabError(f"{key} must be in (0, 1), got {getattr(cfg, key)}; pass e.g. {key}=0.85")
    if cfg.orth_reg_weight < 0:
        raise PeftlabError(f"orth_reg_weight must be >= 0, got {cfg.orth_reg_weight}; pass e.g. orth_reg_weight=0.5")
    if cfg.signal not in ADALORA_SIGNALS:
        raise PeftlabError(f"unknown signal '{cfg.signal}'; choose one of: {', '.join(ADALORA_SIGNALS)}")


def load_config(
    preset_or_file: str | Path | list[str] | None = None,
    overrides: Iterable[str] | dict[str, Any] = (),
    validate_config: bool = True,
) -> TrainConfig:
    """Build a validated `TrainConfig`.

    `preset_or_file`: a preset name (`quick`, `rte`, …, looked up in `configs/`), a YAML file path,
    a comma-separated list of those (`"rte,quick"`, applied left to right), or a list of them.
    `overrides`: `["key=value", ...]` (or a dict), applied last, coerced by field type.
    """
    cfg = TrainConfig()
    if preset_or_file:
        items = preset_or_file if isinstance(preset_or_file, list) else str(preset_or_file).split(",")
        for item in [str(i).strip() for i in items if str(i).strip()]:
            cfg = apply_updates(cfg, read_yaml_config(find_preset(item)))
    updates = dict(overrides) if isinstance(overrides, dict) else parse_overrides(overrides)
    cfg = apply_updates(cfg, updates)
    return validate(cfg) if validate_config else cfg


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a `TrainConfig` from `to_dict()` output (e.g. `run_config.json`); unknown keys are ignored
    so that run directories written by newer peftlab versions still load."""
    known = {k: v for k, v in data.items() if k in FIELD_NAMES}
    return apply_updates(TrainConfig(), known)


__all__ = [
    "TrainConfig",
    "load_config",
    "validate",
    "apply_updates",
    "parse_overrides",
    "config_from_dict",
    "find_preset",
    "available_presets",
    "FIELD_NAMES",
    "FFT_LR",
    "PEFT_LR",
    "ADALORA_SIGNALS",
]
