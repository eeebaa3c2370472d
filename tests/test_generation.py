import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.generation import SamplingSettings, TextGenerator
from gptlab.generation.generate import generate, generate_tokens
from gptlab.generation.sampling import apply_repetition_penalty, sample_next, top_k_filter, top_p_filter
from gptlab.models import build_model


def make(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def run(model, prompt, settings, use_cache=True, num_samples=1, seed=None):
    """Token ids per sample, and the last-position logits of every step (caught as the model returns them)."""
    logits = []
    hook = model.register_forward_hook(lambda m, i, out: logits.append(out[0][:, -1].clone()))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    try:
        steps = [t for t in generate_tokens(model, prompt, settings, num_samples, gen, use_cache)]
    finally:
        hook.remove()
    return torch.stack(steps, dim=1).tolist(), torch.stack(logits, dim=1)


# ---------------------------------------------------------------- KV cache vs recomputation


VARIANTS = [  # the options that change what the cache holds or how positions enter
    dict(attention="sdpa"),
    dict(attention="manual"),
    dict(positions="rope"),
    dict(positions="rope", n_kv_head=1),  # grouped-query attention: the cache holds the shared heads
    dict(arch="bigram"),  # no keys or values; the cache only counts positions
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_cached_generation_equals_recomputation_within_the_block(tiny_config, options):
    model = make(ModelConfig(**{**tiny_config.__dict__, **options}))
    settings = SamplingSettings(max_new_tokens=13, temperature=0, top_k=None)  # 3 + 13 = block_size 16
    cached, cached_logits = run(model, [1, 2, 3], settings, use_cache=True)
    full, full_logits = run(model, [1, 2, 3], settings, use_cache=False)
    assert cached == full
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=1e-5)
    # greedy may loop on one token; seeded sampling walks through varied contexts, with the same draws
    sampled = SamplingSettings(max_new_tokens=13, temperature=1.0, top_k=None)
    cached, cached_logits = run(model, [1, 2, 3], sampled, use_cache=True, seed=0)
    full, full_logits = run(model, [1, 2, 3], sampled, use_cache=False, seed=0)
    assert cached == full and len(set(cached[0])) > 3
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_past_the_block_the_cache_re_prefills_the_newest_half_block(tiny_config, positions):
    """Past block_size the cached path sees the last block/2..block tokens; recomputing that window agrees."""
    model = make(ModelConfig(**{**tiny_config.__dict__, "positions": positions}))
    block, prompt = tiny_config.block_size, list(range(20))  # prompt already longer than the block
    settings = SamplingSettings(max_new_tokens=40, temperature=0, top_k=None)
    cached, cached_logits = run(model, prompt, settings)

    idx, start, ref_logits = list(prompt), max(0, len(prompt) - block), []
    for _ in range(settings.max_new_tokens):
        if len(idx) - start > block:
            start = len(idx) - block // 2
        logits, _ = model(torch.tensor([idx[start:]]))
        ref_logits.append(logits[:, -1])
        idx.append(int(logits[0, -1].argmax()))
    assert cached[0] == idx[len(prompt) :]
    torch.testing.assert_close(cached_logits, torch.stack(ref_logits, dim=1), atol=1e-5, rtol=1e-5)


def test_a_block_of_one_still_generates():
    model = make(ModelConfig(vocab_size=10, block_size=1, n_layer=1, n_head=1, n_embd=8))
    out = generate(model, [3], 5, temperature=0)
    assert len(out[0]) == 5


# ---------------------------------------------------------------- sampling controls


def test_top_k_of_one_is_greedy(tiny_config):
    model = make(tiny_config)
    greedy = generate(model, [1], 12, temperature=0)
    top1 = generate(model, [1], 12, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(0))
    assert top1 == greedy


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]  # the top token alone reaches 0.5
    assert kept(0.79) == [False, True, False, True]  # 0.5 + 0.3 = 0.8 >= 0.79
    assert kept(0.81) == [False, True, True, True]  # needs 0.95
    assert kept(0.96) == [True, True, True, True]
    assert kept(0.01) == [False, True, False, False]  # the top token always stays


def test_top_p_draws_only_from_the_nucleus():
    logits = torch.tensor([[2.0, 1.9, -3.0, -3.0, -3.0]]).repeat(500, 1)  # top two hold ~99% of the mass
    draws = sample_next(
        logits, SamplingSettings(temperature=1, top_k=None, top_p=0.9), torch.Generator().manual_seed(0)
    )
    assert set(draws.flatten().tolist()) == {0, 1}
    loose = sample_next(logits * 0.1, SamplingSettings(temperature=1, top_k=None), torch.Generator().manual_seed(0))
    assert len(set(loose.flatten().tolist())) == 5  # without top-p the tail is drawn too


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_draws_follow_softmax_of_logits_over_t(temperature):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    draws = sample_next(logits, SamplingSettings(temperature=temperature, top_k=None), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws.flatten(), minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.softmax(logits[0] / temperature, dim=-1), atol=0.015, rtol=0)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[4.0, -2.0, 3.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[2.0, -4.0, 3.0, -1.0]]
    # under greedy the seen favourite (token 0) gives way to the best unseen one
    assert sample_next(logits, SamplingSettings(temperature=0, repetition_penalty=2.0), seen=seen).item() == 2


def test_repetition_penalty_in_generation_counts_the_prompt_and_every_new_token(tiny_config):
    model = make(tiny_config)
    prompt = [1, 2, 3]
    plain = generate(model, prompt, 12, temperature=0)[0]
    assert len(set(plain)) < len(plain)  # plain greedy loops
    penalised = generate(model, prompt, 12, temperature=0, repetition_penalty=1e6)[0]
    assert len(set(penalised)) == len(penalised) and not set(penalised) & set(prompt)


def test_bad_settings_are_refused_with_a_message():
    for bad in (
        dict(temperature=-1),
        dict(top_k=-2),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(repetition_penalty=0),
        dict(max_new_tokens=-1),
        dict(stop=("",)),
    ):
        with pytest.raises(GptlabError):
            SamplingSettings(**bad).validate()


# ---------------------------------------------------------------- batches, seeds, stopping


def test_a_batch_of_samples_is_independent_rows(tiny_config):
    model = make(tiny_config)
    greedy = generate(model, [1, 2], 10, temperature=0, num_samples=3)
    assert greedy == [greedy[0]] * 3  # the same prompt under greedy: every row is the single-sample answer
    assert greedy[0] == generate(model, [1, 2], 10, temperature=0)[0]
    sampled = generate(model, [1, 2], 10, temperature=1.0, num_samples=4, generator=torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in sampled}) == 4


def test_a_seed_reproduces_a_sample_and_another_seed_changes_it(char_textgen):
    a = char_textgen.generate("ROMEO:", max_new_tokens=30, temperature=1.0, seed=1)
    assert a == char_textgen.generate("ROMEO:", max_new_tokens=30, temperature=1.0, seed=1)
    assert a != char_textgen.generate("ROMEO:", max_new_tokens=30, temperature=1.0, seed=2)
    assert char_textgen.generate_batch("ROMEO:", 3, max_new_tokens=30, seed=1) == char_textgen.generate_batch(
        "ROMEO:", 3, max_new_tokens=30, seed=1
    )


def test_stop_token_ends_each_row_where_it_first_appears(tiny_config):
    model = make(tiny_config)
    full = generate(model, [1], 15, temperature=0)[0]
    stop = full[4]
    assert generate(model, [1], 15, temperature=0, stop_token=stop)[0] == full[: full.index(stop)]


class RenamedEot:
    """A tokenizer whose end-of-text is another token: makes "the model emits end-of-text" happen on cue."""

    def __init__(self, tokenizer, eot_id):
        self.tokenizer, self.eot_id = tokenizer, eot_id

    def encode(self, text):
        return self.tokenizer.encode(text)

    def decode(self, ids):
        return self.tokenizer.decode(ids)


def test_text_ends_at_end_of_text(char_textgen):
    settings = dict(max_new_tokens=40, temperature=0)
    full = char_textgen.generate("the king", **settings)
    ids = char_textgen.tokenizer.encode(full)
    eot = ids[5]  # the token the model produces sixth plays end-of-text
    lm = TextGenerator(char_textgen.model, RenamedEot(char_textgen.tokenizer, eot))
    assert lm.generate("the king", **settings) == char_textgen.tokenizer.decode(ids[: ids.index(eot)])
    assert [lm.generate_batch("the king", 2, **settings)] == [[lm.generate("the king", **settings)] * 2]


def test_text_ends_before_a_stop_string(char_textgen):
    full = char_textgen.generate("the king", max_new_tokens=40, temperature=0)
    stop = full[6:9]
    out = char_textgen.generate("the king", max_new_tokens=40, temperature=0, stop=[stop, "never appears"])
    assert out == full[: full.index(stop)]
    assert char_textgen.generate("the king", max_new_tokens=40, temperature=0, stop="never appears") == full
