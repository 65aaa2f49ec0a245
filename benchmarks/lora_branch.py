"""LoRA-specific cost of one attention layer's forward + backward, per dropout / sharing setting.

    python benchmarks/lora_branch.py [--reps 40] [--threads 1]

Layer 0 of the packaged MiniLM-L6 with LoRA r=8 on q,k,v,o, input [16, 128, 384] that requires
grad (as every layer above the embeddings sees in LoRA training), train mode. Each variant's time
minus that of the same layer with frozen A and B ("no LoRA grads": the base layer's own forward
and input-gradient work) is the LoRA overhead; reported as the median of paired per-repetition
differences. With one thread the clock is the thread's CPU time (robust to other processes);
otherwise wall time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from types import SimpleNamespace

import torch

VARIANTS = {  # label: (method, dropout, lora cfg overrides)
    "own, p=0": ("lora", 0.0, {"lora_share_qkv": False}),
    "own, p=0, shared q/k/v": ("lora", 0.0, {}),
    "own, nn.Dropout (as PEFT)": ("lora", 0.05, {"lora_fast_dropout": False, "lora_share_qkv": False}),
    "own, FastDropout": ("lora", 0.05, {"lora_share_qkv": False}),
    "own, FastDropout + shared q/k/v (default)": ("lora", 0.05, {}),
    "PEFT LoRA": ("peft-lora", 0.05, {}),
}


def attention_layer(base, method_name: str, dropout: float, overrides: dict):
    from peftlab.arch import find_layers
    from peftlab.methods import get_method

    cfg = SimpleNamespace(rank=8, alpha=16.0, dropout=dropout, targets="q,k,v,o", seed=1, model=None, **overrides)
    model = get_method(method_name).apply(copy.deepcopy(base), cfg).train()
    return find_layers(model)[1][0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    from peftlab.methods.lora import lora_modules
    from peftlab.models import load_model

    base = load_model(None, num_labels=2)
    layers = {label: attention_layer(base, *spec) for label, spec in VARIANTS.items()}
    frozen = attention_layer(base, "lora", 0.0, {"lora_share_qkv": False})
    for _, module in lora_modules(frozen):
        module.lora_A.requires_grad_(False)
        module.lora_B.requires_grad_(False)
    layers["no LoRA grads (reference)"] = frozen
    x = torch.randn(16, 128, 384, requires_grad=True)  # [batch, seq, hidden]
    times: dict[str, list[float]] = {label: [] for label in layers}
    for rep in range(args.reps + 1):
        for label, layer in layers.items():
            torch.manual_seed(rep)
            start = clock()
            out = layer(x)
            (out[0] if isinstance(out, tuple) else out).sum().backward()
            if rep:  # the first repetition is warm-up
                times[label].append(clock() - start)
    ref = times["no LoRA grads (reference)"]
    print(f"threads={args.threads}, {args.reps} reps, clock={'thread CPU' if args.threads == 1 else 'wall'}")
    for label, t in times.items():
        extra = [a - b for a, b in zip(t, ref)]
        print(f"{label:44s} median {1e3 * statistics.median(t):7.1f} ms   "
              f"LoRA overhead {1e3 * statistics.median(extra):6.1f} ms")


if __name__ == "__main__":
    main()
