"""One random number per row (`infer/sampling.py`): torch.multinomial's distribution, inside `generate` too."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gsm8k_tr.infer import sampling  # noqa: E402


def test_draws_follow_the_probabilities_and_never_pick_a_cut_token() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50) * 2, -1)
    probs[[0, 7, 31, 49]] = 0.0  # cut by top-k/top-p, the last entry among them
    probs /= probs.sum()
    rows = 200_000
    drawn = sampling.draw(probs.expand(rows, -1).contiguous(), 1)
    assert drawn.shape == (rows, 1) and drawn.dtype == torch.int64
    freq = torch.bincount(drawn.flatten(), minlength=50).double() / rows
    assert freq[[0, 7, 31, 49]].sum() == 0
    # Each frequency within 5 standard errors of its probability (a shifted CDF boundary would break this).
    tolerance = 5 * (probs.double() * (1 - probs.double()) / rows).sqrt() + 1e-9
    assert ((freq - probs.double()).abs() <= tolerance).all()
    # The same test through torch's own multinomial, so the tolerance is not simply loose.
    torch_freq = torch.bincount(torch.multinomial(probs.expand(rows, -1), 1).flatten(), minlength=50).double() / rows
    assert ((torch_freq - probs.double()).abs() <= tolerance).all()
    shifted = torch.roll(probs.double(), 1)
    assert not ((freq - shifted).abs() <= tolerance).all()


def test_a_one_hot_row_and_a_large_vocabulary() -> None:
    probs = torch.zeros(3, 50257)
    probs[0, 50256] = 1.0  # all the mass on the last token
    probs[1, 0] = 1.0
    probs[2] = 1 / 50257
    torch.manual_seed(1)
    drawn = sampling.draw(probs, 1).flatten().tolist()
    assert drawn[:2] == [50256, 0] and 0 <= drawn[2] < 50257


@pytest.mark.parametrize("uniform,expected", [(0.0, 1), (1.0, 3)])
def test_the_ends_of_the_uniform_land_on_tokens_that_can_be_drawn(monkeypatch, uniform, expected) -> None:
    """A uniform of exactly 0, or one whose product with the total rounds up to it, still picks a token with
    probability above 0 (the first and the last such token), never a cut one or one past the vocabulary."""
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0]])
    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: torch.full(shape, uniform, dtype=kwargs["dtype"]))
    assert sampling.draw(probs, 1).item() == expected


def test_seeded_draws_repeat_and_follow_a_generator() -> None:
    probs = torch.softmax(torch.randn(16, 300), -1)
    torch.manual_seed(5)
    first = sampling.draw(probs, 1)
    torch.manual_seed(5)
    assert torch.equal(sampling.draw(probs, 1), first)
    a = sampling.draw(probs, 1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampling.draw(probs, 1, generator=torch.Generator().manual_seed(3)), a)


def test_everything_else_goes_to_torch_with_its_errors() -> None:
    probs = torch.softmax(torch.randn(4, 20), -1)
    assert sampling.draw(probs, 3).shape == (4, 3)  # several samples
    assert sampling.draw(probs[0], 1).shape == (1,)  # one row
    for bad in (torch.zeros(2, 5), torch.full((2, 5), float("nan")), torch.tensor([[0.5, -0.1, 0.6]])):
        with pytest.raises(RuntimeError):
            sampling.draw(bad, 1)


def test_generate_samples_with_it_inside_the_block_only(tiny_model_dir, monkeypatch) -> None:
    from transformers import GenerationConfig

    from gsm8k_tr import modeling
    from gsm8k_tr.config import ModelConfig

    model = modeling.load_model(ModelConfig(name_or_path=str(tiny_model_dir))).eval()
    calls = []
    real = sampling.draw

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "draw", counted)
    ids = torch.randint(5, 500, (4, 7), generator=torch.Generator().manual_seed(0))
    sampled = GenerationConfig(max_new_tokens=6, min_new_tokens=6, do_sample=True, temperature=0.8, top_k=0,
                               eos_token_id=None, pad_token_id=0)
    greedy = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    original = torch.multinomial
    with torch.no_grad():
        plain = model.generate(ids, generation_config=greedy)
        with sampling.one_draw_per_row():
            assert torch.multinomial is not original
            torch.manual_seed(0)
            out = model.generate(ids, generation_config=sampled)
            assert torch.equal(model.generate(ids, generation_config=greedy), plain)  # greedy never draws
        assert torch.multinomial is original
    assert len(calls) == 6 and calls[0] == (4, model.config.vocab_size)
    assert out.shape == (4, 13)
    with pytest.raises(ValueError), sampling.one_draw_per_row():
        raise ValueError("boom")
    assert torch.multinomial is original
    with sampling.one_draw_per_row(enabled=False):
        assert torch.multinomial is original
