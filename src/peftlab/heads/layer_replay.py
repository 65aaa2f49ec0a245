"""Re-running a model's transformer layers one at a time, so an ablation can start inside layer l.

Used by `importance_fast.py`. Everything here runs the Hugging Face modules themselves; nothing of
an attention implementation is re-written:

- `record(batch)` runs the model once with hooks and keeps, per layer, the exact call it received
  (positional + keyword arguments: masks, rotary / relative position embeddings, ...) and the
  structure of what it returned. Any layer can then be re-run on other hidden states with
  `LayerCall.invoke(layer, hidden)`, under the model's own masks and position encodings.
- `attention_ctx` runs a layer only up to its o-proj input (a pre-hook raises `_StopForward`), i.e.
  the attention core (QKV, scores, softmax·V) but none of o-proj / FFN.
- `tail` is the position-wise rest of a layer given the o-proj input, with the modules named in the
  family's `ArchSpec.tail_kind / tail_paths` (the only architecture-specific part, as data).
- `head` runs the model's own forward with every layer swapped for a stub that returns given final
  hidden states, so final norms, poolers, classifier and loss are the model's own.

Assumptions, each checked on every batch by `record` + the self-checks in `importance_fast.py`:
eval mode (dropout off), the output of layer k is the input of layer k+1 unchanged (not so for
DeBERTa-v2 with `conv_kernel_size > 0`, which adds a conv after layer 0), no KV cache, and the
classifier reads one position per row (`ArchSpec.read_position`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from peftlab.arch import find_layers, get_arch, get_submodule, head_shape
from peftlab.errors import PeftlabError


class _StopForward(Exception):
    """Raised by a pre-hook on the o-proj to end a layer's forward once its input is known."""

    def __init__(self, ctx: torch.Tensor):
        super().__init__("o-proj reached")
        self.ctx = ctx


def _first_input(args: tuple, kwargs: dict, keys: tuple[str, ...]) -> tuple[torch.Tensor, str | None]:
    """(tensor, keyword or None if positional) of a module call's main input."""
    if args:
        return args[0], None
    for key in keys:
        if key in kwargs:
            return kwargs[key], key
    raise PeftlabError(
        f"could not find the main input among keywords {sorted(kwargs)}; check the paths in peftlab/arch.py"
    )


@dataclass
class LayerCall:
    """One layer's recorded call with the hidden states taken out, and the shape of its output."""

    rest_args: tuple  # positional arguments after the hidden states
    kwargs: dict  # keyword arguments (without the hidden states)
    hidden_key: str | None  # None: hidden states were the first positional argument
    output_tail: tuple | None = None  # None: the layer returns a tensor; else the tuple's items after [0]

    def invoke(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Run `layer` on `hidden` with the recorded arguments; returns its output hidden states."""
        if self.hidden_key is None:
            output = layer(hidden, *self.rest_args, **self.kwargs)
        else:
            output = layer(*self.rest_args, **{**self.kwargs, self.hidden_key: hidden})
        return output if isinstance(output, torch.Tensor) else output[0]

    def wrap(self, hidden: torch.Tensor):
        """`hidden` in the structure the layer returns (tensor, or tuple with the recorded extras)."""
        return hidden if self.output_tail is None else (hidden, *self.output_tail)


@dataclass
class OProjAffine:
    """A layer's o-proj as an affine map: o(c) = c @ weight_t + bias (see `LayerReplay.o_affine`)."""

    weight_t: torch.Tensor  # [n_heads·d_head, hidden]
    bias: torch.Tensor  # [hidden]


def equal_up_to_rounding(fast: torch.Tensor, reference: torch.Tensor) -> bool:
    """Equal up to float rounding: |a - b| ≤ 1000·eps·(1 + |b|), eps of the dtype (fp32: 1.2e-4 relative)."""
    eps = torch.finfo(reference.dtype).eps
    return bool(torch.allclose(fast, reference, rtol=1000 * eps, atol=1000 * eps))


@dataclass
class BatchRecord:
    """What one recorded forward pass of a batch keeps."""

    inputs: dict  # model inputs on the model's device, labels included
    calls: list[LayerCall]
    layer_inputs: list[torch.Tensor | None]  # [B, T, hidden] entering each layer (None when not kept)
    last_ctx: torch.Tensor  # [B, T, n_heads·d_head] o-proj input of the last layer
    read: torch.Tensor | None  # [B] position the classifier reads in each row; None = every position (pooling=mean)
    logits: torch.Tensor
    loss: torch.Tensor
    problems: list[str] = field(default_factory=list)
    head_inputs: dict = field(default_factory=dict)  # `inputs` with every [B, T] tensor cut to its read column

    @property
    def labels(self) -> torch.Tensor:
        return self.inputs["labels"]


# -- the last layer at the read rows only ---------------------------------------------------------------
#
# The classifier reads one row of the last layer, and an attention output row t depends only on the query
# q_t (and on all keys and values). So in the last layer the query projection and the attention need only
# the read rows: a hook gives the q module the read rows [B, 1, hidden] and hands back its output expanded
# (stride 0) to [B, T, ·], and the attention function, reached through transformers' own attention
# registry (`AttentionInterface`) under a key of ours, attends with the read queries alone and expands its
# output back. The other rows of the last layer's o-proj input are then copies of the read row; nothing
# reads them. Saves the q matmul and T-1 of T attention rows of the last layer, per head. Used only where
# the self-check in importance_fast.py finds it reproduces the full computation.

READ_ROWS_ATTENTION = "peftlab_read_rows"
_read_rows_state: dict = {}  # while a read-rows call runs: "impl" (the model's attention key), "read" [B]


def _read_rows_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's attention function on the read rows' queries: query [B, n_heads, T, d_head] → [B, n_heads, 1, d_head].

    Returns the function's output [B, 1, n_heads, d_head] expanded to [B, T, n_heads, d_head], and its weights.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    function = ALL_ATTENTION_FUNCTIONS[_read_rows_state["impl"]]
    read = _read_rows_state["read"]
    n_rows, seq_len = query.shape[0], query.shape[2]
    if kwargs.get("position_bias") is not None:  # a bias over all query rows: keep the full computation
        return function(module, query, key, value, attention_mask, **kwargs)
    rows = torch.arange(n_rows, device=query.device)
    query_rows = query[rows, :, read].unsqueeze(2)  # [B, H, T, d] -> [B, H, d] -> [B, H, 1, d]
    mask = attention_mask
    if mask is not None and mask.dim() == 4 and mask.shape[-2] == seq_len:
        mask = mask.expand(n_rows, -1, -1, -1)[rows, :, read].unsqueeze(2)  # [B, 1|H, T, Tk] -> [B, 1|H, 1, Tk]
    output, weights = function(module, query_rows, key, value, mask, **kwargs)
    if output.shape[:2] != (n_rows, 1):
        raise PeftlabError(f"attention '{_read_rows_state['impl']}' returned {tuple(output.shape)}, expected "
                           f"[{n_rows}, 1, n_heads, d_head]")
    return output.expand(n_rows, seq_len, *output.shape[2:]), weights  # [B, 1, H, d] -> [B, T, H, d] (stride 0)


def _register_read_rows_attention() -> None:
    from transformers.modeling_utils import AttentionInterface

    if READ_ROWS_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(READ_ROWS_ATTENTION, _read_rows_attention)


class _FixedOutputLayer(nn.Module):
    """Stands in for a layer: ignores its inputs and returns `output`; other attributes come from the layer."""

    def __init__(self, original: nn.Module, output):
        super().__init__()
        object.__setattr__(self, "_original", original)  # not registered: it is not our child module
        object.__setattr__(self, "_output", output)
        self.n_calls = 0  # how often it stood in (`LayerReplay.tail` checks its o-proj stub ran once)

    def forward(self, *args, **kwargs):
        self.n_calls += 1
        return self._output

    def __getattr__(self, name):
        # Some models read layer attributes in their loop (e.g. an attention type); answer for the layer.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)


def read_positions(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor | None:
    """[B] position whose final hidden state the classifier reads; None when it reads every position.

    "first": 0 ([CLS]). "last": the rightmost token that is not `pad_token_id`, the rule of HF's
    decoder sequence classifiers; the last position when the model has no pad token. A model with
    pooling=mean (peftlab.pooling) reads the masked mean of all positions: None.
    """
    from peftlab.pooling import pooling_of

    if pooling_of(model) == "mean":
        return None
    n_rows, seq_len = input_ids.shape
    if get_arch(model).read_position == "first":
        return torch.zeros(n_rows, dtype=torch.long, device=input_ids.device)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    pad_id = getattr(config, "pad_token_id", None)
    if pad_id is None:
        return torch.full((n_rows,), seq_len - 1, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(seq_len, device=input_ids.device)
    return (positions * (input_ids != pad_id)).argmax(-1)


def take_rows(values: torch.Tensor, read: torch.Tensor | None) -> torch.Tensor:
    """values[b, read[b]] for every row b: [B, T, ...] -> [B, 1, ...]; `read` None (every position): `values`."""
    if read is None:
        return values
    return values[torch.arange(values.shape[0], device=values.device), read].unsqueeze(1)


def read_column(inputs: dict, read: torch.Tensor | None) -> dict:
    """`inputs` with every [B, T] tensor (ids, masks, token types, positions) cut to [B, 1] at `read`
    (`read` None: every position is read, `inputs` as they are)."""
    if read is None:
        return inputs
    n_rows, seq_len = inputs["input_ids"].shape
    return {key: take_rows(value, read) if isinstance(value, torch.Tensor) and value.shape[:2] == (n_rows, seq_len)
            and key != "labels" else value for key, value in inputs.items()}


class LayerReplay:
    """Runs single layers, layer tails and the model head of `model` (eval mode, no grad)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.spec = get_arch(model)
        self.shape = head_shape(model)
        _, self.layers = find_layers(model)
        self.n_layers = len(self.layers)
        self.unsupported: str | None = None
        if self.spec.tail_kind not in ("post_ln", "pre_ln") or len(self.spec.tail_paths) != 3:
            self.unsupported = f"ArchSpec '{self.spec.family}' has no layer tail (tail_kind/tail_paths)"
        # Last layer at the read rows only (see READ_ROWS_ATTENTION): switched off by `importance_fast`
        # when its self-check does not reproduce the full last layer.
        # A model that reads every position (pooling=mean) needs the whole last layer.
        from peftlab.pooling import pooling_of

        self.read_rows = pooling_of(model) != "mean" and self._read_rows_attention_module() is not None

    def _read_rows_attention_module(self) -> nn.Module | None:
        """The last layer's attention module (parent of q) when its attention can run on the read rows alone.

        Needs a separate q module, a non-causal attention (a causal one may rely on `is_causal` instead of
        a mask) and an attention function from transformers' registry (`config._attn_implementation`).
        """
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        q_path = self.spec.paths.get("q", ("",))[0]
        if self.spec.fused_qkv or "." not in q_path:
            return None
        try:
            attention = self.layers[-1].get_submodule(q_path.rsplit(".", 1)[0])
        except AttributeError:
            return None
        config = getattr(attention, "config", None)
        impl = getattr(config, "_attn_implementation", None)
        if getattr(attention, "is_causal", False) or not isinstance(impl, str) or impl == READ_ROWS_ATTENTION \
                or impl not in ALL_ATTENTION_FUNCTIONS:
            return None
        return attention

    def o_module(self, layer: int) -> nn.Module:
        return get_submodule(self.layers[layer], self.spec.o_path)

    # -- recording ---------------------------------------------------------------------------------

    def record(self, inputs: dict, keep_layer_inputs: bool) -> BatchRecord:
        """Run the model on `inputs` once, keeping each layer's call (and input if `keep_layer_inputs`)."""
        from transformers.cache_utils import Cache

        n_layers = self.n_layers
        calls: list[LayerCall | None] = [None] * n_layers
        layer_inputs: list[torch.Tensor | None] = [None] * n_layers
        last_ctx: list[torch.Tensor] = []
        previous_output: list[torch.Tensor | None] = [None]
        problems: list[str] = []

        def before(layer: int):
            def hook(module, args, kwargs):
                hidden, key = _first_input(args, kwargs, ("hidden_states",))
                rest = args[1:] if key is None else args
                rest_kwargs = {k: v for k, v in kwargs.items() if k != key}
                if any(isinstance(v, Cache) for v in (*rest, *rest_kwargs.values())):
                    problems.append(f"layer {layer} gets a KV cache")
                calls[layer] = LayerCall(rest, rest_kwargs, key)
                if layer > 0 and not (hidden is previous_output[0] or torch.equal(hidden, previous_output[0])):
                    problems.append(f"the input of layer {layer} is not the output of layer {layer - 1}")
                if keep_layer_inputs or layer in (0, n_layers - 1):
                    layer_inputs[layer] = hidden
            return hook

        def after(layer: int):
            def hook(module, args, kwargs, output):
                if isinstance(output, torch.Tensor):
                    previous_output[0] = output
                elif isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                    previous_output[0] = output[0]
                    calls[layer].output_tail = tuple(output[1:])
                else:
                    problems.append(f"layer {layer} returns {type(output).__name__}, not a tensor or tuple")
            return hook

        def last_o_input(module, args, kwargs):
            last_ctx.append(_first_input(args, kwargs, ("input", "x", "hidden_states"))[0])

        handles = []
        try:
            for layer, module in enumerate(self.layers):
                handles.append(module.register_forward_pre_hook(before(layer), with_kwargs=True))
                handles.append(module.register_forward_hook(after(layer), with_kwargs=True))
            handles.append(self.o_module(n_layers - 1).register_forward_pre_hook(last_o_input, with_kwargs=True))
            outputs = self.model(**inputs)
        finally:
            for handle in handles:
                handle.remove()
        if any(call is None for call in calls) or len(last_ctx) != 1:
            problems.append("not every layer ran exactly once")
        read = read_positions(self.model, inputs["input_ids"])
        return BatchRecord(inputs=inputs, calls=calls, layer_inputs=layer_inputs,
                           last_ctx=last_ctx[0] if last_ctx else None, read=read,
                           logits=outputs.logits, loss=outputs.loss, problems=problems,
                           head_inputs=read_column(inputs, read))

    # -- pieces of a layer -------------------------------------------------------------------------

    def run_layer(self, layer: int, hidden: torch.Tensor, call: LayerCall,
                  with_ctx: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output hidden states, o-proj input if `with_ctx`) of a full run of `layer` on `hidden`."""
        seen: list[torch.Tensor] = []
        handle = None
        if with_ctx:
            def keep(module, args, kwargs):
                seen.append(_first_input(args, kwargs, ("input", "x", "hidden_states"))[0])
            handle = self.o_module(layer).register_forward_pre_hook(keep, with_kwargs=True)
        try:
            output = call.invoke(self.layers[layer], hidden)
        finally:
            if handle is not None:
                handle.remove()
        return output, (seen[0] if with_ctx else None)

    def attention_ctx(self, layer: int, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
        """[B, T, n_heads·d_head] o-proj input of `layer` on `hidden`; stops before o-proj and the FFN."""
        def stop(module, args, kwargs):
            raise _StopForward(_first_input(args, kwargs, ("input", "x", "hidden_states"))[0])

        handle = self.o_module(layer).register_forward_pre_hook(stop, with_kwargs=True)
        try:
            call.invoke(self.layers[layer], hidden)
        except _StopForward as stopped:
            return stopped.ctx
        finally:
            handle.remove()
        raise PeftlabError(f"layer {layer} never called its o-projection; check the 'o' path in peftlab/arch.py")

    def o_affine(self, layer: int, ctx: torch.Tensor, o_ctx: torch.Tensor) -> OProjAffine | None:
        """The o-proj of `layer` as `o(c) = c @ weight_t + bias`, read off the module; None when it is not affine.

        Probed, not read from `.weight`, so LoRA / PEFT wrappers (unmerged: W + s·B·A) and GPT-2's Conv1D
        need no special case: bias = o(0), weight_t = o(I) − o(0) ([n_heads·d_head, hidden]). Accepted only
        when o is affine on the real o-proj input `ctx` (its output `o_ctx` = ctx @ weight_t + bias) and on
        large random inputs (o(a + b) + o(0) = o(a) + o(b)), which an activation inside the module would break.
        """
        module = self.o_module(layer)
        d_in = ctx.shape[-1]
        eye = torch.eye(d_in, dtype=ctx.dtype, device=ctx.device).unsqueeze(0)  # [1, d_in, d_in]
        zero = torch.zeros(1, 1, d_in, dtype=ctx.dtype, device=ctx.device)
        try:
            bias = module(zero)[0, 0]  # [hidden]
            weight_t = module(eye)[0] - bias  # [d_in, hidden]
            scale = 10 * float(ctx.abs().max()) + 1
            generator = torch.Generator(device=ctx.device).manual_seed(0)
            a, b = (scale * torch.randn(1, 8, d_in, generator=generator, dtype=ctx.dtype, device=ctx.device)
                    for _ in range(2))
            affine = (equal_up_to_rounding(o_ctx, ctx @ weight_t + bias)
                      and equal_up_to_rounding(module(a + b) + bias, module(a) + module(b)))
        except Exception:  # noqa: BLE001 — a module this probe does not fit: keep the plain o-proj
            return None
        return OProjAffine(weight_t, bias) if affine else None

    def tail(self, layer: int, x: torch.Tensor, ctx: torch.Tensor, o_output: torch.Tensor | None = None) -> torch.Tensor:
        """Layer output from its input `x` [B, T', hidden] and o-proj input `ctx` [B, T', n_heads·d_head].

        post_ln (BERT family): a = attention.output(ctx, x) = LN(W_o·ctx + x); out = output(intermediate(a), a)
        pre_ln (LLaMA, GPT-2): h = x + W_o·ctx;  out = h + mlp(norm(h))
        Position-wise, so T' may be a subset of positions (the read row only). With `o_output` [B, T', hidden]
        (W_o·ctx computed by the caller) the o-proj module is swapped for a stub returning it.
        """
        module = self.layers[layer]
        if o_output is None:
            return self._tail(module, x, ctx)
        original = get_submodule(module, self.spec.o_path)
        stub = _FixedOutputLayer(original, o_output)
        module.set_submodule(self.spec.o_path, stub)
        try:
            output = self._tail(module, x, ctx)
        finally:
            module.set_submodule(self.spec.o_path, original)
        if stub.n_calls != 1:
            raise PeftlabError(f"layer {layer}'s tail did not call its o-projection '{self.spec.o_path}' once")
        return output

    def _tail(self, module: nn.Module, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        first, second, third = (get_submodule(module, path) for path in self.spec.tail_paths)
        if self.spec.tail_kind == "post_ln":
            attention_output = first(ctx, x)
            return third(second(attention_output), attention_output)
        hidden = x + first(ctx)
        return hidden + third(second(hidden))

    # -- the model head ----------------------------------------------------------------------------

    def head(self, record: BatchRecord, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) of the model whose last layer outputs `rows` [B, 1, hidden] at the read positions.

        The model's own forward runs on the read column of the inputs alone (`head_inputs`: every [B, T]
        input cut to [B, 1]), with every layer swapped for a stub returning `rows`: embeddings and masks
        then cost 1/T of a full-width call (profile: ~15 ms per head and batch at T = 128). Exact when the
        classifier reads only the read position — checked by the self-checks in importance_fast.py, which
        compare with a real forward pass.
        """
        originals = list(self.layers)
        try:
            for layer, original in enumerate(originals):
                self.layers[layer] = _FixedOutputLayer(original, record.calls[layer].wrap(rows))
            outputs = self.model(**record.head_inputs)
        finally:
            for layer, original in enumerate(originals):
                self.layers[layer] = original
        return outputs.logits, outputs.loss

    def forward_from(self, record: BatchRecord, layer: int, x: torch.Tensor, ctx: torch.Tensor,
                     o_output: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) when layer `layer` gets input `x` and o-proj input `ctx` (e.g. with a head zeroed).

        Layers after `layer` run in full except the last, of which only the attention core runs on
        all positions and the tail on the read position alone. `o_output`: the o-proj output of `ctx`,
        when the caller has it (see `tail`; not for the last layer, whose tail runs at the read rows).
        """
        last = self.n_layers - 1
        if layer == last:
            rows = self.tail(last, take_rows(x, record.read), take_rows(ctx, record.read))
            return self.head(record, rows)
        hidden = self.tail(layer, x, ctx, o_output)
        for later in range(layer + 1, last):
            hidden, _ = self.run_layer(later, hidden, record.calls[later])
        rows = self.tail(last, take_rows(hidden, record.read), self.read_ctx(record, hidden))
        return self.head(record, rows)

    def read_ctx(self, record: BatchRecord, hidden: torch.Tensor, read_rows: bool | None = None) -> torch.Tensor:
        """[B, 1, n_heads·d_head] o-proj input of the last layer at the read rows, given its input `hidden`.

        With `read_rows` (default: `self.read_rows`) q and the attention run for the read rows alone.
        """
        last = self.n_layers - 1
        if not (self.read_rows if read_rows is None else read_rows):
            return take_rows(self.attention_ctx(last, hidden, record.calls[last]), record.read)
        attention = self._read_rows_attention_module()
        q_module = get_submodule(self.layers[last], self.spec.paths["q"][0])
        n_rows, seq_len = hidden.shape[:2]
        pending = [True]  # the hooks act once: on the q projection of the hidden states

        def q_rows(module, args, kwargs):
            if pending[0] and args and tuple(args[0].shape[:2]) == (n_rows, seq_len):
                return (take_rows(args[0], record.read), *args[1:]), kwargs  # [B, T, hidden] -> [B, 1, hidden]
            return None

        def q_expand(module, args, kwargs, output):
            if pending[0] and tuple(output.shape[:2]) == (n_rows, 1):
                pending[0] = False
                return output.expand(n_rows, seq_len, *output.shape[2:])  # [B, 1, ·] -> [B, T, ·] (stride 0)
            return None

        _register_read_rows_attention()
        config = attention.config
        impl = config._attn_implementation
        handles = [q_module.register_forward_pre_hook(q_rows, with_kwargs=True),
                   q_module.register_forward_hook(q_expand, with_kwargs=True)]
        _read_rows_state.update(impl=impl, read=record.read)
        config._attn_implementation_internal = READ_ROWS_ATTENTION  # this config only, not its sub-configs
        try:
            ctx = self.attention_ctx(last, hidden, record.calls[last])
        finally:
            config._attn_implementation_internal = impl
            _read_rows_state.clear()
            for handle in handles:
                handle.remove()
        return take_rows(ctx, record.read)
