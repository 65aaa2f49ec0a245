"""Head gates: multiply each attention head's output by a gate value, through temporary hooks.

transformers 5.x has no `head_mask`, so a head is gated where its output enters the attention
output projection W_o. A forward *pre*-hook on the module that sits at the o-proj path now (the
LoRA / PEFT wrapper when the model is wrapped, so the LoRA branch is gated too) views its input

    ctx [N, T, n_heads * d_head]  as  [N, T, n_heads, d_head]

and multiplies head h by its gate. Since W_o is linear, gate 0 on (layer, head) equals zeroing that
head's d_head input columns of W_o (Linear weight [d_out, d_in]; GPT-2 Conv1D rows of [d_in, d_out]).
Grouped-query models (LLaMA, Qwen2) are no different here: the o-proj input has n_heads·d_head columns.

Gate shapes:
    [n_layers, n_heads]        one gate for every row of the batch
    [V, n_layers, n_heads]     V variants against a batch of V·B rows, variant-major: rows
                               [v·B:(v+1)·B] use variant v. With V = B (one row per variant) this is a
                               per-example gate, used for per-example gradients (heads/plasticity.py).
A gate with `requires_grad` gives ∂L/∂gate by autograd.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from peftlab.arch import head_shape, layer_module
from peftlab.errors import PeftlabError


def ones_gate(model: nn.Module, variants: int | None = None, requires_grad: bool = False,
              dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """An all-ones gate `[n_layers, n_heads]` (or `[variants, n_layers, n_heads]`) for `model`."""
    shape = head_shape(model)
    size = (shape.n_layers, shape.n_heads) if variants is None else (variants, shape.n_layers, shape.n_heads)
    device = device if device is not None else next(model.parameters()).device
    return torch.ones(size, dtype=dtype, device=device, requires_grad=requires_grad)


def _check_gate(gate: torch.Tensor, n_layers: int, n_heads: int) -> None:
    if not isinstance(gate, torch.Tensor) or gate.dim() not in (2, 3) or tuple(gate.shape[-2:]) != (n_layers, n_heads):
        got = tuple(gate.shape) if isinstance(gate, torch.Tensor) else type(gate).__name__
        raise PeftlabError(
            f"head gate has shape {got} but this model needs [{n_layers}, {n_heads}] or "
            f"[variants, {n_layers}, {n_heads}]; build it with peftlab.heads.gate.ones_gate(model)"
        )


def _gate_rows(gate: torch.Tensor, layer: int, n_rows: int, n_heads: int) -> torch.Tensor:
    """The gate of `layer` for each of `n_rows` batch rows, shaped [n_rows or 1, 1, n_heads, 1]."""
    if gate.dim() == 2:
        return gate[layer].view(1, 1, n_heads, 1)  # [n_heads] -> [1, 1, n_heads, 1]
    n_variants = gate.shape[0]
    if n_rows % n_variants:
        raise PeftlabError(
            f"a gate with {n_variants} variants needs a batch of a multiple of {n_variants} rows, got {n_rows}; "
            f"repeat the batch once per variant (variant-major)"
        )
    per_row = gate[:, layer].repeat_interleave(n_rows // n_variants, dim=0)  # [V, H] -> [V·B, H]
    return per_row.view(n_rows, 1, n_heads, 1)  # [N, H] -> [N, 1, H, 1]


def _make_hook(gate: torch.Tensor, layer: int, n_heads: int, d_head: int):
    def pre_hook(module, args, kwargs):
        if args:
            ctx, rest, key = args[0], args[1:], None
        else:  # called by keyword (`input=` for nn.Linear, `x=` for Conv1D / LoRA wrappers)
            key = next((k for k in ("input", "x", "hidden_states") if k in kwargs), None)
            if key is None:
                raise PeftlabError(
                    f"could not find the input of the o-projection of layer {layer} ({type(module).__name__}); "
                    f"check the 'o' path in peftlab/arch.py"
                )
            ctx, rest = kwargs[key], ()
        if ctx.shape[-1] != n_heads * d_head:
            raise PeftlabError(
                f"the o-projection input of layer {layer} has {ctx.shape[-1]} columns, expected "
                f"n_heads·d_head = {n_heads}·{d_head}; check the 'o' path and head sizes in peftlab/arch.py"
            )
        n_rows, seq_len = ctx.shape[0], ctx.shape[1]
        gated = ctx.view(n_rows, seq_len, n_heads, d_head) * _gate_rows(gate, layer, n_rows, n_heads).to(ctx.dtype)
        gated = gated.view(n_rows, seq_len, n_heads * d_head)  # [N, T, H, d] -> [N, T, H·d]
        if key is None:
            return (gated, *rest), kwargs
        return args, {**kwargs, key: gated}

    return pre_hook


@contextmanager
def head_gate(model: nn.Module, gate: torch.Tensor) -> Iterator[torch.Tensor]:
    """Within the `with`, head (layer, head)'s output is multiplied by `gate[..., layer, head]`.

    Hooks the module at each layer's o-proj path as it is now (after PEFT/LoRA wrapping), and removes
    every hook in `finally`, also when the body raises. Bad paths or gate shapes raise PeftlabError.
    Yields the gate.
    """
    shape = head_shape(model)
    _check_gate(gate, shape.n_layers, shape.n_heads)
    handles = []
    try:
        for layer in range(shape.n_layers):
            module = layer_module(model, layer, "o")
            hook = _make_hook(gate, layer, shape.n_heads, shape.d_head)
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        yield gate
    finally:
        for handle in handles:
            handle.remove()


def ablation_gate(model: nn.Module, layer: int, head: int, dtype: torch.dtype = torch.float32,
                  device=None) -> torch.Tensor:
    """All ones except 0 at (`layer`, `head`): the gate that ablates one head."""
    gate = ones_gate(model, dtype=dtype, device=device)
    gate[layer, head] = 0.0
    return gate
