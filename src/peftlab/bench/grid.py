"""The benchmark grid: one `Cell` per (method, rank, targets); one TrainConfig per cell × seed.

Which axes a method uses:
  - rank:    low-rank methods (`lora`, `peft-lora`, `dora`, `rslora`, `pissa`, `vera`, ...) → `rank`;
             `adapter` → `adapter_bottleneck` (the rank grid is its bottleneck grid);
  - targets: low-rank methods and `ia3` (a method with `uses_targets = True`);
  - neither: `fft`, `bitfit`, `ln-tuning`, `prompt-tuning` (one cell per method).
Each cell's runs live in `<bench dir>/runs/<cell label>/` (the usual run layout below that), so cells
that differ only in targets never share a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.errors import PeftlabError

RANK_KEYS = {"adapter": "adapter_bottleneck"}  # methods whose size axis is not `rank`


@dataclass(frozen=True)
class Cell:
    method: str
    rank: int | None  # rank, or the adapter bottleneck; None = the method has no size axis
    targets: tuple[str, ...] | None  # None = the method has no target choice

    @property
    def targets_label(self) -> str:
        return ",".join(self.targets) if self.targets else ""

    @property
    def label(self) -> str:
        parts = [self.method]
        if self.rank is not None:
            parts.append(f"{'b' if self.method in RANK_KEYS else 'r'}{self.rank}")
        if self.targets:
            parts.append("-".join(self.targets))
        return "_".join(parts)


def uses_rank(method) -> bool:
    return bool(getattr(method, "low_rank", False)) or method.name in RANK_KEYS


def uses_targets(method) -> bool:
    return bool(getattr(method, "low_rank", False) or getattr(method, "uses_targets", False))


def build_cells(methods: list[str], ranks: list[int], target_sets: list[str]) -> list[Cell]:
    """Every cell of the grid, in method order; one-line PeftlabErrors for bad or empty input."""
    from peftlab.arch import parse_targets
    from peftlab.methods import get_method

    if not methods:
        raise PeftlabError("no methods given; pass e.g. --methods fft,lora,adapter")
    resolved = list(dict.fromkeys(get_method(m).name for m in methods))  # unknown → error listing the registry
    needs_rank = [m for m in resolved if uses_rank(get_method(m))]
    if needs_rank and not ranks:
        raise PeftlabError(f"the rank grid is empty but {', '.join(needs_rank)} need one; pass e.g. --ranks 1,2,4,8")
    bad = [r for r in ranks if isinstance(r, bool) or not isinstance(r, int) or r <= 0]
    if bad:
        what = "ranks / adapter bottlenecks" if "adapter" in resolved else "ranks"
        raise PeftlabError(f"{what} must be positive integers, got {', '.join(map(str, bad))}; pass e.g. --ranks 1,2,4,8")
    sets = [parse_targets(t) for t in target_sets] if target_sets else [("q", "k", "v", "o")]
    sets = list(dict.fromkeys(sets))
    cells = []
    for name in resolved:
        method = get_method(name)
        for rank in (list(dict.fromkeys(ranks)) if uses_rank(method) else [None]):
            for targets in (sets if uses_targets(method) else [None]):
                cells.append(Cell(name, rank, targets))
    return cells


def cell_overrides(cell: Cell, seed: int, out: str) -> list[str]:
    """`key=value` overrides that put one run of `cell` in its own folder under `out`."""
    items = [f"method={cell.method}", f"seed={seed}", f"out={out}"]
    if cell.rank is not None:
        items.append(f"{RANK_KEYS.get(cell.method, 'rank')}={cell.rank}")
    if cell.targets:
        items.append(f"targets={','.join(cell.targets)}")
    return items
