"""Per-head update magnitude U: how far fine-tuning moved each head's attention weights.

For head h of layer l (nn.Linear weight layout [d_out, d_in], rows s_h = h·d_head:(h+1)·d_head):

    U_q = ‖ΔW_q[s_h, :]‖_F      U_k = ‖ΔW_k[s_kv, :]‖_F      U_v = ‖ΔW_v[s_kv, :]‖_F
    U_o = ‖ΔW_o[:, s_h]‖_F      (W_o's *columns* read head h's context vector)
    U   = sqrt(U_q² + U_k² + U_v² + U_o²)
    Urel_x = U_x / ‖W0_x[same slice]‖_F,   Urel = U / sqrt(Σ_x ‖W0_x[slice]‖_F²)

Grouped-query attention (llama, qwen2): K and V have n_kv_heads heads, each shared by
group = n_heads // n_kv_heads query heads; query head h reads kv head `kv_head = h // group`, so
s_kv = kv_head·d_head:(kv_head+1)·d_head and the K/V part of U is shared by the heads of a group.
Without GQA, kv_head = head.

GPT-2: Conv1D weights are [d_in, d_out] and are transposed to [d_out, d_in] first; `c_attn` fuses
q|k|v along d_out (q = rows 0:H, k = H:2H, v = 2H:3H of the transposed weight, H = n_heads·d_head).

ΔW comes from `method.delta_weights(model_final, model_init)` (fp32, LoRA scale included: FFT
θ1 − θ0, LoRA scale·B@A, which equals merged − base). A q/k/v/o/ffn module missing from it was not
changed by the method (ΔW = 0). Every ΔW given must be consumed: one whose module is none of a
layer's q/k/v/o/ffn modules (e.g. LoRA on a pooler or an embedding) would otherwise vanish from the
table without a trace, so the step fails naming it. Only weights are compared; biases are left out.

Per-layer FFN lines: U_ffn_in = ‖ΔW‖_F over all ffn_in modules (llama: gate_proj and up_proj),
U_ffn_out over ffn_out, with Urel as above.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError

UPDATE_FILE = "update.jsonl"
UPDATE_META_FILE = "update_meta.json"
COMPONENTS = ("q", "k", "v", "o")


def linear_layout(weight, conv1d: bool):
    """A weight as [d_out, d_in] (GPT-2 Conv1D stores [d_in, d_out]), in fp32."""
    weight = weight.detach().float()
    return weight.t() if conv1d else weight


def component_matrix(weight, target: str, spec, shape):
    """The [d_out, d_in] block of `weight` for canonical `target` (splits GPT-2's fused c_attn)."""
    matrix = linear_layout(weight, spec.conv1d)
    if spec.fused_qkv and target in ("q", "k", "v"):
        width = shape.n_heads * shape.d_head
        part = ("q", "k", "v").index(target)
        matrix = matrix[part * width:(part + 1) * width]  # [3H, d_in] -> [H, d_in]
    return matrix


def head_slice(matrix, target: str, index: int, d_head: int):
    """Head `index`'s slice: rows of q/k/v ([d_head, d_in]), columns of o ([d_out, d_head])."""
    block = slice(index * d_head, (index + 1) * d_head)
    return matrix[:, block] if target == "o" else matrix[block]


def _frob(tensor) -> float:
    return float(tensor.double().norm())


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def update_rows(model_init, deltas: dict[str, Any]) -> list[dict[str, Any]]:
    """`update.jsonl` rows: one `kind="head"` row per (layer, head), then one `kind="ffn"` row per layer.

    `model_init`: the θ0 HF model (unwrapped), for W0 and module names. `deltas`: {module name:
    ΔW in that module's weight layout} as returned by `Method.delta_weights`.
    """
    import torch

    from peftlab.arch import find_layers, get_arch, head_shape

    spec = get_arch(model_init)
    shape = head_shape(model_init)
    layers_name, layers = find_layers(model_init)
    group = shape.group_size
    consumed: set[str] = set()

    def weight_and_delta(layer: int, path: str):
        name = f"{layers_name}.{layer}.{path}"
        w0 = layers[layer].get_submodule(path).weight.detach()
        delta = deltas.get(name)
        consumed.add(name)
        delta = torch.zeros_like(w0, dtype=torch.float32) if delta is None else delta.detach().float()
        if delta.shape != w0.shape:
            raise PeftlabError(f"ΔW of {name} has shape {tuple(delta.shape)} but its θ0 weight {tuple(w0.shape)}; "
                               "compute ΔW from θ0 and θ1 of the same run")
        return w0, delta

    head_rows, ffn_rows = [], []
    for layer in range(shape.n_layers):
        blocks = {}  # target -> (W0 [d_out, d_in], ΔW [d_out, d_in])
        for target in COMPONENTS:
            w0, delta = weight_and_delta(layer, spec.paths[target][0])
            blocks[target] = (component_matrix(w0, target, spec, shape), component_matrix(delta, target, spec, shape))
        for head in range(shape.n_heads):
            kv_head = head // group
            row: dict[str, Any] = {"kind": "head", "layer": layer, "head": head, "kv_head": kv_head}
            u, w = {}, {}
            for target in COMPONENTS:
                index = kv_head if target in ("k", "v") else head
                w0, delta = blocks[target]
                u[target] = _frob(head_slice(delta, target, index, shape.d_head))
                w[target] = _frob(head_slice(w0, target, index, shape.d_head))
            total_u = math.sqrt(sum(x * x for x in u.values()))
            total_w = math.sqrt(sum(x * x for x in w.values()))
            row["U"] = total_u
            row["Urel"] = _ratio(total_u, total_w)
            row.update({f"U_{t}": u[t] for t in COMPONENTS})
            row.update({f"Urel_{t}": _ratio(u[t], w[t]) for t in COMPONENTS})
            head_rows.append(row)
        ffn: dict[str, Any] = {"kind": "ffn", "layer": layer, "head": None}
        for target in ("ffn_in", "ffn_out"):
            pairs = [weight_and_delta(layer, path) for path in spec.paths[target]]
            u_sq = sum(_frob(d) ** 2 for _, d in pairs)
            w_sq = sum(_frob(w0) ** 2 for w0, _ in pairs)
            ffn[f"U_{target}"] = math.sqrt(u_sq)
            ffn[f"Urel_{target}"] = _ratio(math.sqrt(u_sq), math.sqrt(w_sq))
        ffn_rows.append(ffn)
    unused = sorted(set(deltas) - consumed)
    if unused:
        raise PeftlabError(
            f"ΔW of {', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''} matches no head slice or FFN "
            f"module of a {spec.family} layer (q/k/v/o/ffn paths in peftlab/arch.py), so update.jsonl cannot "
            "account for it; train with --targets among q,k,v,o,ffn_in,ffn_out or add the module to the ArchSpec"
        )
    # key order: U_ffn_in, U_ffn_out, Urel_ffn_in, Urel_ffn_out (as in CONTRACTS.md)
    ffn_rows = [{k: r[k] for k in ("kind", "layer", "head", "U_ffn_in", "U_ffn_out", "Urel_ffn_in", "Urel_ffn_out")}
                for r in ffn_rows]
    return head_rows + ffn_rows


def update_meta(model_init, method_name: str, delta_names: list[str]) -> dict[str, Any]:
    """What `update.jsonl` was computed from: shapes, the GQA mapping, the ArchSpec notes."""
    from peftlab.arch import get_arch, head_shape

    spec = get_arch(model_init)
    shape = head_shape(model_init)
    notes = list(spec.notes)
    if shape.n_kv_heads != shape.n_heads:
        notes.append(
            f"grouped-query attention: {shape.n_kv_heads} kv heads for {shape.n_heads} query heads; "
            f"U_k/U_v of query head h are those of kv head h // {shape.group_size} (field kv_head), "
            "shared by the heads of a group"
        )
    return {
        "family": spec.family,
        "method": method_name,
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "n_kv_heads": shape.n_kv_heads,
        "d_head": shape.d_head,
        "kv_head_rule": "kv_head = head // (n_heads // n_kv_heads)",
        "delta_source": "method.delta_weights (fp32, scale included); modules not listed had ΔW = 0",
        "delta_modules": sorted(delta_names),
        "weights_only": True,
        "notes": notes,
    }


ATTENTION_TARGETS = ("q", "k", "v", "o")


def update_undefined_reason(run_dir: str | Path) -> str | None:
    """Why the per-head update U is not defined for this run (None when it is).

    Two cases: the method changes no weight matrix at all (adapters, BitFit, LN tuning, prompt tuning:
    `Method.delta_note`), or it adapts only chosen matrices and none of them is attention's q/k/v/o
    (e.g. `ia3` or `vera` with `targets=ffn_out`): every head's ΔW is zero by construction, and a column of
    zeros would rank heads by ties, so U is left empty rather than reported as 0.
    A recorded `update_meta.json` with `"update_defined": false` is read first.
    """
    from peftlab.io import read_json
    from peftlab.methods import METHODS

    run_dir = Path(run_dir)
    meta_path = run_dir / UPDATE_META_FILE
    if meta_path.is_file():
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError):
            meta = {}
        if isinstance(meta, dict) and meta.get("update_defined") is False:
            return str(meta.get("reason") or "no per-head ΔW")
    try:
        info = read_json(run_dir / "run_config.json")
    except (OSError, ValueError):
        return None
    name = str(info.get("method") or "")
    method = METHODS.get(name)
    if method is None:
        return None
    if getattr(method, "delta_note", None):
        return str(method.delta_note)
    targets = (info.get("config") or {}).get("targets") or []
    if "targets" in getattr(method, "option_keys", ()) and not set(targets) & set(ATTENTION_TARGETS):
        return f"{name} adapted no attention matrix (targets {','.join(targets)}), so every head's ΔW is 0 by construction"
    return None


def undefined_meta(method_name: str, reason: str) -> dict[str, Any]:
    """`update_meta.json` of a run whose update is not defined (no update.jsonl is written)."""
    return {"method": method_name, "update_defined": False, "reason": reason,
            "columns": "U, Urel, U_q, U_k, U_v, U_o are null in heads.csv (not 0: nothing was measured)"}


def measure_update(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, meta) of `update.jsonl` / `update_meta.json` for a finished run: ΔW = delta_weights(θ1, θ0)."""
    from peftlab.io import read_json
    from peftlab.methods import get_method
    from peftlab.runs import load_run_model

    model_init, _, _ = load_run_model(run_dir, "init")
    model_final, _, _ = load_run_model(run_dir, "final")
    method = get_method(read_json(Path(run_dir) / "run_config.json")["method"])
    deltas = method.delta_weights(model_final, model_init)
    return update_rows(model_init, deltas), update_meta(model_init, method.name, list(deltas))
