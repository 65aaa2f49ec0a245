"""Shared pytest fixtures. Others may append fixtures below; keep each one small and documented."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests never reach a hub: everything they load is local (packaged model, tmp files, ../shared/data).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real benchmark data (`$PEFTLAB_DATA`, else `<repo>/../shared/data`); skips when absent."""
    env = os.environ.get("PEFTLAB_DATA", "").strip()
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not (path / "glue").is_dir():
        pytest.skip(f"real GLUE data not found at {path}; set PEFTLAB_DATA")
    return path


# --- tiny fake task files (a few rows each, every layout quirk of the real ones) ----------------

def _tsv(rows) -> str:
    return "".join("\t".join(str(c) for c in row) + "\n" for row in rows)


_MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                      "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
_MNLI_DEV_HEADER = _MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
_SNLI_HEADER = ["index", "captionID", "pairID", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
                "label1", "label2", "label3", "label4", "label5", "gold_label"]
_NLI = ["entailment", "neutral", "contradiction"]

# AG News: 5 rows per class, original release style (every field quoted, no header).
AG_NEWS_ROWS = [(1 + i % 4, f"Title {i}", f"Body, with comma {i}") for i in range(20)]


def write_tiny_glue(root: Path) -> Path:
    """Write small valid files of every task under `root` (a data dir); returns `root`."""
    files = {
        "glue/RTE/train.tsv": _tsv([["index", "sentence1", "sentence2", "label"],
                                    [0, 'He said "hi" to me.', "He spoke.", "entailment"],
                                    [1, "A cat sat.", "A dog sat.", "not_entailment"],
                                    [2, "It rains.", "It is wet.", "entailment"]]),
        "glue/RTE/dev.tsv": _tsv([["index", "sentence1", "sentence2", "label"],
                                  [0, "Dev a.", "Dev b.", "not_entailment"]]),
        "glue/SST-2/train.tsv": _tsv([["sentence", "label"], ["a fine film ", 1], ["dull ", 0]]),
        "glue/SST-2/dev.tsv": _tsv([["sentence", "label"], ['the " quote', 1]]),
        "glue/MRPC/train.tsv": "\ufeff" + _tsv([["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                                                [1, 11, 12, "He left .", "He went away ."],
                                                [0, 13, 14, "Red .", "Blue ."]]),
        "glue/MRPC/dev.tsv": "\ufeff" + _tsv([["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                                              [0, 15, 16, "Up .", "Down ."]]),
        "glue/STS-B/train.tsv": _tsv([["index", "genre", "filename", "year", "old_index", "source1", "source2",
                                       "sentence1", "sentence2", "score"],
                                      [0, "main-captions", "MSRvid", "2012test", "0001", "none", "none",
                                       "A plane.", "An air plane.", "5.000"],
                                      [1, "main-news", "x", "2013", "0002", "none", "none", "Up.", "Down.", "0.250"]]),
        "glue/STS-B/dev.tsv": _tsv([["index", "genre", "filename", "year", "old_index", "source1", "source2",
                                     "sentence1", "sentence2", "score"],
                                    [0, "g", "f", "y", "o", "s", "s", "One.", "Two.", "3.800"]]),
        # CoLA: no header, 4 columns; dev ends without a newline, like the real file.
        "glue/CoLA/train.tsv": _tsv([["gj04", 1, "", "Good sentence."], ["gj04", 0, "*", "Sentence bad."]]),
        "glue/CoLA/dev.tsv": _tsv([["w_80", 1, " ", "Fine."], ["w_80", 0, "*", "Not fine."]]).rstrip("\n"),
        "glue/QNLI/train.tsv": _tsv([["index", "question", "sentence", "label"],
                                     [0, "Who?", "Him.", "entailment"], [1, "Why?", "No.", "not_entailment"]]),
        "glue/QNLI/dev.tsv": _tsv([["index", "question", "sentence", "label"], [0, "Q?", "A.", "entailment"]]),
        "glue/QQP/train.tsv": _tsv([["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                                    [0, 1, 2, "How old?", "What age?", 1], [1, 3, 4, "Where?", "When?", 0]]),
        "glue/QQP/dev.tsv": _tsv([["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                                  [0, 5, 6, "A?", "B?", 0]]),
        "glue/MNLI/train.tsv": _tsv([_MNLI_TRAIN_HEADER] + [
            [i, i, f"{i}e", "fiction", "(p)", "(h)", "(P)", "(H)", f"premise {i}", f"hyp {i}", lab, lab]
            for i, lab in enumerate(_NLI)]),
        "glue/MNLI/dev_matched.tsv": _tsv([_MNLI_DEV_HEADER] + [
            [0, 0, "0n", "slate", "(p)", "(h)", "(P)", "(H)", "matched p", "matched h", *["neutral"] * 5, "neutral"]]),
        "glue/MNLI/dev_mismatched.tsv": _tsv([_MNLI_DEV_HEADER] + [
            [0, 0, "0c", "letters", "(p)", "(h)", "(P)", "(H)", "mism p", "mism h", *["contradiction"] * 5,
             "contradiction"]]),
        "glue/WNLI/train.tsv": _tsv([["index", "sentence1", "sentence2", "label"], [0, "S1.", "S2.", 1],
                                     [1, "S3.", "S4.", 0]]),
        "glue/WNLI/dev.tsv": _tsv([["index", "sentence1", "sentence2", "label"], [0, "D1.", "D2.", 0]]),
        # SNLI: the second row has no gold label ("-") and must be dropped.
        "glue/SNLI/train.tsv": _tsv([_SNLI_HEADER,
                                     [0, "c0", "p0", "(a)", "(b)", "(A)", "(B)", "A man.", "A person.",
                                      *["entailment"] * 5, "entailment"],
                                     [1, "c1", "p1", "(a)", "(b)", "(A)", "(B)", "Two.", "Three.",
                                      "neutral", "contradiction", "entailment", "neutral", "contradiction", "-"],
                                     [2, "c2", "p2", "(a)", "(b)", "(A)", "(B)", "Dog.", "Cat.",
                                      *["contradiction"] * 5, "contradiction"]]),
        "glue/SNLI/dev.tsv": _tsv([_SNLI_HEADER, [0, "c", "p", "(a)", "(b)", "(A)", "(B)", "X.", "Y.",
                                                  *["neutral"] * 5, "neutral"]]),
        "ag_news/test.csv": "".join(f'"{y}","{t}","{d}"\n' for y, t, d in AG_NEWS_ROWS),
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def tiny_glue(tmp_path) -> Path:
    """A data dir in tmp_path holding tiny valid files of every task (corrupt them in error tests)."""
    return write_tiny_glue(tmp_path / "data")


# --- head measurements (tests/test_gate.py, test_importance.py, test_plasticity.py) ---------------

@pytest.fixture(scope="session")
def loud_tiny_model():
    """Factory `(family, dtype=torch.float32, num_labels=2) -> fresh model` (eval mode).

    A tiny model (peftlab.testing) whose weight matrices are redrawn with std 0.3 (seeded), so that
    single heads change the loss visibly; at the init std 0.02 ablating a head barely moves it.
    """
    import copy

    import torch

    from peftlab.testing import tiny_model

    cache = {}

    def make(family: str, dtype=torch.float32, num_labels: int = 2):
        key = (family, num_labels)
        if key not in cache:
            model = tiny_model(family, num_labels=num_labels)
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for param in model.parameters():
                    if param.dim() >= 2:
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
            cache[key] = model
        return copy.deepcopy(cache[key]).to(dtype).eval()

    return make


@pytest.fixture(scope="session")
def tiny_batches():
    """Factory `(regression=False) -> [batch of 3 rows × 7 (row 0 padded), batch of 2 rows × 5]` with labels."""
    import torch

    from peftlab.testing import tiny_batch

    def make(regression: bool = False):
        batches = []
        for seed, (n_rows, seq_len, pad_last) in enumerate([(3, 7, 2), (2, 5, 1)]):
            input_ids, attention_mask = tiny_batch(n_rows, seq_len, seed=seed, pad_last=pad_last)
            g = torch.Generator().manual_seed(seed)
            labels = torch.randn(n_rows, generator=g) if regression else torch.randint(0, 2, (n_rows,), generator=g)
            batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
        return batches

    return make


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs with one torch thread (restored after): tiny models gain nothing from threads, and on
    a busy 2-core machine thread hand-offs make each small matmul up to ~100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny random BERT body + the packaged tokenizer: `model=<tiny_dir>` for fast training runs."""
    from peftlab.models import load_tokenizer
    from peftlab.testing import tiny_model

    path = tmp_path_factory.mktemp("tiny") / "bert"
    tiny_model("bert").base_model.save_pretrained(path)
    load_tokenizer(None).save_pretrained(path)
    return path
