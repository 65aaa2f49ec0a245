"""Saving and loading peftlab's own small-update methods (`bitfit`, `adapter`): only what trains.

    <ckpt_final>/adapter.safetensors   every trainable tensor, keyed by its parameter name
    <ckpt_final>/adapter_config.json   {"method", "settings": {...}, "base_model": fingerprint, "format": 1}

Loading re-applies the method to θ0 with the saved settings (so the structure is rebuilt exactly) and
then loads the tensors; the config is written last, so its presence means the weights beside it are complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from peftlab.errors import PeftlabError
from peftlab.methods.base import Method, check_same_base, require_file, stashed_fingerprint

WEIGHTS = "adapter.safetensors"
CONFIG = "adapter_config.json"
SETTINGS_ATTR = "peftlab_method_settings"  # set by `apply`: the cfg values the structure depends on


def save_trainable(method, model, out_dir) -> None:
    from safetensors.torch import save

    from peftlab.io import atomic_write_bytes, atomic_write_json

    settings = getattr(model, SETTINGS_ATTR, None)
    if settings is None:
        raise PeftlabError(f"this model has no {method.name} applied; call get_method('{method.name}').apply(model, cfg) "
                           f"first")
    out_dir = Path(out_dir)
    tensors = {name: param.detach().cpu().contiguous() for name, param in method.trainable_parameters(model)}
    atomic_write_bytes(out_dir / WEIGHTS, save(tensors, metadata={"format": "pt"}))
    atomic_write_json(out_dir / CONFIG, {"method": method.name, "settings": settings,
                                         "base_model": stashed_fingerprint(model), "format": 1})


def load_trainable(method, base_model, out_dir):
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    config = json.loads(require_file(out_dir / CONFIG, f"{method.name} config").read_text())
    weights_path = require_file(out_dir / WEIGHTS, f"{method.name} weights")
    if config.get("method") != method.name:
        raise PeftlabError(f"{out_dir} holds a '{config.get('method')}' result, not '{method.name}'; "
                           f"load it with that method")
    check_same_base(config["base_model"], base_model, out_dir)
    model = method.apply(base_model, SimpleNamespace(seed=0, **config["settings"]))
    tensors = load_file(str(weights_path))
    expected = {name for name, _ in method.trainable_parameters(model)}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise PeftlabError(f"{weights_path} does not match the {method.name} model (missing {missing[:3]}, "
                           f"unexpected {extra[:3]}); re-save it with this peftlab version")
    model.load_state_dict(tensors, strict=False)
    return model.eval()


class OwnStateMethod(Method):
    """A method of ours that saves only what trains (`save_trainable` / `load_trainable`) and leaves no
    per-module ΔW of q/k/v/o (subclasses set `delta_note` to say why)."""

    def save_final(self, model, out_dir) -> None:
        save_trainable(self, model, out_dir)

    def load_final(self, base_model, out_dir):
        return load_trainable(self, base_model, out_dir)

    def delta_weights(self, model_final, model_init):
        """{} — see `delta_note`."""
        return {}
