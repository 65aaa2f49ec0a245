"""Exact head importance, fast: the same numbers as the naive path with far fewer FLOPs.

Why it is exact: ablating head h of layer l (gate 0 on its slice of the o-proj input) changes
nothing before the o-proj of layer l. So, per batch:
  1. one recorded forward keeps each layer's call (masks, position encodings) and its input x_l
     (heads/layer_replay.py), plus the base loss and logits;
  2. per layer l, the attention core runs once (o-proj input ctx_l, shared by all heads of l);
  3. per head h: ctx_l with head h's d_head columns zeroed → the position-wise layer tail
     (o-proj, residual, norms, FFN; `ArchSpec.tail_kind/tail_paths`) → layers l+1 .. L-2 in full →
     the last layer's k/v on all positions but its q, attention and tail only at the position the
     classifier reads (`ArchSpec.read_position`; q and attention at the read rows where the self-check
     allows it, `layer_replay.READ_ROWS_ATTENTION`) → the model's own head and loss, run on the read
     column of the inputs only.
The o-proj of the ablated layer is affine, so its output with head h zeroed is o(ctx_l) − ctx_l[h] @ W_o[h]ᵀ:
o(ctx_l) once per layer and batch, then a rank-d_head correction per head (`_ablate`), instead of a copy of
ctx_l and a full o-proj per head (paired in process on 64 RTE rows: 0.96× the time). W_o is probed from the
module (LoRA/PEFT wrappers included) and used only where the module is affine and ablating head 0 through
it reproduces zeroing its columns (`_checked_o_affine`, on the layer's first batch).
All modules are the model's own (LoRA/PEFT wrappers included), called on the same inputs, so the
results equal the naive path up to float summation order (|ΔI| ~ 1e-7 in fp32). Rows, per-example
losses and their differences d_i are built by `heads/ablation.py`, the same code as the naive path.

Cost per head of layer l, in units of one layer on the full batch (MiniLM profile: tail ≈ 0.71,
q/k/v ≈ 0.19, attention ≈ 0.09): ≈ 0.71 (tail) + (L-2-l) full layers + ≈ 0.13 (last layer's k, v);
≈ 0 for l = L-1 — against L layers per head for naive. For 6 layers that is ≈ 2.5× fewer FLOPs
(≈ 2.4× with the whole last-layer attention core); for 12 layers ≈ 2.2×: the bound falls towards 2×
as L grows (a head of layer l still needs layers l..L-1, on average half the model). Measured ratios:
benchmarks/README.md.

Row chunks: every batch is replayed in consecutive chunks of ≤ CHUNK_TOKENS padded tokens, each trimmed
to its own longest row (`batches.split_rows`). Per-example results keep the subset order, and I changes
only by float summation order (|ΔI| ~ 1e-9 on MiniLM/RTE). The naive path, the reference, runs the
user's batches as given.

Memory: the layer inputs x_l of every batch are kept when they fit in `memory_mb`
(L · N · T · hidden floats); otherwise only the current layer's are kept and each layer is re-run
once per batch to advance them (one extra layer-forward per layer and batch).

Self-checks, before any row is produced: on every batch, each layer's input must be the previous
layer's output, no KV cache may be passed, and the machinery restarted at the last layer must
reproduce the real forward's logits; on the first batch also when restarted at layer L-2. If any check
fails (an unknown architecture, DeBERTa-v2 with a conv after layer 0, a classifier that pools several
positions), a warning is issued and the naive path computes the rows (`impl: "naive"`).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from peftlab.arch import head_shape
from peftlab.errors import PeftlabError
from peftlab.heads.ablation import HeadResult, SubsetScore, importance_row, iter_naive_importance, resolve_metric
from peftlab.heads.batches import (
    MetricFn,
    check_batches,
    measurement_mode,
    model_device,
    progress_bar,
    split_rows,
    to_device,
)
from peftlab.heads.layer_replay import BatchRecord, LayerReplay, OProjAffine, equal_up_to_rounding, take_rows


# Rows per replay call. The replay is GEMM-bound (profile: addmm ~80 % of self CPU), and smaller calls keep
# a layer's activations ([tokens, 4·hidden] FFN intermediate) in cache and carry less padding once each chunk
# is trimmed to its own longest row (subset batches are length-ordered). Measured on MiniLM-L6, 256 RTE dev
# rows in length order, batch 32, 2 threads, in-process fast sweep: see benchmarks/README.md (issue 12).
CHUNK_TOKENS = 1024


def _self_check(replay: LayerReplay, record: BatchRecord, from_earlier_layer: bool) -> list[str]:
    """Problems found when the replay machinery (no ablation) is compared with the real forward."""
    problems = list(record.problems)
    if problems:
        return problems
    last = replay.n_layers - 1
    if replay.read_rows:
        # The last layer at the read rows alone (layer_replay.READ_ROWS_ATTENTION) is an optimisation: where
        # it does not reproduce the real forward's last o-proj input at the read rows, the full last layer runs.
        try:
            rows = replay.read_ctx(record, record.layer_inputs[last], read_rows=True)
            replay.read_rows = equal_up_to_rounding(rows, take_rows(record.last_ctx, record.read))
        except Exception:  # noqa: BLE001 — an attention code path this trick does not fit; not an error
            replay.read_rows = False
    logits, _ = replay.forward_from(record, last, record.layer_inputs[last], record.last_ctx)
    if not equal_up_to_rounding(logits, record.logits):
        problems.append("restarting at the last layer does not reproduce the model's logits "
                        "(does the classifier read more than one position?)")
    if from_earlier_layer and last > 0:
        # Layer L-2 (or 0 when its input is not kept) exercises every other piece: a full-length tail,
        # replayed layers and the last layer's attention core.
        start = last - 1 if record.layer_inputs[last - 1] is not None else 0
        x = record.layer_inputs[start]
        logits, _ = replay.forward_from(record, start, x, replay.attention_ctx(start, x, record.calls[start]))
        if not equal_up_to_rounding(logits, record.logits):
            problems.append(f"restarting at layer {start} does not reproduce the model's logits")
    return problems


def _ablate(ctx: torch.Tensor, head: int, d_head: int, o_map: OProjAffine | None,
            o_full: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(o-proj input, o-proj output or None) of a layer with `head` ablated, for `LayerReplay.forward_from`.

    With the layer's o-proj as an affine map (o_map) and its output on the whole ctx (o_full):
    o(ctx with head h zeroed) = o_full − ctx[..., h] @ weight_t[h], a rank-d_head correction (1/n_heads of
    the o-proj's FLOPs) instead of a copy of ctx and a full o-proj per head. Otherwise ctx with the head's
    d_head columns zeroed.
    """
    if o_map is None:
        n_rows, seq_len = ctx.shape[:2]
        ablated = ctx.clone()
        ablated.view(n_rows, seq_len, -1, d_head)[:, :, head] = 0  # [B, T, H·d] as [B, T, H, d]
        return ablated, None
    columns = slice(head * d_head, (head + 1) * d_head)
    o_2d, ctx_2d = o_full.reshape(-1, o_full.shape[-1]), ctx.reshape(-1, ctx.shape[-1])  # [B·T, hidden], [B·T, H·d]
    o_ablated = torch.addmm(o_2d, ctx_2d[:, columns], o_map.weight_t[columns], alpha=-1)  # [B·T, hidden]
    return ctx, o_ablated.view(o_full.shape)


def _checked_o_affine(replay: LayerReplay, record: BatchRecord, layer: int, x: torch.Tensor,
                      ctx: torch.Tensor, o_full: torch.Tensor) -> OProjAffine | None:
    """`replay.o_affine(layer)` if ablating head 0 through it gives the same logits as zeroing its columns.

    `o_full` [B, T, hidden]: the o-proj module's output on `ctx`.
    """
    o_map = replay.o_affine(layer, ctx, o_full)
    if o_map is None:
        return None
    d_head = replay.shape.d_head
    try:
        reference, _ = replay.forward_from(record, layer, x, *_ablate(ctx, 0, d_head, None, None))
        corrected, _ = replay.forward_from(record, layer, x, *_ablate(ctx, 0, d_head, o_map, o_full))
    except PeftlabError:  # the layer's tail never called its o-proj module: keep zeroing columns
        return None
    return o_map if equal_up_to_rounding(corrected, reference) else None


def _layer_input_bytes(model: nn.Module, batches: Sequence[dict], n_layers: int) -> int:
    """Bytes of every layer's input for every batch: L · Σ_b (B_b · T_b) · hidden · element size."""
    hidden = head_shape(model).hidden
    element = next(model.parameters()).element_size()
    return sum(int(batch["input_ids"].numel()) for batch in batches) * hidden * n_layers * element


def iter_fast_importance(model: nn.Module, batches: Sequence[dict], metric_fn: MetricFn | None = None,
                         metric_name: str | None = None, done: Iterable[tuple[int, int]] = (),
                         progress: bool = True, on_progress: Callable[[int, int], None] | None = None,
                         memory_mb: float = 1024.0, task=None,
                         chunk_tokens: int | None = CHUNK_TOKENS) -> Iterator[HeadResult]:
    """Yield a `HeadResult` (row and d_i, heads/ablation.py) per head not in `done`, in (layer, head) order.

    Rows of layer l are yielded once layer l is finished on every batch. Each batch is processed in
    consecutive row chunks of ≤ `chunk_tokens` padded tokens (`batches.split_rows`; None: whole batches).
    """
    check_batches(batches)
    chunks = list(batches) if not chunk_tokens else [chunk for batch in batches
                                                      for chunk in split_rows(batch, chunk_tokens)]
    name, fn = resolve_metric(model, metric_fn, metric_name, task)
    done = set(done)
    replay = LayerReplay(model)
    n_layers, n_heads, d_head = replay.n_layers, replay.shape.n_heads, replay.shape.d_head
    todo = {layer: [head for head in range(n_heads) if (layer, head) not in done] for layer in range(n_layers)}
    n_todo = sum(len(heads) for heads in todo.values())

    def fall_back(reason: str) -> Iterator[HeadResult]:
        warnings.warn(f"fast exact importance is not exact for this model ({reason}); using the naive path",
                      stacklevel=3)
        return iter_naive_importance(model, batches, metric_fn, metric_name, done, progress, on_progress, task)

    if replay.unsupported:
        yield from fall_back(replay.unsupported)
        return

    keep_inputs = _layer_input_bytes(model, chunks, n_layers) <= memory_mb * 2**20
    device = model_device(model)
    # One bar over both phases (base pass: one unit per batch; sweep: one per batch and head), so
    # `on_progress(done, total)` counts up to a single total. Closed in `finally`, also when the caller
    # stops iterating early.
    bar = contextlib.ExitStack()
    advance = bar.enter_context(progress_bar(len(chunks) * (1 + n_todo), "importance (fast)", progress,
                                             on_progress))
    try:
        with measurement_mode(model), torch.no_grad():
            # 1. Record every batch once (the base pass) and check that replaying reproduces it.
            records: list[BatchRecord] = []
            base = SubsetScore()
            problems: list[str] = []
            for index, batch in enumerate(chunks):
                record = replay.record(to_device(batch, device), keep_inputs)
                problems = _self_check(replay, record, from_earlier_layer=index == 0)
                if problems:
                    break
                record.last_ctx = None  # only needed by the self-check
                if not keep_inputs:
                    record.layer_inputs[n_layers - 1] = None
                base.add(record.loss, record.logits, record.labels)
                records.append(record)
                advance(1)
        if problems:
            bar.close()
            yield from fall_back("; ".join(problems))
            return

        with measurement_mode(model), torch.no_grad():
            # 2. Layer by layer: one attention core per batch, then every head of the layer.
            current = [record.layer_inputs[0] for record in records]  # x_l of each batch when inputs are not kept
            o_maps: dict[int, OProjAffine | None] = {}  # per layer, decided on its first batch
            for layer in range(n_layers):
                heads = todo[layer]
                scores = {head: SubsetScore() for head in heads}
                for index, record in enumerate(records):
                    call = record.calls[layer]
                    if keep_inputs:
                        x = record.layer_inputs[layer]
                        ctx = replay.attention_ctx(layer, x, call) if heads else None
                    else:
                        x = current[index]
                        current[index], ctx = replay.run_layer(layer, x, call, with_ctx=True)
                    # The o-proj correction: decided on the layer's first batch, then used on every batch.
                    o_full = None
                    if heads and layer < n_layers - 1 and o_maps.get(layer, True) is not None:
                        o_full = replay.o_module(layer)(ctx)  # [B, T, hidden]
                        if layer not in o_maps:
                            o_maps[layer] = _checked_o_affine(replay, record, layer, x, ctx, o_full)
                    o_map = o_maps.get(layer)
                    for head in heads:
                        logits, loss = replay.forward_from(record, layer, x, *_ablate(ctx, head, d_head, o_map, o_full))
                        scores[head].add(loss, logits, record.labels)
                        advance(1)
                    if keep_inputs:
                        record.layer_inputs[layer] = None  # not needed any more; free as we go
                for head in heads:
                    yield importance_row(layer, head, base, scores[head], name, fn, "fast")
    finally:
        bar.close()
