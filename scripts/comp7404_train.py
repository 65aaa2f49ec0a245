#!/usr/bin/env python
"""Seed-compatible entry point of the COMP7404 method study (RoBERTa on STS-B / AG News: LoRA vs Houlsby
adapter vs FFT): accepts the original script's flags and runs the same experiment through peftlab.

    scripts/comp7404_train.py --dataset stsb --method lora --lora_rank 8 --lora_target q v --seed 1
    scripts/comp7404_train.py --dataset stsb --method lora --compare_ranks               # r = 1,2,4,8,16
    scripts/comp7404_train.py --dataset stsb --method lora --test_weight_matrix_comb_with_rank 4 8
    scripts/comp7404_train.py --dataset stsb --method lora --mode test --test_iters 100  # latency of the run

How each flag maps (only flags that are given become overrides; the rest keep peftlab's defaults):

    --dataset D                  task=D (stsb, ag_news, any `peftlab tasks` name)
    --max_seq_length N           max_len=N
    --batch_size / --eval_batch_size   batch_size= / eval_batch_size=
    --model_name M               model=M (a local dir, or a Hub id online; default: packaged all-MiniLM-L6-v2)
    --method M                   method=M: lora, adapter, fft (aliases full, full_finetune, ft), or any peftlab method
    --learning_rate / --weight_decay / --warmup_ratio   lr= / weight_decay= / warmup_ratio=
    --num_epochs / --gradient_accumulation_steps / --seed   epochs= / grad_accum= / seed=
    --lora_rank / --lora_alpha / --lora_dropout   rank= / alpha= / dropout=
    --lora_target q k v o        targets=q,k,v,o
    --adapter_bottleneck B / --adapter_LN   adapter_bottleneck=B / adapter_ln=true
    --output_dir DIR             out=DIR
    --time_count                 print the run's training-time breakdown (forward / backward / optimizer / other
                                 seconds, evaluation and saving) from final_metrics.json; peftlab always measures it
    --save_model                 accepted: peftlab always saves θ1 (ckpt_final/), which measure/analyze need
    --compare_ranks [R ...]      `peftlab bench --profile full` over ranks R (default 1 2 4 8 16) on --lora_target,
                                 best rank per targets set in bench.md
    --test_weight_matrix_comb_with_rank [R ...]   `peftlab bench --profile full` over target sets
                                 {q},{k},{v},{o},{q,v},{q,k,v,o} × ranks R (default: --lora_rank, else 8)
    --output_matrices            `--save-matrices` (ΔW per adapted module + Frobenius/spectral norm/effective
                                 rank); a single run then goes through `peftlab bench` with one cell
    --mode train|test            train (default): fine-tune (finished runs are skipped). test: the original's
                                 inference-speed test — median latency of the finished run's θ1 at batch 1 and 8,
                                 unmerged and merged, over --test_iters timed forward passes (default 100) after
                                 10 warm-up passes; the run must have been trained with the same flags
    --test_iters N               timed forward passes of --mode test (bench: --latency-iters N)

Without --compare_ranks / --test_weight_matrix_comb_with_rank / --output_matrices a run is one `peftlab train`
into `<output_dir>/<METHOD>/<TASK>/seed<S>[_r<R>]…`; bench calls write `<output_dir>/BENCH/<TASK>/<name>/`.
Every unknown or unsupported flag or value ends in one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # run from a checkout without installing: use this repo's peftlab
    sys.path.insert(0, str(REPO / "src"))

from peftlab.errors import PeftlabError  # noqa: E402

METHOD_ALIASES = {"full": "fft", "full_finetune": "fft", "full_finetuning": "fft", "ft": "fft", "fine_tune": "fft",
                  "houlsby": "adapter", "adapters": "adapter"}
DEFAULT_COMPARE_RANKS = (1, 2, 4, 8, 16)
WEIGHT_MATRIX_COMBINATIONS = ("q", "k", "v", "o", "q,v", "q,k,v,o")
MODES = ("train", "test")
LATENCY_BATCHES = (1, 8)
LATENCY_WARMUP = 10

# original flag -> TrainConfig key (values passed through; peftlab validates them)
OVERRIDE_FLAGS = {
    "dataset": "task", "max_seq_length": "max_len", "batch_size": "batch_size",
    "eval_batch_size": "eval_batch_size", "model_name": "model", "learning_rate": "lr",
    "weight_decay": "weight_decay", "num_epochs": "epochs", "warmup_ratio": "warmup_ratio",
    "gradient_accumulation_steps": "grad_accum", "seed": "seed", "lora_rank": "rank", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "adapter_bottleneck": "adapter_bottleneck", "output_dir": "out",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one PeftlabError line (not usage + message + exit inside argparse)."""

    def error(self, message: str) -> None:  # noqa: D401 (argparse API)
        raise PeftlabError(f"{message}; run scripts/comp7404_train.py --help for the accepted flags")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="comp7404_train.py", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
                      allow_abbrev=False)
    p.add_argument("--dataset")
    p.add_argument("--max_seq_length", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--eval_batch_size", type=int)
    p.add_argument("--model_name")
    p.add_argument("--method")
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--weight_decay", type=float)
    p.add_argument("--num_epochs", type=float)
    p.add_argument("--warmup_ratio", type=float)
    p.add_argument("--gradient_accumulation_steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--time_count", action="store_true")
    p.add_argument("--mode", default="train")
    p.add_argument("--lora_rank", type=int)
    p.add_argument("--lora_alpha", type=float)
    p.add_argument("--lora_dropout", type=float)
    p.add_argument("--test_iters", type=int)
    p.add_argument("--compare_ranks", type=int, nargs="*")
    p.add_argument("--lora_target", nargs="+")
    p.add_argument("--adapter_LN", action="store_true")
    p.add_argument("--adapter_bottleneck", type=int)
    p.add_argument("--output_dir")
    p.add_argument("--save_model", action="store_true")
    p.add_argument("--output_matrices", action="store_true")
    p.add_argument("--test_weight_matrix_comb_with_rank", type=int, nargs="*")
    return p


@dataclass
class Plan:
    """What the flags mean in peftlab: CLI calls (argv lists for `peftlab.cli.main`), or a latency test."""

    commands: list[list[str]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # the TrainConfig key=value of a single run
    latency: dict | None = None  # --mode test: {"overrides", "iters", "batches", "warmup"}
    time_count: bool = False
    notes: list[str] = field(default_factory=list)


def parse(argv: list[str]) -> argparse.Namespace:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        flags = [u for u in unknown if u.startswith("-")] or unknown
        raise PeftlabError(f"unsupported flag(s) {' '.join(flags)}; scripts/comp7404_train.py accepts only the "
                           f"original study's flags (see --help)")
    return args


def _method(name: str | None) -> str | None:
    if name is None:
        return None
    from peftlab.methods import get_method

    key = str(name).strip().lower()
    return get_method(METHOD_ALIASES.get(key, key)).name  # unknown / refused -> one PeftlabError line


def overrides_for(args: argparse.Namespace) -> list[str]:
    """TrainConfig `key=value` overrides of the given flags: task, method, then the others in flag order."""
    out = [f"task={args.dataset}"] if args.dataset is not None else []
    method = _method(args.method)
    if method is not None:
        out.append(f"method={method}")
    for flag, key in OVERRIDE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None and flag != "dataset":
            out.append(f"{key}={value}")
    if args.lora_target is not None:
        out.append(f"targets={_targets(args.lora_target)}")
    if args.adapter_LN:
        out.append("adapter_ln=true")
    return out


def _targets(values: list[str]) -> str:
    """`--lora_target q k v o` (or `q,v`) -> "q,k,v,o"."""
    return ",".join(t for v in values for t in v.split(",") if t.strip())


def plan(argv: list[str]) -> Plan:
    """Map the original flags to peftlab; every unsupported flag, value or combination is a PeftlabError."""
    args = parse(argv)
    if args.mode not in MODES:
        raise PeftlabError(f"unsupported --mode {args.mode!r}; choose train or test (test = inference-speed test "
                           f"of a trained run)")
    for flag in ("test_iters", "num_epochs", "batch_size", "eval_batch_size", "max_seq_length",
                 "gradient_accumulation_steps"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise PeftlabError(f"--{flag} must be > 0, got {value}")
    overrides = overrides_for(args)
    from peftlab.config import load_config

    load_config(None, overrides)  # every value checked now (one line each), before anything runs
    for flag in ("compare_ranks", "test_weight_matrix_comb_with_rank"):
        bad = [r for r in getattr(args, flag) or [] if r <= 0]
        if bad:
            raise PeftlabError(f"--{flag} ranks must be positive integers, got {', '.join(map(str, bad))}; "
                               f"pass e.g. --{flag} 1 2 4 8")
    result = Plan(overrides=overrides, time_count=args.time_count)
    if args.save_model:
        result.notes.append("--save_model: peftlab always saves the fine-tuned model (ckpt_final/)")
    method = _method(args.method) or "lora"
    grid = args.compare_ranks is not None or args.test_weight_matrix_comb_with_rank is not None
    if args.mode == "test":
        if grid or args.output_matrices:
            raise PeftlabError("--mode test times one trained run; drop --compare_ranks / "
                               "--test_weight_matrix_comb_with_rank / --output_matrices (bench measures latency "
                               "of every cell itself)")
        result.latency = {"overrides": overrides, "iters": args.test_iters or 100, "batches": list(LATENCY_BATCHES),
                          "warmup": LATENCY_WARMUP}
        return result
    if not grid and not args.output_matrices:
        result.commands.append(["train", *overrides])
        return result

    # bench calls: the grid's own keys (method, rank, targets, seed, out) go to bench options
    from peftlab.bench.grid import uses_rank, uses_targets
    from peftlab.methods import get_method

    grid_keys = ("method", "rank", "targets", "seed", "out", "task")
    rest = [o for o in overrides if o.split("=", 1)[0] not in grid_keys]
    task = args.dataset or "rte"
    seed = str(args.seed if args.seed is not None else 1)
    out = args.output_dir or "outputs"
    targets = _targets(args.lora_target) if args.lora_target else "q,k,v,o"
    rank = args.lora_rank or 8
    size = args.adapter_bottleneck if method == "adapter" and args.adapter_bottleneck else rank

    def bench(name: str, ranks: list[int], target_sets: list[str]) -> list[str]:
        cmd = ["bench", "--task", task, "--methods", method, *(["--ranks", ",".join(map(str, ranks))] if ranks else []),
               "--targets", *target_sets, "--seeds", seed, "--profile", "full", "--out", out, "--name", name]
        if args.test_iters is not None:
            cmd += ["--latency-iters", str(args.test_iters)]
        if args.output_matrices:
            cmd.append("--save-matrices")
        return cmd + rest

    m = get_method(method)
    if args.compare_ranks is not None:
        if not uses_rank(m):
            raise PeftlabError(f"--compare_ranks needs a method with a rank (lora, dora, …; adapter: bottleneck), "
                               f"not {method}")
        ranks = list(args.compare_ranks) or list(DEFAULT_COMPARE_RANKS)
        result.commands.append(bench("comp7404_compare_ranks", ranks, [targets]))
    if args.test_weight_matrix_comb_with_rank is not None:
        if not (uses_rank(m) and uses_targets(m)):
            raise PeftlabError(f"--test_weight_matrix_comb_with_rank needs a low-rank method with target matrices "
                               f"(lora, peft-lora, dora, …), not {method}")
        ranks = list(args.test_weight_matrix_comb_with_rank) or [rank]
        result.commands.append(bench("comp7404_weight_matrix_comb", ranks, list(WEIGHT_MATRIX_COMBINATIONS)))
    if not result.commands:  # --output_matrices on a single run: one bench cell, so ΔW files sit beside its table
        result.commands.append(bench("comp7404_single", [size] if uses_rank(m) else [], [targets]))
    return result


def _print_time_count(overrides: list[str]) -> None:
    from peftlab.config import load_config
    from peftlab.runs import read_final_metrics, run_dir_for

    final = read_final_metrics(run_dir_for(load_config(None, overrides))) or {}
    timing, parts = final.get("timing") or {}, final.get("timing_breakdown") or {}
    print("time count (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items() if isinstance(v, (int, float))))
    print("train_s breakdown (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()
                                                if isinstance(v, (int, float)) and k != "steps")
          + f" over {parts.get('steps')} optimizer steps")


def _latency_test(spec: dict) -> None:
    import torch

    from peftlab.bench.latency import measure_latency
    from peftlab.config import load_config
    from peftlab.methods import get_method
    from peftlab.runs import is_finished, load_run_model, run_dir_for

    cfg = load_config(None, spec["overrides"])
    run_dir = run_dir_for(cfg)
    if not is_finished(run_dir):
        raise PeftlabError(f"--mode test needs a finished run at {run_dir}; train it first with the same flags "
                           f"and --mode train")
    model, _, _ = load_run_model(run_dir, "final")
    result = measure_latency(get_method(cfg.method), model, spec["batches"], cfg.max_len, spec["iters"],
                             spec["warmup"])
    print(f"{run_dir}: median latency over {spec['iters']} forward passes ({spec['warmup']} warm-up), "
          f"seq {cfg.max_len}, {torch.get_num_threads()} torch threads")
    for batch in spec["batches"]:
        merged = result[f"latency_b{batch}_merged_ms"]
        print(f"  batch {batch}: {result[f'latency_b{batch}_ms']:.2f} ms"
              + (f", merged {merged:.2f} ms" if merged is not None else f" ({result['merge_note']})"))


def main(argv: list[str] | None = None) -> int:
    """Run the mapped peftlab calls; returns the exit code (0, or 2 after one `error:` line)."""
    from peftlab.cli import main as peftlab_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        return 0
    try:
        result = plan(argv)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        if result.latency is not None:
            _latency_test(result.latency)
            return 0
        for command in result.commands:
            print("peftlab " + " ".join(command), file=sys.stderr)
            try:
                peftlab_main(command)
            except SystemExit as done:  # peftlab's CLI always exits; its error line is already printed
                if done.code:
                    return int(done.code)
            if result.time_count and command[0] == "train":
                _print_time_count(result.overrides)
        if result.time_count and result.commands[0][0] == "bench":
            print("time count: per-run forward_s / backward_s / optimizer_s are in the bench's runs.csv",
                  file=sys.stderr)
    except PeftlabError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
