"""Everything architecture-specific, as data: one `ArchSpec` per model family.

Canonical names used across peftlab (and in `--targets`):

    q, k, v, o        attention query / key / value / output projections
    ffn_in, ffn_out   the feed-forward block's input and output projections

A spec maps each canonical name to one or more module paths *relative to a transformer layer*.
Layers are found by the suffix of the `ModuleList` that holds them (`layers_suffix`), which keeps
working when PEFT or peftlab's own LoRA wraps the model and prefixes every module name.

Weight layouts: `nn.Linear.weight` is `[d_out, d_in]`; GPT-2's `Conv1D.weight` is `[d_in, d_out]`
(`conv1d=True`). GPT-2 fuses q, k, v into one `c_attn` module (`fused_qkv=True`): its output
columns are `[q | k | v]`, each `n_heads * d_head` wide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peftlab.errors import PeftlabError

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

CANONICAL_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class ArchSpec:
    """Module paths and size attributes of one model family."""

    family: str
    model_types: tuple[str, ...]
    layers_suffix: str  # dotted suffix of the ModuleList holding the layers
    paths: dict[str, tuple[str, ...]]  # canonical name -> module paths relative to a layer
    classifier: tuple[str, ...]  # top-level modules of the task head (trained by every method)
    read_position: str  # "first" ([CLS]) or "last" (last non-pad token) — what the head reads
    n_heads_attr: str = "num_attention_heads"
    n_kv_heads_attr: str | None = None  # grouped-query attention; None = same as n_heads
    conv1d: bool = False  # GPT-2 Conv1D weights are [d_in, d_out]
    fused_qkv: bool = False  # q, k, v live in one module, output columns [q | k | v]
    notes: tuple[str, ...] = field(default_factory=tuple)
    # The position-wise part of a layer after attention, given the o-proj input `ctx` and the layer
    # input `x` (used by heads/importance_fast.py to recompute a layer without its attention):
    #   "post_ln": a = P0(ctx, x); out = P2(P1(a), a)     (BERT family: attention.output, intermediate, output)
    #   "pre_ln":  h = x + P0(ctx); out = h + P2(P1(h))   (LLaMA/GPT-2: o-proj, post-attention norm, mlp)
    # None = unknown; fast exact importance then falls back to the naive path.
    tail_kind: str | None = None
    tail_paths: tuple[str, ...] = ()
    # Houlsby adapters (methods/adapter.py): the dropout modules (relative to a layer) whose output gets
    # `h + up(act(down(h)))` before the residual + LayerNorm, and those LayerNorms (`adapter_ln=true`).
    # Empty = adapters are not supported for this family (the adapter method refuses it).
    adapter_paths: tuple[str, ...] = ()
    adapter_ln_paths: tuple[str, ...] = ()

    @property
    def o_path(self) -> str:
        """Path (relative to a layer) of the attention output projection, where head gates hook."""
        return self.paths["o"][0]


_BERT_PATHS = {
    "q": ("attention.self.query",),
    "k": ("attention.self.key",),
    "v": ("attention.self.value",),
    "o": ("attention.output.dense",),
    "ffn_in": ("intermediate.dense",),
    "ffn_out": ("output.dense",),
}
_BERT_TAIL = dict(tail_kind="post_ln", tail_paths=("attention.output", "intermediate", "output"))
# `*SelfOutput` / `*Output` compute LayerNorm(dropout(dense(h)) + input): the adapter follows the dropout.
_BERT_ADAPTERS = dict(adapter_paths=("attention.output.dropout", "output.dropout"),
                      adapter_ln_paths=("attention.output.LayerNorm", "output.LayerNorm"))
_LLAMA_TAIL = dict(tail_kind="pre_ln", tail_paths=("self_attn.o_proj", "post_attention_layernorm", "mlp"))
_LLAMA_PATHS = {
    "q": ("self_attn.q_proj",),
    "k": ("self_attn.k_proj",),
    "v": ("self_attn.v_proj",),
    "o": ("self_attn.o_proj",),
    "ffn_in": ("mlp.gate_proj", "mlp.up_proj"),
    "ffn_out": ("mlp.down_proj",),
}

ARCH_SPECS: dict[str, ArchSpec] = {
    spec.family: spec
    for spec in [
        ArchSpec("bert", ("bert",), "encoder.layer", _BERT_PATHS, ("classifier",), "first", **_BERT_TAIL,
                 **_BERT_ADAPTERS),
        ArchSpec("roberta", ("roberta", "xlm-roberta"), "encoder.layer", _BERT_PATHS, ("classifier",), "first",
                 **_BERT_TAIL, **_BERT_ADAPTERS),
        ArchSpec("electra", ("electra",), "encoder.layer", _BERT_PATHS, ("classifier",), "first", **_BERT_TAIL,
                 **_BERT_ADAPTERS),
        ArchSpec(
            "deberta-v2",
            ("deberta-v2",),  # not v1 "deberta": see REFUSED_MODEL_TYPES
            "encoder.layer",
            {
                "q": ("attention.self.query_proj",),
                "k": ("attention.self.key_proj",),
                "v": ("attention.self.value_proj",),
                "o": ("attention.output.dense",),
                "ffn_in": ("intermediate.dense",),
                "ffn_out": ("output.dense",),
            },
            ("classifier", "pooler"),
            "first",
            **_BERT_TAIL,
            **_BERT_ADAPTERS,
            notes=(
                "DeBERTa with share_att_key=true: query_proj/key_proj also project relative "
                "positions, so per-head updates of q and k mix content and position roles.",
            ),
        ),
        ArchSpec("llama", ("llama", "mistral"), "layers", _LLAMA_PATHS, ("score",), "last",
                 n_kv_heads_attr="num_key_value_heads", **_LLAMA_TAIL),
        ArchSpec("qwen2", ("qwen2", "qwen3"), "layers", _LLAMA_PATHS, ("score",), "last",
                 n_kv_heads_attr="num_key_value_heads", **_LLAMA_TAIL),
        ArchSpec(
            "gpt2",
            ("gpt2",),
            "h",
            {
                "q": ("attn.c_attn",),
                "k": ("attn.c_attn",),
                "v": ("attn.c_attn",),
                "o": ("attn.c_proj",),
                "ffn_in": ("mlp.c_fc",),
                "ffn_out": ("mlp.c_proj",),
            },
            ("score",),
            "last",
            n_heads_attr="n_head",
            conv1d=True,
            fused_qkv=True,
            tail_kind="pre_ln",
            tail_paths=("attn.c_proj", "ln_2", "mlp"),
            notes=("GPT-2 fuses q, k, v in c_attn: targeting any of q, k, v adapts all three.",),
        ),
    ]
}


# Model types peftlab knows and refuses, with why and what to use instead. Mapping them to a
# near-miss spec would measure or adapt the wrong weights without any error.
REFUSED_MODEL_TYPES: dict[str, str] = {
    # DeBERTa v1's DisentangledSelfAttention has one fused `in_proj` (no bias; q_bias/v_bias are
    # separate parameters) whose output columns interleave the heads as [q_h | k_h | v_h] per head h,
    # a layout neither the per-head update split nor q/k/v LoRA targeting has.
    "deberta": (
        "model type 'deberta' (DeBERTa v1) is not supported: it fuses q, k, v into one in_proj whose "
        "columns interleave per head, which peftlab has no layout for; use a DeBERTa-v2/v3 checkpoint "
        "(model_type 'deberta-v2', e.g. microsoft/deberta-v3-base)"
    ),
}


def spec_for_model_type(model_type: str) -> ArchSpec:
    """The ArchSpec whose family handles HF `config.model_type`, or a PeftlabError listing them.

    Model types in `REFUSED_MODEL_TYPES` raise their own message (why, and what to use instead).
    """
    if model_type in REFUSED_MODEL_TYPES:
        raise PeftlabError(REFUSED_MODEL_TYPES[model_type])
    for spec in ARCH_SPECS.values():
        if model_type in spec.model_types:
            return spec
    known = ", ".join(sorted(t for s in ARCH_SPECS.values() for t in s.model_types))
    raise PeftlabError(
        f"architecture '{model_type}' has no ArchSpec in peftlab; supported model types: {known} "
        f"(add one to peftlab/arch.py)"
    )


def _config_of(model_or_config):
    return getattr(model_or_config, "config", model_or_config)


def get_arch(model_or_config) -> ArchSpec:
    """The ArchSpec of a (possibly PEFT- or LoRA-wrapped) model or of its HF config."""
    return spec_for_model_type(_config_of(model_or_config).model_type)


@dataclass(frozen=True)
class HeadShape:
    """Attention sizes of a model: `n_layers` × `n_heads` heads of width `d_head`."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    hidden: int

    @property
    def group_size(self) -> int:
        """Query heads per kv head (grouped-query attention); query head h uses kv head h // group_size."""
        return self.n_heads // self.n_kv_heads


def head_shape(model_or_config) -> HeadShape:
    """Read `n_layers, n_heads, n_kv_heads, d_head, hidden` from the config through the ArchSpec."""
    config = _config_of(model_or_config)
    spec = get_arch(config)
    n_heads = int(getattr(config, spec.n_heads_attr))
    n_kv = int(getattr(config, spec.n_kv_heads_attr, None) or n_heads) if spec.n_kv_heads_attr else n_heads
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
    d_head = int(getattr(config, "head_dim", None) or hidden // n_heads)
    n_layers = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer"))
    return HeadShape(n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, d_head=d_head, hidden=hidden)


def find_layers(model: "nn.Module") -> tuple[str, "nn.ModuleList"]:
    """(full name, ModuleList) of the transformer layers, found by the spec's suffix.

    Works on plain HF models and on models wrapped by PEFT or by peftlab's LoRA (whose names gain
    prefixes such as `base_model.model.`). Raises a PeftlabError when the path does not resolve.
    """
    import torch.nn as nn

    spec = get_arch(model)
    suffix = "." + spec.layers_suffix
    hits = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and ("." + name).endswith(suffix)
    ]
    if len(hits) != 1:
        raise PeftlabError(
            f"could not find the transformer layers of this {spec.family} model "
            f"(expected one ModuleList named '*{suffix}', found {len(hits)}); check ARCH_SPECS in peftlab/arch.py"
        )
    return hits[0]


def get_submodule(root: "nn.Module", path: str) -> "nn.Module":
    """`root.get_submodule(path)` with a PeftlabError that names the missing path."""
    try:
        return root.get_submodule(path)
    except AttributeError as err:
        raise PeftlabError(f"module path '{path}' does not resolve in {type(root).__name__}: {err}") from None


def layer_module(model: "nn.Module", layer: int, target: str, index: int = 0) -> "nn.Module":
    """The module for canonical `target` (q/k/v/o/ffn_in/ffn_out) in layer `layer`.

    Returns the module that sits at that path now: with LoRA applied, that is the LoRA wrapper.
    `index` picks among several paths (LLaMA's ffn_in = gate_proj, up_proj).
    """
    spec = get_arch(model)
    _, layers = find_layers(model)
    return get_submodule(layers[layer], spec.paths[target][index])


def parse_targets(targets: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Normalise `"q,k,v,o"` or `["q", "v"]` to a tuple of canonical names (validated, order kept)."""
    if isinstance(targets, str):
        items = [t.strip().lower() for t in targets.split(",") if t.strip()]
    else:
        items = [str(t).strip().lower() for t in targets]
    if not items:
        raise PeftlabError(f"no targets given; choose from {', '.join(CANONICAL_TARGETS)}")
    bad = [t for t in items if t not in CANONICAL_TARGETS]
    if bad:
        raise PeftlabError(
            f"unknown target {', '.join(repr(b) for b in bad)}; valid targets: {', '.join(CANONICAL_TARGETS)}"
        )
    return tuple(dict.fromkeys(items))


def target_module_names(model: "nn.Module", targets) -> list[str]:
    """Full module names (as in `model.named_modules()`) of every module the canonical targets hit.

    `--targets q,v` means the same thing on every architecture: this maps it through the ArchSpec.
    Names are deduplicated (GPT-2's q, k, v share `c_attn`) and sorted by layer.
    """
    spec = get_arch(model)
    canon = parse_targets(targets)
    layers_name, layers = find_layers(model)
    names: list[str] = []
    for layer in range(len(layers)):
        for target in canon:
            for path in spec.paths[target]:
                get_submodule(layers[layer], path)  # fail loudly if the path is wrong
                name = f"{layers_name}.{layer}.{path}"
                if name not in names:
                    names.append(name)
    return names


def classifier_module_names(model: "nn.Module") -> list[str]:
    """Top-level names of the task head modules that exist on this model (trained by every method)."""
    spec = get_arch(model)
    present = dict(model.named_children())
    return [name for name in spec.classifier if name in present]
