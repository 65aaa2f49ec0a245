"""Architecture table: model types it refuses (DeBERTa v1) fail early with one clear line."""

from __future__ import annotations

import pytest

from peftlab.arch import ARCH_SPECS, get_arch, spec_for_model_type, target_module_names
from peftlab.errors import PeftlabError
from peftlab.testing import tiny_config

V1_MESSAGE = (
    "model type 'deberta' (DeBERTa v1) is not supported: it fuses q, k, v into one in_proj whose "
    "columns interleave per head, which peftlab has no layout for; use a DeBERTa-v2/v3 checkpoint "
    "(model_type 'deberta-v2', e.g. microsoft/deberta-v3-base)"
)


def _tiny_deberta_v1():
    import transformers

    config = transformers.DebertaConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, relative_attention=True, pos_att_type=["c2p", "p2c"], num_labels=2,
    )
    return transformers.DebertaForSequenceClassification(config)


def test_deberta_v1_is_refused_by_config_and_by_model():
    model = _tiny_deberta_v1()
    assert model.config.model_type == "deberta"
    # The fused, per-head interleaved projection that makes v2's spec wrong for v1:
    assert model.deberta.encoder.layer[0].attention.self.in_proj.weight.shape == (3 * 32, 32)
    for thing in (model.config, model):
        with pytest.raises(PeftlabError) as excinfo:
            get_arch(thing)
        assert str(excinfo.value) == V1_MESSAGE
    with pytest.raises(PeftlabError) as excinfo:  # what LoRA / FFT targeting calls first
        target_module_names(model, "q,v")
    assert str(excinfo.value) == V1_MESSAGE


def test_deberta_v2_still_resolves_and_no_spec_claims_a_refused_type():
    from peftlab.arch import REFUSED_MODEL_TYPES

    assert get_arch(tiny_config("deberta-v2")).family == "deberta-v2"
    claimed = {t for spec in ARCH_SPECS.values() for t in spec.model_types}
    assert "deberta" in REFUSED_MODEL_TYPES and not claimed & set(REFUSED_MODEL_TYPES)
    with pytest.raises(PeftlabError, match=r"^architecture 'funnel' has no ArchSpec in peftlab; supported model "
                                           r"types: bert, deberta-v2, electra, gpt2, llama, mistral, qwen2, qwen3, "
                                           r"roberta, xlm-roberta \(add one"):
        spec_for_model_type("funnel")


def test_load_model_refuses_deberta_v1_before_any_run_files(tmp_path):
    from peftlab.models import load_model

    _tiny_deberta_v1().save_pretrained(tmp_path / "v1")
    with pytest.raises(PeftlabError) as excinfo:
        load_model(str(tmp_path / "v1"), num_labels=2)
    assert str(excinfo.value) == V1_MESSAGE
