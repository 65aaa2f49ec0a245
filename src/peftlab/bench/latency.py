"""Inference latency of a trained model: median wall time of a forward pass, unmerged and merged.

    latency = median over `iters` timed `model(input_ids, attention_mask)` calls, after `warmup` untimed
    calls, on a fixed random batch [batch, seq_len] (seeded; all positions attended), under
    `torch.inference_mode()`, on the CPU with the current torch thread count.
The median (not the mean) because a busy machine adds one-sided outliers.

Merged: LoRA-family and IA3/VeRA models are merged into their base weights (PEFT `merge_and_unload`,
peftlab LoRA `merge_lora`) on a copy and timed again; `fft` and `bitfit` add nothing to merge; adapters and
prompt tuning cannot be merged (their extra computation stays at inference).
"""

from __future__ import annotations

import copy
import statistics
import time


def median_latency_ms(model, batch_size: int, seq_len: int, iters: int, warmup: int) -> float:
    """Median milliseconds of one forward pass over a seeded random [batch_size, seq_len] batch."""
    import torch

    vocab = int(getattr(model.config, "vocab_size", 1000))
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
    attention_mask = torch.ones_like(input_ids)
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            model(input_ids=input_ids, attention_mask=attention_mask)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def merged_copy(method, model):
    """(merged model, None) or (None, why there is no merged variant)."""
    from peft import PeftModel

    from peftlab.methods.lora import lora_modules, merge_lora

    if isinstance(model, PeftModel):
        if not getattr(method, "mergeable", True):
            return None, f"not mergeable: {method.name} adds computation at inference"
        return copy.deepcopy(model).merge_and_unload(), None
    if lora_modules(model):
        return merge_lora(copy.deepcopy(model)), None
    if method.name in ("fft", "bitfit"):
        return None, "nothing to merge: no modules added"
    return None, f"not mergeable: {method.name} adds computation at inference"


def measure_latency(method, model, batches: list[int], seq_len: int, iters: int, warmup: int) -> dict:
    """{"latency_b<B>_ms", "latency_b<B>_merged_ms" (None when not applicable), "merge_note"}."""
    out: dict = {}
    merged, note = merged_copy(method, model)
    for batch in batches:
        out[f"latency_b{batch}_ms"] = median_latency_ms(model, batch, seq_len, iters, warmup)
        out[f"latency_b{batch}_merged_ms"] = (median_latency_ms(merged, batch, seq_len, iters, warmup)
                                              if merged is not None else None)
    out["merge_note"] = note or "merged into the base weights"
    return out
