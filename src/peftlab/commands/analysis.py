"""`peftlab analyze | compare | aggregate | compare-ranks`: statistics and figures from saved tables.

Multi-value options work as `--seeds 1 2 3` (rewritten by `cli.expand_multi_value`), as repeated
`--seeds 1 --seeds 2` and as `--seeds 1,2,3`. Heavy imports (pandas, scipy, matplotlib) stay inside
the command bodies so that `peftlab --help` is instant.
"""

from __future__ import annotations

from typing import List, Optional

import typer


def split_values(values: list[str] | None) -> list[str]:
    """Flatten `["1,2", "3"]` → `["1", "2", "3"]` (commas and repeats both allowed)."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def int_values(values: list[str] | None, option: str) -> list[int]:
    """Whole numbers of a multi-value option, or a one-line PeftlabError."""
    from peftlab.errors import PeftlabError

    try:
        return [int(v) for v in split_values(values)]
    except ValueError:
        raise PeftlabError(f"{option} takes whole numbers, e.g. {option} 1 2 3; got {' '.join(values or [])}") from None


def register(app: typer.Typer) -> None:
    """Attach the analysis subcommands to `app`."""

    @app.command("analyze")
    def analyze_command(
        run_dir: str = typer.Argument(..., help="A measured run directory, e.g. outputs/FFT/RTE/seed1."),
        n_resamples: int = typer.Option(1000, "--n-resamples", help="Bootstrap resamples of heads for the CIs."),
        seed: int = typer.Option(0, "--bootstrap-seed",
                                 help="Seed of the bootstrap and permutation RNGs (recorded in stats.json)."),
        n_permutations: int = typer.Option(10000, "--n-permutations",
                                           help="Shuffles of importance over heads for the chance levels (≥ 1000)."),
        q_hi: float = typer.Option(0.75, "--q-hi", help="Upper quantile for counter-examples (top quarter)."),
        q_lo: float = typer.Option(0.25, "--q-lo", help="Lower quantile for counter-examples (bottom quarter)."),
        top_k: Optional[int] = typer.Option(None, "--top-k", help="K of the top-K overlap (default round(20/144·n))."),
        dpi: int = typer.Option(150, "--dpi", help="Figure resolution."),
    ) -> None:
        """Write heads.csv, stats.json, cases.json and figures into RUN_DIR/analysis/.

        Spearman ρ with bootstrap CIs, top-K overlap and counter-examples against permutation chance
        levels, and which heads' exact importance differs from 0 (t-test over examples, BH q = 0.05).
        For an AdaLoRA run also module_ranks.csv and fig_adalora_rank_vs_heads.png: Spearman ρ (bootstrap
        CI over modules) between each q/k/v/o module's final rank and the sum over its layer's heads of
        I_pre, G, U (its own U_q..U_o slice) and I_post, per module type and pooled.
        """
        from peftlab.analysis.analyze import analyze_run
        from peftlab.io import read_json

        out_dir = analyze_run(run_dir, n_resamples=n_resamples, seed=seed, q_hi=q_hi, q_lo=q_lo, top_k=top_k,
                              dpi=dpi, n_permutations=n_permutations)
        stats = read_json(out_dir / "stats.json")
        for note in stats.get("notes", []):
            typer.echo(f"note: {note}", err=True)
        for key, entry in stats["spearman"].items():
            if entry.get("rho") is not None:
                typer.echo(f"{key:<14} ρ = {entry['rho']:+.3f} [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]",
                           err=True)
        for col in ("I_pre", "I_post"):
            entry = stats.get("significance", {}).get(col) or {}
            if entry.get("measured"):
                typer.echo(f"{col}: {entry['message']}", err=True)
        for name, entry in ((stats.get("adalora_ranks") or {}).get("spearman") or {}).get("pooled", {}).items():
            rho = "n/a" if entry.get("rho") is None else f"{entry['rho']:+.3f}"
            ci = "" if entry.get("ci_low") is None else f" [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"
            typer.echo(f"AdaLoRA rank~Σ{name:<7} ρ = {rho}{ci} (n = {entry['n']} modules): {entry['verdict']}",
                       err=True)
        typer.echo(str(out_dir))

    @app.command("compare")
    def compare_command(
        run_a: str = typer.Argument(..., help="First run directory, e.g. outputs/FFT/RTE/seed1."),
        run_b: str = typer.Argument(..., help="Second run directory, e.g. outputs/LoRA/RTE/seed1_r8."),
        out: str = typer.Option("outputs", "--out",
                                help="Output root; writes <out>/COMPARE/<TASK>/seed<S>/<A>_vs_<B>/."),
        dpi: int = typer.Option(150, "--dpi", help="Figure resolution."),
    ) -> None:
        """Compare two runs of one task and model: figures, compare_metrics.json, compare_summary.txt."""
        from peftlab.analysis.compare import compare_runs

        out_dir = compare_runs(run_a, run_b, out=out, dpi=dpi)
        typer.echo((out_dir / "compare_summary.txt").read_text(encoding="utf-8"), err=True)
        typer.echo(str(out_dir))

    @app.command("aggregate")
    def aggregate_command(
        task: str = typer.Option(..., "--task", help="Task name, e.g. RTE."),
        methods: List[str] = typer.Option(..., "--methods", help="Method labels, e.g. --methods FFT LoRA_r8."),
        seeds: List[str] = typer.Option(..., "--seeds", help="Seeds, e.g. --seeds 1 2 3 (or 1,2,3)."),
        out: str = typer.Option("outputs", "--out", help="Output root; writes <out>/MULTI_SEED/<TASK>/."),
        dpi: int = typer.Option(150, "--dpi", help="Figure resolution."),
    ) -> None:
        """Mean, std and 95 % t-interval across seeds of every statistic; per-head seed stability."""
        from peftlab.analysis.aggregate import aggregate

        out_dir = aggregate(task, split_values(methods), int_values(seeds, "--seeds"), out=out, dpi=dpi)
        typer.echo(str(out_dir))

    @app.command("compare-ranks")
    def compare_ranks_command(
        task: str = typer.Option(..., "--task", help="Task name, e.g. RTE."),
        seed: int = typer.Option(1, "--seed", help="Seed of the runs."),
        ranks: List[str] = typer.Option(..., "--ranks", help="LoRA ranks, e.g. --ranks 4 8 16 32."),
        method: str = typer.Option("LoRA", "--method", help="Low-rank method dir name: LoRA or PEFT-LoRA."),
        out: str = typer.Option("outputs", "--out", help="Output root; writes <out>/RANK_COMPARISON/<TASK>/seed<S>/."),
        dpi: int = typer.Option(150, "--dpi", help="Figure resolution."),
    ) -> None:
        """Dev score, trainable parameters, training time and key correlations against LoRA rank."""
        from peftlab.analysis.ranks import compare_ranks

        out_dir = compare_ranks(task, seed, int_values(ranks, "--ranks"), out=out, method=method, dpi=dpi)
        typer.echo(str(out_dir))

    @app.command("scores")
    def scores_command(
        out: str = typer.Option("outputs", "--out", help="Output root holding the runs; writes <out>/SCORES/."),
        tasks: Optional[List[str]] = typer.Option(None, "--tasks", help="Only these tasks, e.g. --tasks RTE SST-2."),
    ) -> None:
        """Dev scores of every finished run, and mean ± std across seeds (CSV + Markdown)."""
        from peftlab.analysis.scores import write_scores

        scores_dir = write_scores(out, split_values(tasks) or None)
        typer.echo((scores_dir / "scores.md").read_text(encoding="utf-8"), err=True)
        typer.echo(str(scores_dir))
