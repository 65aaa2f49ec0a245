"""Tiny, seeded, randomly initialised models of every supported family (2 layers × 4 heads).

Used by the test suite and by `peftlab` smoke runs that must not need a real checkpoint.
Grouped-query families (llama, qwen2) get 2 kv heads so the q→kv mapping is exercised.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("bert", "roberta", "electra", "deberta-v2", "llama", "qwen2", "gpt2")

# Vocab large enough for the packaged MiniLM tokenizer, so tiny models can read real text.
TINY_VOCAB = 30522


def tiny_config(family: str, num_labels: int = 2, vocab_size: int = TINY_VOCAB):
    """HF config of a 2-layer, 4-head, hidden-32 model of `family`."""
    import transformers as T

    common = dict(vocab_size=vocab_size, num_labels=num_labels, pad_token_id=0)
    bertlike = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=128, **common)
    if family == "bert":
        return T.BertConfig(**bertlike)
    if family == "roberta":
        return T.RobertaConfig(**{**bertlike, "pad_token_id": 1, "max_position_embeddings": 130})
    if family == "electra":
        return T.ElectraConfig(embedding_size=32, **bertlike)
    if family == "deberta-v2":
        return T.DebertaV2Config(share_att_key=True, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                 position_buckets=16, max_relative_positions=32, **bertlike)
    llamalike = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=64, max_position_embeddings=128, **common)
    if family == "llama":
        return T.LlamaConfig(**llamalike)
    if family == "qwen2":
        return T.Qwen2Config(**llamalike)
    if family == "gpt2":
        return T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0,
                            **common)
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def tiny_model(family: str = "bert", num_labels: int = 2, seed: int = 0):
    """A randomly initialised `AutoModelForSequenceClassification` of `family`, in eval mode, seeded."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, num_labels))
    return model.eval()


def save_tiny_model_dir(path: str | Path, family: str = "bert", num_labels: int = 2, seed: int = 0) -> Path:
    """Write a tiny random model + the packaged MiniLM tokenizer to `path`, loadable with `--model path`."""
    from peftlab.models import load_tokenizer

    path = Path(path)
    model = tiny_model(family, num_labels, seed)
    model.save_pretrained(path)
    load_tokenizer(None).save_pretrained(path)
    return path


def tiny_batch(batch_size: int = 3, seq_len: int = 7, vocab_size: int = 200, seed: int = 0, pad_last: int = 2):
    """(input_ids, attention_mask) with the last `pad_last` positions of row 0 padded (id 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch_size, seq_len), generator=g)
    attention_mask = torch.ones_like(input_ids)
    if pad_last:
        input_ids[0, -pad_last:] = 0
        attention_mask[0, -pad_last:] = 0
    return input_ids, attention_mask


GENERATED_WORDS = "the a cat dog sat ran over under house river quickly slowly green red big small old new".split()


def write_generated_rte(data_dir: str | Path, n_train: int, n_dev: int, words_per_row: int = 12) -> Path:
    """Write RTE-layout TSVs of deterministic generated sentence pairs (labels alternate); returns `data_dir`.

    Enough rows for a real train → measure → analyze pipeline on a tiny model, without the real data.
    """
    data_dir = Path(data_dir)
    words = GENERATED_WORDS
    header = "index\tsentence1\tsentence2\tlabel\n"
    labels = ("entailment", "not_entailment")
    for split, n_rows in (("train", n_train), ("dev", n_dev)):
        lines = []
        for i in range(n_rows):
            first = " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(words_per_row))
            second = " ".join(words[(i * 5 + k) % len(words)] for k in range(words_per_row // 2))
            lines.append(f"{i}\t{first}.\t{second}.\t{labels[i % 2]}\n")
        path = data_dir / "glue" / "RTE" / f"{split}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + "".join(lines), encoding="utf-8")
    return data_dir
