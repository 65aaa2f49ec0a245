"""Inference latency of the base model vs own LoRA and PEFT LoRA, unmerged and merged.

    python benchmarks/latency.py [--reps 20] [--batch-sizes 1 8] [--threads 2] [--methods dora,rslora,pissa,vera,ia3]

One process, the packaged all-MiniLM-L6-v2 in eval mode under `torch.inference_mode`, real RTE
pairs padded to --max-len. Variants: base, own LoRA unmerged / merged (`merge_lora`, wrappers
stay and call the base layer only), PEFT LoRA unmerged / merged (`merge_adapter`, same idea).
Every repetition runs all variants in a rotating order; the table shows medians and the median of
paired ratios vs base. Goal: merged within 5 % of base.
`--methods`: the other LoRA-family / rescaling methods of `peftlab bench` (PEFT), each unmerged and merged
(`merge_and_unload`: the wrappers are gone, plain nn.Linear again); their Δlogit column compares merged with
unmerged of the same method (the merge must not change the function); LoRA rows compare with own LoRA unmerged.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import DEFAULT_DATA, rte_pairs  # noqa: E402  (same data reader as the training benchmark)


def build_variants(rank: int, targets: str) -> dict:
    """{label: eval-mode model}; LoRA B is random so merging really changes the weights."""
    from types import SimpleNamespace

    from peftlab.methods import get_method
    from peftlab.methods.lora import lora_modules, merge_lora
    from peftlab.methods.peft_lora import peft_lora_layers
    from peftlab.models import load_model

    base = load_model(None, num_labels=2).eval()
    cfg = SimpleNamespace(rank=rank, alpha=2.0 * rank, dropout=0.05, targets=targets, seed=1, model=None)
    ours = get_method("lora").apply(copy.deepcopy(base), cfg).eval()
    peft = get_method("peft-lora").apply(copy.deepcopy(base), cfg).eval()
    with torch.no_grad():
        peft_layers = dict(peft_lora_layers(peft))
        for name, module in lora_modules(ours):
            module.lora_B.normal_(0, 0.02)
            peft_layers[name].lora_A["default"].weight.copy_(module.lora_A)
            peft_layers[name].lora_B["default"].weight.copy_(module.lora_B)
    ours_merged = merge_lora(copy.deepcopy(ours))
    peft_merged = copy.deepcopy(peft)
    peft_merged.base_model.merge_adapter()
    return {"base": base, "own LoRA": ours, "own LoRA merged": ours_merged,
            "PEFT LoRA": peft, "PEFT LoRA merged": peft_merged}


def build_method_variants(base, methods: list[str], rank: int, targets: str) -> dict:
    """{"<method>": unmerged, "<method> merged": merged} for PEFT methods of the bench (dora, vera, ia3, ...)."""
    from types import SimpleNamespace

    from peftlab.methods import get_method

    cfg = SimpleNamespace(rank=rank, alpha=2.0 * rank, dropout=0.05, targets=targets, seed=1, model=None)
    out = {}
    for name in methods:
        model = get_method(name).apply(copy.deepcopy(base), cfg).eval()
        with torch.no_grad():  # move the trainable update off its init so merging really changes weights
            g = torch.Generator().manual_seed(2)
            for pname, param in model.named_parameters():
                if param.requires_grad and "classifier" not in pname:
                    param.add_(torch.randn(param.shape, generator=g) * 0.02)
        out[name] = model
        out[f"{name} merged"] = copy.deepcopy(model).merge_and_unload().eval()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="paired repetitions per batch size after warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="q,k,v,o")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--methods", default="", help="also these PEFT methods, unmerged and merged, e.g. "
                        "dora,rslora,pissa,vera,ia3")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from rich.console import Console
    from rich.table import Table

    from peftlab.models import load_tokenizer

    tokenizer = load_tokenizer(None)
    variants = build_variants(args.rank, args.targets)
    extra = [m.strip() for m in args.methods.split(",") if m.strip()]
    variants.update(build_method_variants(variants["base"], extra, args.rank, args.targets))
    labels = list(variants)
    text_a, text_b, _ = rte_pairs(args.data_dir, max(args.batch_sizes))
    console = Console(width=120)  # wide enough that no row wraps
    print(f"MiniLM-L6, RTE pairs padded to {args.max_len}, r={args.rank} targets={args.targets}, "
          f"threads={torch.get_num_threads()}, {args.warmup} warm-up + {args.reps} reps", file=sys.stderr)
    table = Table(title="inference latency (ms per batch), median; ratio = median of paired ratios vs base")
    for col in ("batch", "variant", "median ms", "min ms", "ratio vs base", "max |Δlogit| vs ref"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for batch_size in args.batch_sizes:
        enc = tokenizer(text_a[:batch_size], text_b[:batch_size], padding="max_length", truncation=True,
                        max_length=args.max_len, return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        times: dict[str, list[float]] = {label: [] for label in labels}
        with torch.inference_mode():
            logits = {label: model(**batch).logits for label, model in variants.items()}
            for rep in range(args.warmup + args.reps):
                shift = rep % len(labels)
                for label in labels[shift:] + labels[:shift]:  # rotate who goes first
                    start = time.perf_counter()
                    variants[label](**batch)
                    if rep >= args.warmup:
                        times[label].append(time.perf_counter() - start)
        for label in labels:
            t = times[label]
            ratio = statistics.median(a / b for a, b in zip(t, times["base"]))
            ref = label[:-len(" merged")] if label.endswith(" merged") and label[:-len(" merged")] in extra else "own LoRA"
            diff = "" if label in ("base", *extra) else f"{(logits[label] - logits[ref]).abs().max().item():.1e}"
            table.add_row(str(batch_size), label, f"{statistics.median(t) * 1e3:.1f}", f"{min(t) * 1e3:.1f}",
                          f"{ratio:.3f}", diff)
        table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
