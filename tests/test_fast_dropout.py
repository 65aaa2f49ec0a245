"""peftlab.fast_dropout: the model's own dropouts without bernoulli_ (issue 13)."""

from __future__ import annotations

import copy

import pytest
import torch

import peftlab.fast_dropout as fd
from peftlab.fast_dropout import ATTENTION_NAME, FastDropout, attention_with_dropout, use_fast_dropout
from peftlab.testing import tiny_batch, tiny_model


def with_dropout(family: str, p: float = 0.1):
    """A tiny model whose hidden AND attention dropouts are p (llama's attention_dropout defaults to 0)."""
    model = tiny_model(family)
    if family in ("llama", "qwen2"):
        model.config.attention_dropout = p
        for module in model.modules():
            if hasattr(module, "attention_dropout"):
                module.attention_dropout = p
    return model


def logits(model, batch):
    input_ids, attention_mask = batch
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_eval_mode_is_exactly_the_plain_model(family):
    plain = with_dropout(family).eval()
    fast = copy.deepcopy(plain)
    info = use_fast_dropout(fast)
    assert info["attention"] == ATTENTION_NAME and fast.config._attn_implementation == ATTENTION_NAME
    assert not any(type(m) is torch.nn.Dropout for m in fast.modules())
    n_plain = sum(type(m) is torch.nn.Dropout for m in plain.modules())
    assert info["dropouts"] == n_plain and (n_plain > 0) == (family == "bert")  # llama has no nn.Dropout
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(logits(fast.eval(), batch), logits(plain, batch), atol=0, rtol=0)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_training_path_without_drops_equals_sdpa_without_dropout(family, monkeypatch):
    """The math path (mask, causal, GQA repeat, scale) is sdpa's: no element dropped → same logits and grads."""
    fast = with_dropout(family, p=0.1).train()
    use_fast_dropout(fast)
    reference = with_dropout(family, p=0.0).train()  # same weights (tiny_model is seeded), no dropout at all
    for module in reference.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0

    calls = []

    def no_drop(shape, p, device):
        calls.append(tuple(shape))
        return torch.zeros(shape, dtype=torch.bool), 1.0

    monkeypatch.setattr(fd, "drop_mask", no_drop)
    batch = tiny_batch()
    out_fast, out_ref = logits(fast, batch), logits(reference, batch)
    n_heads = fast.config.num_attention_heads
    assert any(len(s) == 4 and s[1] == n_heads for s in calls)  # the attention probabilities went through it
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=1e-5)
    out_fast.pow(2).sum().backward()
    out_ref.pow(2).sum().backward()
    for (name, a), (_, b) in zip(fast.named_parameters(), reference.named_parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_attention_with_dropout_matches_the_formula(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))  # [B, H, T, d]
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, :, :, -2:] = False  # row 0: the last two keys are padding
    drop = torch.rand(2, 3, 5, 5, generator=g) < 0.3
    monkeypatch.setattr(fd, "drop_mask", lambda shape, p, device: (drop, 1 / (1 - p)))
    out = attention_with_dropout(q, k, v, mask, 0.3, None, causal=False)
    scores = q @ k.transpose(-1, -2) / 2.0 + torch.where(mask, 0.0, torch.finfo(torch.float32).min)  # d = 4: s = 1/2
    expected = (scores.softmax(-1) * ~drop / 0.7) @ v
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_dropout_really_drops_in_training_and_follows_the_seed():
    model = with_dropout("bert", p=0.3).train()
    use_fast_dropout(model)
    batch = tiny_batch()
    torch.manual_seed(1)
    first = logits(model, batch)
    torch.manual_seed(1)
    assert torch.equal(logits(model, batch), first)
    assert not torch.allclose(logits(model, batch), first)


def test_fast_dropout_module_keeps_p_and_falls_back_off_cpu_or_in_eval():
    drop = FastDropout(0.2)
    assert drop.p == 0.2 and "p=0.2" in repr(drop)
    x = torch.randn(4, 8)
    assert torch.equal(drop.eval()(x), x)
    assert drop.train().drop(x)[1] == 1 / (1 - fd.effective_p(0.2)) == pytest.approx(1 / 0.8, rel=1e-5)


def test_saved_checkpoint_stays_plain_hf(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = with_dropout("bert")
    use_fast_dropout(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config._attn_implementation != ATTENTION_NAME
    assert any(type(m) is torch.nn.Dropout for m in loaded.modules())


@pytest.mark.parametrize("p, bits", [(0.1, 16), (0.05, 16), (0.5, 16), (0.001, 32), (0.3, 16)])
def test_drop_mask_lane_width_keeps_p_within_a_tenth_of_a_percent(p, bits):
    """16-bit lanes (4 per random word) only where p survives rounding to 2⁻¹⁶; the drop rate is p_eff."""
    assert fd.lane_bits(p) == bits
    p_eff = fd.effective_p(p)
    assert abs(p_eff - p) <= 1e-3 * p and p_eff == round(p * 2**bits) / 2**bits
    n = 4_000_001  # odd: the last random word is only partly used
    torch.manual_seed(0)
    drop, scale = fd.drop_mask(torch.Size([n]), p, torch.device("cpu"))
    assert drop.shape == (n,) and drop.dtype == torch.bool and scale == 1 / (1 - p_eff)
    se = (p_eff * (1 - p_eff) / n) ** 0.5
    assert abs(drop.float().mean().item() - p_eff) < 5 * se  # binomial: within 5 SE of p_eff
    # neighbouring lanes of one word are independent: P(both dropped) = p²
    pairs = drop[: n - 1 : 2] & drop[1::2]
    assert abs(pairs.float().mean().item() - p_eff**2) < 5 * (p_eff**2 / (n // 2)) ** 0.5 + 1e-6


def test_drop_mask_p_zero_and_one_are_exact():
    assert not fd.drop_mask(torch.Size([1000]), 0.0, torch.device("cpu"))[0].any()
    drop, _ = fd.drop_mask(torch.Size([1000]), 1.0 - 2**-16, torch.device("cpu"))
    assert drop.float().mean().item() > 0.99
