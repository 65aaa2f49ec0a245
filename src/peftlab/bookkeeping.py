"""Measurement bookkeeping: the manifest, the one fingerprint of a step's inputs, and the decisions
built on it — skip a finished step, resume a killed sweep, reuse a sibling run's θ0 measurements.

Fingerprint (`step_fingerprint`): everything that changes a step's numbers, as a JSON dict that is
stored as the step's `settings` in `measure_manifest.json`:

    weights    sha256 over ALL files of ckpt_init/ (θ0) and, for θ1 steps, ckpt_final/ (names + bytes,
               so a changed config.json, tokenizer file or *.bin counts, not only *.safetensors)
    tokenizer  sha256 of the tokenizer files in ckpt_init/ (also inside the above; listed to be explicit)
    max_len, task, dtype, peftlab version
    subset     sha256 of eval_subset.json and of the data file it indexes
    options    importance, impl, batch_size, θ0 classifier (+ probe settings), plasticity classifier

A finished step is skipped when its stored settings equal the fingerprint and its outputs exist;
a sibling run's step (`<out>/*/<TASK>/*`) is reused when its settings equal ours. Both decisions
compare the same dict, produced by the same function.

Resume (`PartialSweep`): an exact sweep appends each finished head as one fsynced line of
`importance_<phase>.partial.jsonl` (first line: a header holding the fingerprint); the line carries
the head's row and its per-example differences d_i (floats written with `repr`, so they round-trip
exactly). A kill loses at most the head being measured; a torn last line is dropped. The final
`importance_<phase>.jsonl` and `importance_<phase>_per_example.npy` are built only from the partial
file's lines, so a resumed sweep writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from peftlab.errors import PeftlabError

MANIFEST_FILE = "measure_manifest.json"
STEPS = ("subset", "importance_pre", "gradfisher_pre", "update", "importance_post")
DTYPE = "float32"  # runs are measured in fp32 (peftlab.runs.load_run_model)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "tokenizer.model", "spm.model", "sentencepiece.bpe.model")


# ---------------------------------------------------------------------------------------- hashing


def file_sha256(*paths: Path) -> str:
    """sha256 over the bytes of `paths` (in the given order)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def dir_sha256(path: Path, names: Iterable[str] | None = None) -> str:
    """sha256 over every file below `path` (or only those named `names`): relative name, size and bytes,
    in sorted order. Temporary files of an atomic write (`*.tmp-<pid>`) are left out."""
    path = Path(path)
    if not path.is_dir():
        return ""
    wanted = set(names) if names is not None else None
    files = sorted(p for p in path.rglob("*") if p.is_file() and ".tmp-" not in p.name
                   and (wanted is None or p.name in wanted))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\0".encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


class Hashes:
    """Memoised hashes of one run's files (a checkpoint dir is hashed once per `measure_run`)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._cache: dict[tuple, str] = {}

    def _memo(self, key: tuple, compute) -> str:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def checkpoint(self, which: str) -> str:
        return self._memo(("dir", which), lambda: dir_sha256(self.run_dir / which))

    def tokenizer(self) -> str:
        return self._memo(("tokenizer",), lambda: dir_sha256(self.run_dir / "ckpt_init", TOKENIZER_FILES))

    def file(self, path: Path) -> str:
        """sha256 of a file (not memoised: eval_subset.json changes within one call)."""
        return file_sha256(path) if Path(path).is_file() else ""


# ---------------------------------------------------------------------------------------- fingerprint


def step_fingerprint(run_dir: Path, step: str, options: dict[str, Any], run_config: dict[str, Any],
                     hashes: Hashes | None = None) -> dict[str, Any]:
    """Everything that determines `step`'s output (module docstring); equal dicts ⇒ same numbers.

    `options`: importance, impl, theta0, plasticity_classifier, subset_split, subset_size, subset_seed,
    batch_size, probe (the probe settings, or None when no probe is used). `run_config`: run_config.json.
    """
    import peftlab

    run_dir = Path(run_dir)
    hashes = hashes or Hashes(run_dir)
    config = dict(run_config.get("config", {}))
    base = {"peftlab_version": peftlab.__version__, "task": run_config.get("task", config.get("task"))}
    if step == "subset":
        return {**base, "split": options["subset_split"], "size": options["subset_size"],
                "seed": options["subset_seed"]}
    theta0 = {"theta0_files_sha256": hashes.checkpoint("ckpt_init"), "dtype": DTYPE}
    if step == "update":
        return {**base, "method": run_config.get("method"), **theta0,
                "theta1_files_sha256": hashes.checkpoint("ckpt_final")}
    subset_path = run_dir / "eval_subset.json"
    if not subset_path.is_file():
        raise PeftlabError(f"{subset_path} does not exist; run `peftlab measure {run_dir} --steps subset` first")
    from peftlab.io import read_json

    source = Path(str(read_json(subset_path).get("source", "")))
    inputs = {**base, **theta0, "tokenizer_sha256": hashes.tokenizer(), "max_len": int(config.get("max_len") or 128),
              "subset_sha256": hashes.file(subset_path), "data_sha256": hashes.file(source) if source.name else "",
              "batch_size": options["batch_size"]}
    impl = None if options["importance"] == "taylor" else options["impl"]
    if step == "importance_post":
        return {**inputs, "theta1_files_sha256": hashes.checkpoint("ckpt_final"),
                "importance": options["importance"], "impl": impl}
    classifier = options["theta0"] if step == "importance_pre" else options["plasticity_classifier"]
    pre = {**inputs, "theta0": options["theta0"], "classifier": classifier,
           "probe": options["probe"] if classifier == "probe" else None}
    if step == "gradfisher_pre":
        return {**pre, "plasticity_classifier": options["plasticity_classifier"]}
    if step == "importance_pre":
        return {**pre, "importance": options["importance"], "impl": impl}
    raise PeftlabError(f"unknown step '{step}'; valid steps: {', '.join(STEPS)}")


# ---------------------------------------------------------------------------------------- manifest


class Manifest:
    """`measure_manifest.json`: `{"run_dir", "peftlab_version", ..., "steps": {step: entry}}`, rewritten
    atomically when a step starts and when it finishes. entry = `{"settings", "seconds", "parts", "finished"}`
    (+ `"reused_from"`); `parts` = seconds of the pieces of a step (e.g. taylor, exact, load, probe)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_FILE
        self.data = self._read()

    def _read(self) -> dict[str, Any]:
        from peftlab.io import read_json

        if self.path.is_file():
            try:
                data = read_json(self.path)
                if isinstance(data.get("steps"), dict):
                    return data
            except ValueError:
                pass  # unreadable: start a new one (every output is re-checked against its fingerprint)
        return {"run_dir": str(self.run_dir), "steps": {}}

    def entry(self, step: str) -> dict[str, Any]:
        return self.data["steps"].get(step, {})

    def update(self, **fields: Any) -> None:
        """Top-level fields (e.g. the classifier choices and the peftlab version of the last call)."""
        self.data.update(fields)

    def start(self, step: str, settings: dict[str, Any]) -> None:
        self.data["steps"][step] = {"settings": settings, "seconds": None, "parts": {}, "finished": False}
        self.write()

    def finish(self, step: str, settings: dict[str, Any], seconds: float, parts: dict[str, float],
               reused_from: str | None = None) -> None:
        entry = {"settings": settings, "seconds": seconds, "parts": dict(parts), "finished": True}
        if reused_from:
            entry["reused_from"] = reused_from
        self.data["steps"][step] = entry
        self.write()

    def write(self) -> None:
        from peftlab.io import atomic_write_json

        steps = self.data["steps"]
        self.data = {**self.data, "steps": {name: steps[name] for name in STEPS if name in steps}}
        atomic_write_json(self.path, self.data)


def is_finished(manifest: Manifest, step: str, settings: dict[str, Any], outputs: Iterable[Path]) -> bool:
    """A step can be skipped: finished with the same fingerprint, and all its outputs are present."""
    entry = manifest.entry(step)
    return bool(entry.get("finished")) and entry.get("settings") == settings and all(Path(p).is_file()
                                                                                      for p in outputs)


# ---------------------------------------------------------------------------------------- reuse


def find_sibling(run_dir: Path, step: str, settings: dict[str, Any], files: Iterable[str]) -> Path | None:
    """A sibling run `<out>/*/<TASK>/*` whose `step` finished with the same fingerprint and has `files`."""
    from peftlab.io import read_json

    run_dir = Path(run_dir)
    task_dir = run_dir.parent
    files = tuple(files)
    for sibling in sorted(task_dir.parent.parent.glob(f"*/{task_dir.name}/*")):
        if sibling.resolve() == run_dir.resolve() or not (sibling / MANIFEST_FILE).is_file():
            continue
        try:
            theirs = read_json(sibling / MANIFEST_FILE)["steps"].get(step, {})
        except (ValueError, KeyError, OSError, AttributeError):
            continue
        if theirs.get("finished") and theirs.get("settings") == settings and all((sibling / f).is_file()
                                                                                   for f in files):
            return sibling
    return None


def copy_files(source: Path, target: Path, files: Iterable[str], keep_existing: Iterable[str] = ()) -> None:
    """Copy `files` from `source` to `target` atomically; names in `keep_existing` are kept if present."""
    from peftlab.io import atomic_write_bytes

    keep = set(keep_existing)
    for name in files:
        if name in keep and (Path(target) / name).is_file():
            continue
        atomic_write_bytes(Path(target) / name, (Path(source) / name).read_bytes())


# ---------------------------------------------------------------------------------------- resume


class PartialSweep:
    """The resumable record of one exact sweep (module docstring): header + one line per finished head."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = Path(path)
        self.header = header

    def resume(self, force: bool = False) -> list[dict[str, Any]] | None:
        """Rows already finished under the same header, or None (any other partial file is deleted).

        A resumable file is rewritten atomically with only its complete lines, so a line torn by a kill
        is never continued by the next append; `self.header` becomes the stored header (with its extra).
        """
        from peftlab.io import read_jsonl, write_jsonl_atomic

        if not self.path.is_file():
            return None
        lines = read_jsonl(self.path)
        if not force and lines and self._same(lines[0]):
            write_jsonl_atomic(self.path, lines)
            self.header = lines[0]
            return lines[1:]
        self.path.unlink()
        return None

    def start(self, extra: Any = None) -> None:
        """Begin a new partial file: the header (+ `extra`, e.g. values computed once before the sweep)."""
        from peftlab.io import append_jsonl

        self.header = {**self.header, "extra": extra}
        append_jsonl(self.path, self.header)

    def _same(self, stored: dict[str, Any]) -> bool:
        mine = {k: v for k, v in self.header.items() if k != "extra"}
        return {k: v for k, v in stored.items() if k != "extra"} == mine

    def append(self, row: dict[str, Any], d) -> None:
        """One finished head: its row and d_i (floats; None when the sweep keeps no per-example values)."""
        from peftlab.io import append_jsonl

        append_jsonl(self.path, {**row, "d": None if d is None else [float(x) for x in d]})

    def finish(self, jsonl_path: Path, npy_path: Path, heads: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Write the final table and per-example matrix from the partial file's lines, then remove it.

        npy: float64 [n_layers·n_heads, N], row = layer·n_heads + head (the order of `heads`).
        """
        import numpy as np

        from peftlab.io import atomic_write_bytes, read_jsonl, write_jsonl_atomic

        lines = sorted(read_jsonl(self.path)[1:], key=lambda r: (r["layer"], r["head"]))
        if [(r["layer"], r["head"]) for r in lines] != list(heads):
            raise PeftlabError(f"{self.path} does not hold every head exactly once; delete it and re-run")
        matrix = np.array([line.pop("d") for line in lines], dtype=np.float64)  # [n_layers·n_heads, N]
        buffer = io.BytesIO()
        np.save(buffer, matrix, allow_pickle=False)
        atomic_write_bytes(npy_path, buffer.getvalue())
        write_jsonl_atomic(jsonl_path, lines)
        self.path.unlink()
        return lines


class StepTimer:
    """Seconds of the named parts of a step: `with timer.part("taylor"): ...` adds to `parts["taylor"]`."""

    def __init__(self):
        self.parts: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - started
