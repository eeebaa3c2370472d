"""The web playground's server side: its page and files, POST /v1/inspect, and what the page relies on from
/v1/completions (each token's text and alternatives, written so that the text before it plus an
alternative is the text with that alternative). The browser drives the page in test_playground_browser.py."""

import json
import re
import threading

import pytest
import torch
from conftest import small_corpus
from fastapi.testclient import TestClient

from gptlab.checkpoint import load_checkpoint
from gptlab.config import ModelConfig
from gptlab.evaluation import inspect
from gptlab.generation import TextGenerator
from gptlab.generation.generate import generate
from gptlab.generation.streaming import REPLACEMENT
from gptlab.models import GPT
from gptlab.serving import create_app
from gptlab.serving.playground import FILES, STATIC
from gptlab.tokenizers import EOT, train_tokenizer
from gptlab.tokenizers.gpt2 import GPT2Tokenizer

MULTI_BYTE = "café ’ 😀 naïve"


@pytest.fixture(scope="module")
def ckpt(tiny_run):
    return load_checkpoint(tiny_run)


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run, device="cpu")) as c:  # `with`: the engine's thread runs
        yield c


def textgen(kind: str, shared_data=None) -> TextGenerator:
    """An untrained GPT with a tokenizer of `kind` (fast; the numbers are the model's all the same)."""
    text = small_corpus() + MULTI_BYTE
    if kind == "gpt2":
        tokenizer = GPT2Tokenizer.from_file(shared_data / "gpt2" / "gpt2.tiktoken")
    else:
        tokenizer = train_tokenizer(kind, [text], **({"vocab_size": 300} if kind == "bpe" else {}))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=16)
    return TextGenerator(GPT(cfg), tokenizer)


def post(client, path, **body):
    return client.post(path, json=body)


def test_the_page_and_its_files_are_served_and_need_nothing_from_outside(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    linked = set(re.findall(r'(?:src|href)="([^"]+)"', page.text))
    assert linked == {f"/playground/{name}" for name in FILES}  # every file it links, nothing else
    for name, kind in FILES.items():
        got = client.get(f"/playground/{name}")
        assert got.status_code == 200 and got.headers["content-type"].startswith(kind)
        assert got.content == (STATIC / name).read_bytes()
    # works offline: no address outside the server in any of its files (the SVG namespace is a name, not a fetch)
    for path in STATIC.iterdir():
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")
        assert re.findall(r"https?://|//[a-z0-9-]+\.[a-z]", text) == [], path.name
    missing = client.get("/playground/../app.py")
    assert missing.status_code == 404
    assert client.get("/playground/secrets.txt").json()["error"]["param"] == "name"


def test_inspect_sends_the_numbers_gptlab_inspect_draws(client, ckpt):
    prompt = "The king speaks"
    got = post(client, "/v1/inspect", prompt=prompt, layer=1, window=6, top=5, temperature=0.7).json()
    attention = inspect.prompt_attention(ckpt, prompt)
    T = len(attention.ids)
    cfg = ckpt.config.model
    assert (got["n_layer"], got["n_head"], got["block_size"]) == (cfg.n_layer, cfg.n_head, cfg.block_size)
    assert (got["context_tokens"], got["start"], got["layer"], got["truncated"]) == (T, T - 6, 1, False)
    assert [t["label"] for t in got["tokens"]] == attention.labels[-6:] == ["s", "p", "e", "a", "k", "s"]
    assert [t["id"] for t in got["tokens"]] == attention.ids[-6:]
    weights = torch.tensor(got["attention"], dtype=torch.float64)
    assert weights.shape == (cfg.n_head, 6, 6)
    torch.testing.assert_close(weights, attention.weights[1][:, -6:, -6:].double(), atol=6e-5, rtol=0)
    nxt = inspect.top_next_tokens(ckpt, prompt, 5, (0.7,))
    assert [t["id"] for t in got["next_tokens"]] == nxt.ids
    assert [t["label"] for t in got["next_tokens"]] == nxt.labels
    assert [t["prob"] for t in got["next_tokens"]] == pytest.approx(nxt.probs[0].tolist(), abs=1e-6)
    # the whole text in the window: each row is a whole distribution over the tokens before it
    whole = post(client, "/v1/inspect", prompt=prompt, window=64).json()
    assert whole["start"] == 0 and whole["tokens"][0]["label"] == "<eot>"
    assert torch.tensor(whole["attention"]).sum(-1).sub(1).abs().max() < 1e-3
    # a text longer than the context: the model sees its last block_size tokens, and the answer says so
    long = post(client, "/v1/inspect", prompt="The king " * 20, window=4).json()
    assert long["truncated"] and long["context_tokens"] == cfg.block_size
    assert [t["label"] for t in long["tokens"]] == ["i", "n", "g", "␣"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"prompt": "The king", "layer": 2}, 400, "layer"),  # the tiny model has layers 0 and 1
        ({"prompt": "The king ✓"}, 400, "prompt"),  # a character the char vocabulary lacks
        ({"prompt": "The king", "window": 0}, 400, "window"),
        ({"prompt": "The king", "temperature": 0}, 400, "temperature"),
        ({"prompt": "The king", "top": "5"}, 400, "top"),  # a string is not a number
        ({"prompt": "The king", "heads": [0]}, 400, "heads"),  # an unknown field is refused, not ignored
        ({"layer": 0}, 400, "prompt"),
        ({"prompt": "The king", "model": "gpt-4"}, 404, "model"),
    ],
)
def test_inspect_refuses_bad_requests_with_openai_errors(client, body, status, param):
    got = client.post("/v1/inspect", json=body)
    assert got.status_code == status
    error = got.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    assert client.post("/v1/inspect", json={"prompt": "The"}).status_code == 200  # and it goes on serving


def test_a_model_without_attention_is_refused():
    from gptlab.models import Bigram

    tokenizer = train_tokenizer("char", [small_corpus()])
    bigram = Bigram(ModelConfig(arch="bigram", vocab_size=tokenizer.vocab_size, block_size=16))
    with TestClient(create_app(TextGenerator(bigram, tokenizer), device="cpu")) as c:
        got = post(c, "/v1/inspect", prompt="The king")
    assert got.status_code == 400 and got.json()["error"]["param"] == "model"
    assert "no attention layers" in got.json()["error"]["message"]


def test_inspect_needs_the_api_key_the_page_does_not(tiny_run):
    with TestClient(create_app(tiny_run, api_key="sesame", device="cpu")) as c:
        assert c.get("/").status_code == 200 and c.get("/playground/playground.js").status_code == 200
        assert c.post("/v1/inspect", json={"prompt": "The"}).status_code == 401
        ok = c.post("/v1/inspect", json={"prompt": "The"}, headers={"Authorization": "Bearer sesame"})
        assert ok.status_code == 200


@pytest.mark.parametrize("kind", ["char", "word", "bpe", "gpt2"])
def test_inspect_labels_every_token_and_splits_no_character(kind, request):
    shared = request.getfixturevalue("shared_data") if kind == "gpt2" else None
    lm = textgen(kind, shared)
    with TestClient(create_app(lm, device="cpu")) as c:
        got = post(c, "/v1/inspect", prompt=f"The king {MULTI_BYTE}", window=48).json()
    ids = inspect.encode_prompt(lm, f"The king {MULTI_BYTE}")
    assert [t["id"] for t in got["tokens"]] == ids
    labels = [t["label"] for t in got["tokens"]]
    assert labels == inspect.token_labels(lm, ids) and not any(REPLACEMENT in label for label in labels)
    if kind in ("bpe", "gpt2"):  # some character took more than one token, and its tokens say so
        assert any(re.search(r"😀.* \(1/\d\)$", label) for label in labels)


def completion_tokens(client, prompt: str, n: int) -> list[dict]:
    """A greedy streamed completion with 5 alternatives per token: each token's text and alternatives."""
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 5, "stream": True}
    tokens = []
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                logprobs = json.loads(line[6:])["choices"][0]["logprobs"]
                tokens += [{"text": t, "top": top} for t, top in zip(logprobs["tokens"], logprobs["top_logprobs"])]
    return tokens


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_completion_tokens_read_as_they_do_after_the_prompt(kind):
    """What branching relies on: a token's alternatives are written as they read in its place, so the
    text before a token plus an alternative is that text continued by the alternative. The word
    tokenizer spaces words apart, so a word alone ("queen") is not how it reads after a word (" queen")."""
    lm = textgen(kind)
    prompt = "The king and queen"
    with TestClient(create_app(lm, device="cpu")) as c:
        tokens = completion_tokens(c, prompt, 12)
    ids = lm.tokenizer.encode(prompt)
    greedy = generate(lm.model, ids, 12, temperature=0)[0]
    text = "".join(t["text"] for t in tokens)
    assert prompt + text == lm.tokenizer.decode(ids + greedy)  # the text joins the prompt as decode() joins it
    assert len(tokens) == len(greedy)
    before = ids
    for t, token in zip(tokens, greedy):
        assert max(t["top"], key=t["top"].get) == t["text"]  # greedy: the likeliest alternative is the token
        for alternative in set(t["top"]) - {EOT}:  # each, put after the text before it, is one more token
            continued = lm.tokenizer.decode(before) + alternative
            assert lm.tokenizer.encode(continued)[: len(before)] == before
        before = before + [token]
    if kind == "word":
        assert text.startswith(" ")


def test_inspections_run_between_decoding_steps_and_change_no_output(tiny_run, ckpt):
    """The inspection hooks the model for one forward pass: it runs in the engine's thread, so streams
    decoded meanwhile come out as they do alone."""
    with TestClient(create_app(tiny_run, device="cpu")) as c:
        alone = [t["text"] for t in completion_tokens(c, "The king", 24)]
        results, errors = [], []

        def stream():
            try:
                results.append([t["text"] for t in completion_tokens(c, "The king", 24)])
            except Exception as e:  # reported below; a thread's exception would otherwise vanish
                errors.append(e)

        threads = [threading.Thread(target=stream) for _ in range(3)]
        for thread in threads:
            thread.start()
        inspections = [post(c, "/v1/inspect", prompt="The king", window=9, layer=0).json() for _ in range(4)]
        for thread in threads:
            thread.join(timeout=60)
    assert errors == [] and results == [alone] * 3
    expected = inspect.prompt_attention(ckpt, "The king").weights[0].double()
    for got in inspections:
        torch.testing.assert_close(torch.tensor(got["attention"], dtype=torch.float64), expected, atol=6e-5, rtol=0)
