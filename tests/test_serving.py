"""`gptlab serve`: the real openai client against uvicorn on 127.0.0.1, on a free port.

The model is a tiny char GPT (block 64) trained for a few steps on chat-shaped text, so the chat
template's characters are in its vocabulary. Outputs are checked against gptlab.generation run on
the same model (greedy and seeded), and logprobs against the model's own log-softmax. Every request
loop is bounded in count and time; every server stops at the end of its test.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from conftest import small_corpus  # noqa: E402

from gptlab.checkpoint import load_checkpoint  # noqa: E402
from gptlab.cli import main  # noqa: E402
from gptlab.generation import TextGenerator  # noqa: E402
from gptlab.generation.sampling import SamplingSettings  # noqa: E402
from gptlab.serving import create_app  # noqa: E402
from gptlab.serving.chat import TURN_STOPS, render  # noqa: E402
from gptlab.serving.schemas import ChatMessage  # noqa: E402

PROMPTS = [f"user: {' '.join(line.split()[:3])}\nassistant:" for line in small_corpus().splitlines()[:16]]
TIMEOUT = 30  # seconds any one request may take


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    """A tiny char GPT (block 64) trained for 40 steps on `user: ...` / `assistant: ...` lines."""
    from gptlab.config import build_config
    from gptlab.data.prepare import prepare
    from gptlab.training.trainer import train

    root = tmp_path_factory.mktemp("chat_run")
    lines = small_corpus().splitlines()
    turns = "".join(f"user: {a}\nassistant: {b}\n" for a, b in zip(lines, lines[1:]))
    (root / "corpus.txt").write_text("system: speak\n" + turns)
    prepare([str(root / "corpus.txt")], root / "data")
    cfg = build_config(
        "tiny", {"block_size": 64, "max_iters": 40, "eval_interval": 40, "eval_iters": 1, "device": "cpu"}
    )
    train(cfg, root / "data", root / "chat", progress=False)
    return root / "chat"


@contextmanager
def running(app):
    """uvicorn serving app in a thread on 127.0.0.1 and a free port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def raw(url: str, body: bytes | dict | None = None) -> tuple[int, str, dict]:
    """(status, body text, headers) of a plain GET, or a POST of body (bytes as they are, a dict as JSON)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def client(url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def served(chat_run):
    """(openai client, base URL, app) of one server shared by the tests that do not need their own."""
    app = create_app(chat_run, device="cpu")
    with running(app) as url:
        yield client(url), url, app


@pytest.fixture(scope="module")
def reference(chat_run) -> TextGenerator:
    ckpt = load_checkpoint(chat_run)
    return TextGenerator(ckpt.model, ckpt.tokenizer, SamplingSettings(top_k=None))


def model_logprobs(lm: TextGenerator, ids: list[int]) -> torch.Tensor:
    """log p(ids[t + 1] | ids[: t + 1]) for every t, straight from the model."""
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids]))[0][0]
    return torch.log_softmax(logits.float(), dim=-1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


# ---------------------------------------------------------------------------------------------- models


def test_the_model_list_names_the_run(served):
    api, _, app = served
    assert [m.id for m in api.models.list().data] == ["chat"] == [app.state.server.name]
    assert api.models.retrieve("chat").owned_by == "gptlab"
    with pytest.raises(openai.NotFoundError, match="no model 'gpt-4' here") as e:
        api.models.retrieve("gpt-4")
    assert e.value.code == "model_not_found"


# ---------------------------------------------------------------------------------------------- completions


def test_greedy_completion_is_what_gptlab_generates(served, reference):
    api, _, _ = served
    r = api.completions.create(model="chat", prompt=PROMPTS[0], max_tokens=20, temperature=0)
    expected = reference.generate(PROMPTS[0], max_new_tokens=20, temperature=0)
    assert r.choices[0].text == expected and r.object == "text_completion" and r.model == "chat"
    assert r.choices[0].finish_reason == ("length" if len(expected) == 20 else "stop")
    assert r.usage.prompt_tokens == len(PROMPTS[0]) and r.usage.completion_tokens == len(expected)


def test_streaming_gives_the_same_text_in_pieces_then_usage(served):
    api, _, _ = served
    whole = api.completions.create(model="chat", prompt=PROMPTS[1], max_tokens=25, temperature=0).choices[0].text
    chunks = list(
        api.completions.create(
            model="chat",
            prompt=PROMPTS[1],
            max_tokens=25,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert len(pieces) > 5 and "".join(pieces) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(whole)
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_and_seeds_reproduce_gptlab_sampling(served, reference):
    api, _, _ = served
    ask = dict(model="chat", prompt=[PROMPTS[2], PROMPTS[3]], max_tokens=24, temperature=1.0, n=3, seed=7)
    first, again = api.completions.create(**ask), api.completions.create(**ask)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == list(range(6)) and texts == [c.text for c in again.choices]
    assert len(set(texts)) > 1  # different seeds per choice
    for i, text in enumerate(texts):  # choice i = prompt i // n, sampled with seed + i
        assert text == reference.generate(PROMPTS[2 + i // 3], max_new_tokens=24, temperature=1.0, seed=7 + i)


def test_stop_strings_end_the_text_before_them(served, reference):
    api, _, _ = served
    free = reference.generate(PROMPTS[4], max_new_tokens=30, temperature=0)
    stop = free[8:11]
    r = api.completions.create(model="chat", prompt=PROMPTS[4], max_tokens=30, temperature=0, stop=[stop, "@@"])
    assert r.choices[0].text == free[: free.index(stop)] and r.choices[0].finish_reason == "stop"
    chunks = api.completions.create(
        model="chat", prompt=PROMPTS[4], max_tokens=30, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == free[: free.index(stop)]


def test_logprobs_are_the_models_own(served, reference):
    api, _, _ = served
    r = api.completions.create(model="chat", prompt=PROMPTS[5], max_tokens=12, temperature=0, logprobs=3)
    choice, tok = r.choices[0], reference.tokenizer
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    ids = tok.encode(PROMPTS[5] + choice.text)
    expected = model_logprobs(reference, ids)[-len(lp.tokens) :]
    torch.testing.assert_close(torch.tensor(lp.token_logprobs), expected, atol=1e-4, rtol=1e-4)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and top[token] == pytest.approx(logprob)  # greedy: the chosen token is the likeliest
        assert max(top.values()) == pytest.approx(logprob)
    streamed = api.completions.create(
        model="chat", prompt=PROMPTS[5], max_tokens=12, temperature=0, logprobs=3, stream=True
    )
    tokens = [t for c in streamed for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens


def test_echo_with_logprobs_scores_the_prompt_as_lm_eval_asks(served, reference):
    api, _, _ = served
    prompt = PROMPTS[6]
    r = api.completions.create(model="chat", prompt=prompt, max_tokens=1, temperature=0, logprobs=1, echo=True)
    lp, ids = r.choices[0].logprobs, reference.tokenizer.encode(prompt)
    assert r.choices[0].text.startswith(prompt) and lp.tokens[: len(ids)] == list(prompt)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    torch.testing.assert_close(
        torch.tensor(lp.token_logprobs[1 : len(ids)]), model_logprobs(reference, ids), atol=1e-4, rtol=1e-4
    )
    plain = api.completions.create(model="chat", prompt=prompt, max_tokens=3, temperature=0, echo=True)
    assert plain.choices[0].text == prompt + reference.generate(prompt, max_new_tokens=3, temperature=0)


def test_truncate_keeps_the_end_of_a_long_prompt(served, reference):
    api, _, _ = served
    long = " ".join(PROMPTS)  # several times the context of 64
    r = api.completions.create(model="chat", prompt=long, max_tokens=8, temperature=0, extra_body={"truncate": True})
    assert r.choices[0].text == reference.generate(long[-64:], max_new_tokens=8, temperature=0)
    assert r.usage.prompt_tokens == 64


# ---------------------------------------------------------------------------------------------- chat


def test_chat_answers_after_the_template_and_stops_at_the_next_turn(served, reference):
    api, _, _ = served
    messages = [{"role": "system", "content": "speak"}, {"role": "user", "content": "the king speaks"}]
    r = api.chat.completions.create(model="chat", messages=messages, max_tokens=30, temperature=0)
    prompt = render([ChatMessage(**m) for m in messages])
    assert prompt == "system: speak\nuser: the king speaks\nassistant:"
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    expected = reference.generate(prompt, max_new_tokens=30, temperature=0, stop=TURN_STOPS)
    assert r.choices[0].message.content == expected and "\nuser:" not in expected
    stream = api.chat.completions.create(
        model="chat", messages=messages, max_tokens=30, temperature=0, stream=True, logprobs=True, top_logprobs=2
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert "".join(t.token for c in chunks[1:] for t in c.choices[0].logprobs.content) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------------------------------------- errors


def error_of(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as e:
        call()
    body = e.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return e.value.status_code, body["error"]


@pytest.mark.parametrize(
    "fields, status, param, code",
    [
        (dict(max_tokens="5"), 400, "max_tokens", None),  # wrong type
        (dict(temperature=-1), 400, "temperature", None),
        (dict(model="gpt-4"), 404, "model", "model_not_found"),
        (dict(max_tokens=0), 400, "max_tokens", None),
        (dict(max_tokens=65), 400, "max_tokens", "context_length_exceeded"),  # past the context of 64
        (dict(prompt="an € sign"), 400, "prompt", "invalid_prompt"),  # not in the char vocabulary
        (dict(prompt="k" * 65), 400, "prompt", "context_length_exceeded"),
        (dict(n=81), 400, "n", None),  # more than the batch (16) and queue (64) hold
        (dict(frequency_penalty=0.5), 400, "frequency_penalty", "unsupported_parameter"),
        (dict(logprobs=21), 400, "logprobs", None),
        (dict(surprise=1), 400, "surprise", None),  # an unknown field is refused, not ignored
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_goes_on(served, fields, status, param, code):
    api, _, _ = served
    body = {"model": "chat", "prompt": "the king", "max_tokens": 4, **fields}
    got, error = error_of(lambda: api.post("/completions", cast_to=object, body=body))
    assert (got, error["param"], error["code"]) == (status, param, code) and error["message"]
    assert api.completions.create(model="chat", prompt="the king", max_tokens=2).choices[0].text is not None


def test_invalid_json_and_unknown_routes(served):
    api, url, _ = served
    status, body, _ = raw(url + "/v1/completions", b'{"prompt": ')
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]["message"]
    status, body, _ = raw(url + "/v1/engines/chat/completions", {"prompt": "x"})
    assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"
    assert json.loads(raw(url + "/health")[1])["status"] == "ok"


def test_body_size_and_api_key(chat_run):
    app = create_app(chat_run, device="cpu", api_key="s3cret", max_body_bytes=2000)
    with running(app) as url:
        ask = dict(model="chat", prompt="the king", max_tokens=2)
        status, error = error_of(lambda: client(url, "s3cret").completions.create(**{**ask, "prompt": "k" * 3000}))
        assert status == 413 and "2,000 bytes" in error["message"]
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            client(url, "wrong").completions.create(**ask)
        status, body, _ = raw(url + "/v1/completions", ask)
        assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
        assert client(url, "s3cret").completions.create(**ask).choices[0].finish_reason
        assert raw(url + "/health")[0] == 200  # health needs no key


@contextmanager
def gated(app):
    """Hold every forward pass of the served model until the returned event is set."""
    model = app.state.server.model
    gate, forward = threading.Event(), model.forward

    def held(*args, **kwargs):
        assert gate.wait(TIMEOUT), "the test never opened the gate"
        return forward(*args, **kwargs)

    model.forward = held
    try:
        yield gate
    finally:
        gate.set()
        del model.forward


def test_a_full_queue_gets_429_and_the_queued_work_still_completes(chat_run):
    app = create_app(chat_run, device="cpu", max_batch=1, max_queue=1)
    with running(app) as url, gated(app) as gate:
        api = client(url)
        ask = dict(model="chat", prompt="the king", max_tokens=5, temperature=0, stream=True)
        first, second = api.completions.create(**ask), api.completions.create(**ask)  # one running, one waiting
        with pytest.raises(openai.RateLimitError, match="busy"):
            api.completions.create(**ask)
        gate.set()
        texts = ["".join(c.choices[0].text for c in s) for s in (first, second)]
        assert texts[0] == texts[1]
        assert api.completions.create(**{**ask, "stream": False}).choices[0].text == texts[0]


# ---------------------------------------------------------------------------------------------- load


def test_sixteen_streaming_clients_share_steps_and_get_what_each_prompt_gets_alone(served):
    api, url, app = served
    ask = dict(model="chat", max_tokens=32, temperature=0)
    alone = {p: api.completions.create(prompt=p, **ask).choices[0].text for p in PROMPTS}
    steps_before = app.state.server.engine.steps
    results, errors = [], []

    def stream_four(k: int) -> None:
        for j in range(4):
            prompt = PROMPTS[(k + 5 * j) % len(PROMPTS)]
            try:
                chunks = list(client(url).completions.create(prompt=prompt, stream=True, **ask))
                results.append((prompt, "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0]))
            except Exception as e:  # noqa: BLE001  (any failure counts as a dropped request)
                errors.append(repr(e))

    threads = [threading.Thread(target=stream_four, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * TIMEOUT)
    assert errors == [] and len(results) == 64
    assert all(last.finish_reason in ("stop", "length") for _, _, last in results)
    assert [text for _, text, _ in results] == [alone[prompt] for prompt, _, _ in results]
    tokens = sum(len(text) for _, text, _ in results)  # char tokenizer: a token per character
    assert app.state.server.engine.steps - steps_before < tokens / 4  # many rows per forward pass


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_row_within_a_step(chat_run, stream):
    app = create_app(chat_run, device="cpu")
    engine = app.state.server.engine
    model, forward = app.state.server.model, app.state.server.model.forward
    model.forward = lambda *a, **k: (time.sleep(0.03), forward(*a, **k))[1]  # 64 steps take two seconds or more
    with running(app) as url:
        # greedy: a sampled text could draw the end-of-text token and finish before the client gives up
        ask = dict(model="chat", prompt="the king", max_tokens=64, temperature=0)
        if stream:
            response = client(url).completions.create(stream=True, **ask)
            for _, chunk in zip(range(2), response):
                assert chunk.choices[0].text is not None
            response.close()
        else:  # the client gives up after a few steps and closes its connection
            with pytest.raises(openai.APITimeoutError):
                openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=0.3).completions.create(**ask)
        closed_at = engine.steps
        assert 0 < closed_at < 64
        deadline = time.monotonic() + 5
        while engine.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.stats()["running"] == 0 and engine.steps - closed_at <= 2
        assert json.loads(raw(url + "/health")[1])["running"] == 0
    del model.forward


# ---------------------------------------------------------------------------------------------- the verb


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_its_url_and_stops_cleanly_on_sigterm_or_ctrl_c(chat_run, stop):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gptlab", "serve", str(chat_run), "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("gptlab: serving 'chat' at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split(" at ")[1].split("/v1")[0]
        assert json.loads(raw(url + "/health")[1])["model"] == "chat"
        proc.send_signal(stop)
        assert proc.wait(TIMEOUT) == 0
        assert "server stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_without_fastapi_says_how_to_install(chat_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if it were not installed
    assert main(["serve", str(chat_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gptlab serve: error: gptlab serve needs FastAPI and uvicorn: pip install 'gptlab[serve]'"


def test_serve_refuses_bad_limits_and_a_taken_port_in_one_line(chat_run, capsys):
    assert main(["serve", str(chat_run), "--max-batch", "0", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("gptlab serve: error: max batch must be >= 1")
    assert main(["serve", str(chat_run), "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip().endswith("--port must be 0 to 65535 (0: a free port), got 70000")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(chat_run), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptlab serve: error: cannot listen on 127.0.0.1:") and err.endswith("--port")


def test_sse_lines_are_openai_shaped(served):
    _, url, _ = served
    body = {"model": "chat", "prompt": "the king", "max_tokens": 3, "temperature": 0, "stream": True}
    status, text, headers = raw(url + "/v1/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [line for line in text.split("\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "text_completion" and first["id"].startswith("cmpl-") and not math.isnan(first["created"])
