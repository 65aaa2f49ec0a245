"""Cost of the per-example bookkeeping of an exact importance sweep (issue 7: must stay ≤ 3 %).

Runs the fast exact sweep on the packaged MiniLM-L6 over real RTE dev rows and times, inside it,
everything the per-example bookkeeping adds: per-example losses from logits (float64), the check
against the model's loss, the d_i differences with SE / t-interval, and appending each head's row
with its d_i to a resumable partial file. Prints the sweep time, the bookkeeping time and the ratio.

    PEFTLAB_DATA=../shared/data python benchmarks/per_example_overhead.py [N_EXAMPLES] [LAYERS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def main(n_examples: int = 64, layers: str = "0,3,5") -> None:
    import torch

    from peftlab.bookkeeping import PartialSweep
    from peftlab.heads import ablation
    from peftlab.heads.importance import exact_importance
    from peftlab.heads.subset import tokenize_batches
    from peftlab.models import load_model, load_tokenizer
    from peftlab.tasks import load_split

    data = load_split("rte", "dev")
    tokenizer = load_tokenizer(None)
    batches = tokenize_batches(tokenizer, data.text_a[:n_examples], data.text_b[:n_examples],
                               data.labels[:n_examples], max_len=128, batch_size=32)
    torch.manual_seed(0)
    model = load_model(None, num_labels=2).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 2.0)  # a classifier that reads the body, so I is not ~0
    keep = {int(x) for x in layers.split(",")}
    done = [(layer, head) for layer in range(6) for head in range(12) if layer not in keep]

    import scipy.stats  # noqa: F401  (imported by the metrics anyway; not a per-sweep cost)

    spent: dict[str, float] = {}

    def timed(fn, name):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    # Everything the per-example bookkeeping adds, wrapped with a timer.
    ablation.per_example_loss = timed(ablation.per_example_loss, "per_example_loss")
    ablation.check_model_loss = timed(ablation.check_model_loss, "check_model_loss")
    ablation.mean_se_ci = timed(ablation.mean_se_ci, "mean_se_ci")
    ablation.SubsetScore.losses = property(timed(ablation.SubsetScore.losses.fget, "losses"))
    with tempfile.TemporaryDirectory() as tmp:
        sweep = PartialSweep(Path(tmp) / "x.partial.jsonl", {"kind": "header"})
        sweep.start()
        append = timed(sweep.append, "append")
        started = time.perf_counter()
        rows = exact_importance(model, batches, impl="fast", done=done, progress=False,
                                on_head=lambda result: append(result.row, result.d))
        total = time.perf_counter() - started
    print(f"fast sweep: {len(rows)} heads × {n_examples} RTE dev rows (max_len 128), torch threads "
          f"{torch.get_num_threads()}: {total:.2f} s")
    overhead = sum(spent.values())
    print(f"per-example bookkeeping inside it: {overhead:.3f} s = {100 * overhead / total:.2f} % "
          f"({', '.join(f'{k} {v:.3f} s' for k, v in spent.items())})")


if __name__ == "__main__":
    main(*(int(a) if i == 0 else a for i, a in enumerate(sys.argv[1:])))
