"""The `Method` interface, the `METHODS` registry, and helpers every method shares.

A method only says how to change a model (`apply`), which parameters train, what to save, how to
load it back, how far each weight moved (`delta_weights`) and what to do at a step end
(`callbacks`). The one training loop does the rest.

Base-model fingerprint (written beside every saved result, checked on load): the base model's
`name_or_path`, `model_type`, hidden size and layer count, plus a sha256 over every *body*
parameter (everything except the classifier modules and LoRA/adapter tensors) of its name, shape
and a strided sample of at most 65,536 fp32 values. Sampling keeps hashing cheap for multi-GB
models while any other checkpoint (every weight differs) still changes the hash; the classifier is
left out because it is seeded per run and saved with the adapter anyway.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import PeftlabError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import torch.nn as nn

METHODS: dict[str, "Method"] = {}

# Method names peftlab knows and refuses, with why and what to use instead (checked by `get_method`).
REFUSED_METHODS: dict[str, str] = {
    "prefix-tuning": (
        "method 'prefix-tuning' is not available: PEFT prefix tuning fails on transformers 5.24 "
        "(\"Model does not support past key values\": BertModel.forward renamed past_key_values to cache); "
        "use prompt-tuning, or transformers 5.23"
    ),
}

FINGERPRINT_ATTR = "peftlab_base_fingerprint"  # set on the model by `apply`, read by `save_final`
FINGERPRINT_FILE = "peftlab_base.json"  # beside saved weights of methods whose files have no room for it
_SAMPLE_VALUES = 65_536


class Method:
    """One fine-tuning method. Subclasses set the class attributes and override the methods."""

    name: str = ""  # registry key, e.g. "lora"
    dir_name: str = ""  # run-dir component, e.g. "LoRA"
    low_rank: bool = False  # run dir gets `_r<R>`
    dir_keys: tuple[str, ...] = ()  # config keys whose values become run-dir levels after <TASK> (AdaLoRA: signal)
    # Config keys (besides rank) that change what this method trains; a value other than TrainConfig's default
    # is appended to the run-dir name (`runs.run_dir_for`), so two runs differing only in them never share one.
    option_keys: tuple[str, ...] = ()
    resumable: bool = True  # False: a killed run refuses to resume from a Trainer checkpoint (state not saved)
    mergeable: bool = False  # the update can be folded into the base weights (no inference cost)
    # Why `delta_weights` returns {} (no per-module ΔW of q/k/v/o/ffn weights), or None when it has one.
    delta_note: str | None = None

    def apply(self, model: "nn.Module", cfg) -> "nn.Module":
        """Change `model` for training (freeze / wrap) and return the model to train."""
        raise NotImplementedError

    def trainable_parameters(self, model: "nn.Module") -> list[tuple[str, "torch.nn.Parameter"]]:
        """Exactly the (name, parameter) pairs the optimizer must receive."""
        raise NotImplementedError

    def save_final(self, model: "nn.Module", out_dir: str | Path) -> None:
        """Write θ1 (or what is needed to rebuild it from θ0) into `out_dir`."""
        raise NotImplementedError

    def load_final(self, base_model: "nn.Module", out_dir: str | Path) -> "nn.Module":
        """Rebuild θ1 from `base_model` (θ0) and `out_dir`; PeftlabError naming both bases on mismatch."""
        raise NotImplementedError

    def delta_weights(self, model_final: "nn.Module", model_init: "nn.Module") -> dict[str, "torch.Tensor"]:
        """{HF module name: ΔW in fp32, laid out like that module's weight}."""
        raise NotImplementedError

    def callbacks(self, cfg, total_steps: int) -> list:
        """TrainerCallbacks this method needs (none by default)."""
        return []

    def preflight(self, cfg, total_steps: int) -> None:
        """Reject settings that cannot work for `total_steps` optimizer steps, before anything is written."""

    def finish(self, run_dir: Path, final_metrics: dict[str, Any]) -> None:
        """Write method-specific result files, after the final eval and before `final_metrics.json`."""

    def __repr__(self) -> str:
        return f"<Method {self.name!r} ({type(self).__name__})>"


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: instantiate `cls` and register it under `cls.name`."""
    if not cls.name or not cls.dir_name:
        raise TypeError(f"{cls.__name__} must set `name` and `dir_name`")
    if cls.name in METHODS and type(METHODS[cls.name]) is not cls:
        raise TypeError(f"method name {cls.name!r} is already registered by {type(METHODS[cls.name]).__name__}")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    """The registered method `name` (case-insensitive), or a PeftlabError listing the known ones."""
    key = str(name).strip().lower()
    if key in REFUSED_METHODS:
        raise PeftlabError(REFUSED_METHODS[key])
    if key not in METHODS:
        raise PeftlabError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def trainable_counts(method: Method, model: "nn.Module") -> dict[str, int]:
    """{"with_classifier", "without_classifier", "classifier", "total"} parameter counts of an applied model.

    The classifier is matched by name (a top-level classifier module of the ArchSpec, or PEFT's
    `modules_to_save` copy of it), so the count is the same for every method of one model.
    """
    from peftlab.arch import get_arch

    classifier = set(get_arch(model).classifier)

    def is_classifier(name: str) -> bool:
        for prefix in ("base_model.model.", "base_model."):  # PEFT wrappers (prompt tuning has no `.model`)
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        return name.split(".", 1)[0] in classifier

    trainable = method.trainable_parameters(model)
    n_with = sum(p.numel() for _, p in trainable)
    n_classifier = sum(p.numel() for n, p in trainable if is_classifier(n))
    return {"with_classifier": n_with, "without_classifier": n_with - n_classifier, "classifier": n_classifier,
            "total": sum(p.numel() for p in model.parameters())}


# --- config validation --------------------------------------------------------------------------

def validate_low_rank(cfg) -> None:
    """Reject rank ≤ 0, alpha ≤ 0 and dropout outside [0, 1) with one-line PeftlabErrors."""
    rank, alpha, dropout = cfg.rank, cfg.alpha, cfg.dropout
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise PeftlabError(f"rank must be a positive integer, got {rank!r}; set rank=8 (or 4, 16, ...)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise PeftlabError(f"alpha must be > 0, got {alpha!r}; set alpha=16 (LoRA scale = alpha / rank)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise PeftlabError(f"dropout must be in [0, 1), got {dropout!r}; set dropout=0.05 (or 0 to disable)")


# --- base-model fingerprint -----------------------------------------------------------------------

def _is_body_parameter(name: str, classifier_names: list[str]) -> bool:
    top = name.split(".", 1)[0]
    return top not in classifier_names and "lora_" not in name


def base_fingerprint(model: "nn.Module") -> dict[str, Any]:
    """Identify a plain (unwrapped) HF base model: name, type, sizes and a sampled weight hash.

    sha256 over, for every body parameter in name order: name, shape, and `w.flatten()[::step]`
    in fp32 with `step = ceil(numel / 65536)` (see the module docstring for why sampled).
    """
    import torch

    from peftlab.arch import classifier_module_names, head_shape

    config = model.config
    shape = head_shape(config)
    classifier = classifier_module_names(model)
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if not _is_body_parameter(name, classifier):
                continue
            flat = param.detach().reshape(-1)  # [numel]
            step = max(1, -(-flat.numel() // _SAMPLE_VALUES))
            sample = flat[::step].to(device="cpu", dtype=torch.float32).contiguous()
            digest.update(f"{name}:{tuple(param.shape)}".encode())
            digest.update(sample.numpy().tobytes())
    return {
        "name_or_path": getattr(config, "_name_or_path", "") or "",
        "model_type": config.model_type,
        "hidden": shape.hidden,
        "n_layers": shape.n_layers,
        "sha256": digest.hexdigest(),
    }


def describe_fingerprint(fp: dict[str, Any]) -> str:
    """Short human name of a base model for error messages."""
    name = fp.get("name_or_path") or "<unnamed>"
    sha = (fp.get("sha256") or "unknown")[:12]
    return f"'{name}' ({fp.get('model_type')}, hidden {fp.get('hidden')}, {fp.get('n_layers')} layers, weights {sha})"


def check_same_base(saved: dict[str, Any], base_model: "nn.Module", out_dir: str | Path) -> None:
    """PeftlabError naming both bases when `base_model` is not the one the result in `out_dir` was trained on.

    The weight hash is compared only when the saved fingerprint has one (see `stashed_fingerprint`).
    """
    current = base_fingerprint(base_model)
    keys = ("model_type", "hidden", "n_layers") + (("sha256",) if saved.get("sha256") else ())
    if any(saved.get(k) != current.get(k) for k in keys):
        raise PeftlabError(
            f"{out_dir} was trained on base model {describe_fingerprint(saved)} but the given base model is "
            f"{describe_fingerprint(current)}; load it onto the base model it was trained on"
        )


def stash_fingerprint(model: "nn.Module", fingerprint: dict[str, Any]) -> None:
    """Remember θ0's fingerprint on the model `apply` returns, for `save_final`."""
    setattr(model, FINGERPRINT_ATTR, fingerprint)


def stashed_fingerprint(model: "nn.Module", fallback: "nn.Module | None" = None) -> dict[str, Any]:
    """The fingerprint `apply` stashed; else one computed from `fallback` (a plain base); else structure only.

    The structure-only fallback (sha256 = None) happens when a model reaches `save_final` without
    having gone through `apply` in this process; loading then checks type and sizes only.
    """
    fp = getattr(model, FINGERPRINT_ATTR, None)
    if fp is not None:
        return fp
    if fallback is not None:
        return base_fingerprint(fallback)
    from peftlab.arch import head_shape

    shape = head_shape(model.config)
    return {"name_or_path": getattr(model.config, "_name_or_path", "") or "", "model_type": model.config.model_type,
            "hidden": shape.hidden, "n_layers": shape.n_layers, "sha256": None}


# --- saving a directory of files without ever showing a half-written one -------------------------

def move_files_into(tmp_dir: Path, out_dir: Path) -> None:
    """Move every file of `tmp_dir` into `out_dir` with `os.replace` (atomic per file), then drop `tmp_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(tmp_dir.iterdir()):
        os.replace(path, out_dir / path.name)
    shutil.rmtree(tmp_dir, ignore_errors=True)


def staging_dir(out_dir: Path) -> Path:
    """A fresh temp directory beside `out_dir` (same filesystem, so `os.replace` is a rename)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def save_pretrained_atomically(model: "nn.Module", out_dir: str | Path) -> None:
    """`model.save_pretrained` into a staging dir, files moved into `out_dir`, then the base fingerprint.

    The fingerprint is written last, so its presence means the weights beside it are complete.
    """
    from peftlab.io import atomic_write_json

    out_dir = Path(out_dir)
    tmp = staging_dir(out_dir)
    model.save_pretrained(tmp)
    move_files_into(tmp, out_dir)
    atomic_write_json(out_dir / FINGERPRINT_FILE, stashed_fingerprint(model))


def require_file(path: Path, what: str) -> Path:
    """`path` if it exists, else a PeftlabError saying which saved result is missing."""
    if not path.is_file():
        raise PeftlabError(f"{what} not found: {path} is missing; point to a finished run's ckpt_final directory")
    return path
