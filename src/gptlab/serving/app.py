"""The HTTP app: OpenAI's routes over the batch scheduler (gptlab.serving.engine).

    from gptlab.serving import create_app
    app = create_app("runs/demo")              # then uvicorn.run(app), or `gptlab serve runs/demo`

Routes: GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions;
and the web playground's (serving/playground.py): GET / and POST /v1/inspect.
Every error is OpenAI's JSON, {"error": {"message", "type", "param", "code"}}, with the status the case
calls for. docs/serving.md describes every field.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from gptlab.errors import GptlabError
from gptlab.generation import TextGenerator
from gptlab.generation.generate import encode_prompt
from gptlab.generation.sampling import SamplingSettings
from gptlab.serving import chat
from gptlab.serving.choices import CONTEXT, ChoiceText, TokenText, chat_logprobs, legacy_logprobs, prompt_tokens
from gptlab.serving.engine import Engine, EngineStopped, Failed, PromptScores, QueueFull, Sequence, Step
from gptlab.serving.schemas import MAX_LOGPROBS, ChatRequest, CompletionRequest, SamplingFields

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the model's context
ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


class APIError(Exception):
    """An error response: its HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class BodyLimit:
    """ASGI middleware: a request body over max_bytes gets 413, whether declared or sent in chunks."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"the request body is larger than {self.max_bytes:,} bytes; send a smaller one")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large.response()(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large
            return message

        try:
            await self.app(scope, counting_receive, send)
        except APIError as e:  # raised while the app read the body, before it answered
            await e.response()(scope, receive, send)


@dataclass
class Plan:
    """A checked request: what to generate and how to report it."""

    prompts: list[list[int]]  # token ids of each prompt
    texts: list[str]  # each prompt as sent (echo gives it back)
    settings: SamplingSettings
    n: int  # choices per prompt
    stop: tuple[str, ...]  # where each choice's text ends (the request's, plus the chat turn markers)
    logprobs: int | None  # alternatives per token, or None for no logprobs
    echo: bool = False

    @property
    def prompt_of(self) -> list[int]:
        """Choice i answers prompt i // n."""
        return [p for p in range(len(self.prompts)) for _ in range(self.n)]


@dataclass
class Update:
    index: int  # the choice
    text: str = ""
    tokens: list[TokenText] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Job:
    """One request's sequences, their texts, and the queue their events arrive on from the engine's thread."""

    loop: asyncio.AbstractEventLoop
    sequences: list[Sequence] = field(default_factory=list)
    choices: list[ChoiceText] = field(default_factory=list)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def sink(self, index: int) -> Callable[[list], None]:
        return lambda events: self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, events))

    def usage(self, plan: Plan) -> dict:
        prompt = sum(len(ids) for ids in plan.prompts)
        completion = sum(choice.tokens for choice in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Server:
    """The served model: checks requests, runs them through the engine, yields their text as it comes."""

    def __init__(self, textgen: TextGenerator, name: str, max_batch: int, max_queue: int):
        self.model = textgen.model
        self.tokenizer = textgen.tokenizer
        self.name = name
        self.created = int(time.time())
        self.block_size = self.model.config.block_size
        self.engine = Engine(self.model, self.tokenizer.eot_id, max_batch, max_queue)

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise APIError(404, f"no model {model!r} here; this server has {self.name!r}", "model", "model_not_found")

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "gptlab"}

    def plan(
        self, body: SamplingFields, texts: list[str], stop: tuple[str, ...], default_max_tokens: int, logprobs, echo
    ) -> Plan:
        """Check every field; raise APIError naming the first that is wrong."""
        refused = body.refused()
        if refused:
            raise APIError(400, refused[1], param=refused[0], code="unsupported_parameter")
        if body.model is not None and body.model != self.name:
            raise APIError(
                404, f"no model {body.model!r} here; this server has {self.name!r}", "model", "model_not_found"
            )
        if body.stream_options is not None and not body.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")
        n = 1 if body.n is None else body.n
        limit = self.engine.max_batch + self.engine.max_queue
        if not 1 <= n * len(texts) <= limit:
            raise APIError(
                400,
                f"n is {n} for {len(texts)} prompt(s): a request may ask for 1 to {limit} choices in all (prompts "
                "x n), what the server's batch and queue hold (--max-batch, --max-queue)",
                param="n",
            )
        if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
            raise APIError(400, f"logprobs must be 0 to {MAX_LOGPROBS}, got {logprobs}", param="logprobs")
        max_tokens = body.max_completion_tokens if isinstance(body, ChatRequest) else None
        max_tokens = max_tokens if max_tokens is not None else body.max_tokens
        max_tokens = default_max_tokens if max_tokens is None else max_tokens
        if max_tokens < 1:
            raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
        if max_tokens > self.block_size:
            raise APIError(
                400,
                f"max_tokens is {max_tokens}, more than the model's context of {self.block_size} tokens; ask for at "
                "most that many per request (and continue from the output)",
                param="max_tokens",
                code="context_length_exceeded",
            )
        settings = SamplingSettings(
            max_new_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
            stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
            seed=body.seed,
        )
        for name in ("temperature", "top_k", "top_p", "repetition_penalty", "stop"):
            try:  # each field alone through gptlab's one range check, so the error names its field
                SamplingSettings(**{name: getattr(settings, name)}).validate()
            except GptlabError as e:
                raise APIError(400, str(e), param=name) from None
        if body.seed is not None:
            try:  # choice i samples with seed + i
                torch.Generator().manual_seed(body.seed)
                torch.Generator().manual_seed(body.seed + n * len(texts) - 1)
            except (RuntimeError, OverflowError):
                raise APIError(400, f"seed must be a 64-bit integer, got {body.seed}", param="seed") from None
        param = "prompt" if isinstance(body, CompletionRequest) else "messages"
        prompts = [self.encode(text, bool(body.truncate), param) for text in texts]
        return Plan(prompts, texts, settings, n, settings.stop + stop, logprobs, echo)

    def encode(self, text: str, truncate: bool, param: str) -> list[int]:
        """The shared window policy (generation.generate.encode_prompt): too long is an error unless truncate."""
        try:
            return encode_prompt(self.tokenizer, text, self.block_size, truncate)
        except GptlabError as e:
            try:  # if the tokenizer takes the text, it was refused for its length
                encode_prompt(self.tokenizer, text, self.block_size, truncate=True)
            except GptlabError:
                raise APIError(400, f"the prompt cannot be encoded: {e}", param, "invalid_prompt") from None
            raise APIError(400, f"{e} (here: send truncate: true)", param, "context_length_exceeded") from None

    def submit(self, plan: Plan) -> Job:
        """Queue every choice of the request at once; 429 when the server cannot take them all now."""
        job = Job(asyncio.get_running_loop())
        for index, p in enumerate(plan.prompt_of):
            seed = None if plan.settings.seed is None else plan.settings.seed + index
            job.sequences.append(
                Sequence(
                    plan.prompts[p],
                    replace(plan.settings, seed=seed),
                    job.sink(index),
                    logprobs=plan.logprobs,
                    score_prompt=plan.echo and plan.logprobs is not None,
                )
            )
            start = len(plan.texts[p]) if plan.echo else 0
            job.choices.append(ChoiceText(self.tokenizer, plan.stop, start, plan.prompts[p][-CONTEXT:]))
        try:
            self.engine.submit(job.sequences)
        except QueueFull as e:
            raise APIError(429, str(e), code="queue_full") from None
        except EngineStopped as e:
            raise APIError(503, str(e), code="shutting_down") from None
        return job

    async def updates(self, plan: Plan, job: Job) -> AsyncIterator[Update]:
        """Each choice's new text and tokens as they become final, then its finish reason. However this
        ends (all done, an error, the client gone), the job's sequences are cancelled: their rows free up."""
        try:
            if plan.echo and plan.logprobs is None:
                for index, p in enumerate(plan.prompt_of):
                    yield Update(index, plan.texts[p])
            unfinished = len(job.choices)
            while unfinished:
                index, events = await job.queue.get()
                choice = job.choices[index]
                for event in events:
                    if choice.finish_reason is not None:
                        break  # a stop string ended it while the engine ran a step further
                    if isinstance(event, Failed):
                        raise APIError(500, event.message, code="generation_failed")
                    if isinstance(event, PromptScores):
                        p = plan.prompt_of[index]
                        scored = prompt_tokens(self.tokenizer, plan.prompts[p], event) if plan.texts[p] else []
                        yield Update(index, plan.texts[p], scored)
                        continue
                    text, tokens = choice.push(event) if isinstance(event, Step) else choice.finish(event.reason)
                    if choice.finish_reason is not None:
                        job.sequences[index].cancel()
                        unfinished -= 1
                    if text or tokens or choice.finish_reason:
                        yield Update(index, text, tokens, choice.finish_reason)
        finally:
            for seq in job.sequences:
                seq.cancel()


class Completions:
    """The shapes of /v1/completions."""

    object = chunk_object = "text_completion"
    prefix = "cmpl"

    def __init__(self, tokenizer, logprobs: bool):
        self.tokenizer, self.logprobs = tokenizer, logprobs

    def start(self, count: int) -> list[dict]:
        return []

    def chunk(self, u: Update) -> dict:
        logprobs = legacy_logprobs(self.tokenizer, u.tokens) if self.logprobs else None
        return {"index": u.index, "text": u.text, "logprobs": logprobs, "finish_reason": u.finish_reason}

    def whole(self, index: int, text: str, tokens: list[TokenText], finish_reason: str) -> dict:
        return self.chunk(Update(index, text, tokens, finish_reason))


class ChatCompletions:
    """The shapes of /v1/chat/completions."""

    object, chunk_object = "chat.completion", "chat.completion.chunk"
    prefix = "chatcmpl"

    def __init__(self, tokenizer, logprobs: bool):
        self.tokenizer, self.logprobs = tokenizer, logprobs

    def start(self, count: int) -> list[dict]:
        """The first chunk of a stream names the speaker of every choice."""
        delta = {"role": "assistant", "content": ""}
        return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None} for i in range(count)]

    def chunk(self, u: Update) -> dict:
        logprobs = {"content": chat_logprobs(self.tokenizer, u.tokens)} if self.logprobs else None
        delta = {"content": u.text} if u.text or not u.finish_reason else {}
        return {"index": u.index, "delta": delta, "logprobs": logprobs, "finish_reason": u.finish_reason}

    def whole(self, index: int, text: str, tokens: list[TokenText], finish_reason: str) -> dict:
        logprobs = {"content": chat_logprobs(self.tokenizer, tokens)} if self.logprobs else None
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def respond(server: Server, plan: Plan, shape, body: SamplingFields, request: Request):
    job = server.submit(plan)
    head = {"id": f"{shape.prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.name}
    if body.stream:  # Starlette ends the stream when its client leaves, which ends server.updates
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            stream_events(server, plan, job, shape, head, include_usage), media_type="text/event-stream"
        )
    answering = asyncio.ensure_future(whole_response(server, plan, job, shape, head))
    watching = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({answering, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # a client that left cancels its answer, and with it its sequences
        watching.cancel()
        answering.cancel()
    return answering.result() if answering.done() and not answering.cancelled() else Response(status_code=499)


async def until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def whole_response(server: Server, plan: Plan, job: Job, shape, head: dict) -> JSONResponse:
    texts, tokens, finish = [""] * len(job.choices), [[] for _ in job.choices], [None] * len(job.choices)
    try:
        async for u in server.updates(plan, job):
            texts[u.index] += u.text
            tokens[u.index] += u.tokens
            finish[u.index] = u.finish_reason or finish[u.index]
    except APIError as e:
        return e.response()
    choices = [shape.whole(i, texts[i], tokens[i], finish[i]) for i in range(len(job.choices))]
    return JSONResponse({**head, "object": shape.object, "choices": choices, "usage": job.usage(plan)})


async def stream_events(server: Server, plan: Plan, job: Job, shape, head: dict, include_usage: bool):
    head = {**head, "object": shape.chunk_object}
    for choice in shape.start(len(job.choices)):
        yield sse({**head, "choices": [choice]})
    try:
        async for u in server.updates(plan, job):
            yield sse({**head, "choices": [shape.chunk(u)]})
    except APIError as e:  # the stream has begun: the error goes in it, where the openai client raises it
        yield sse(e.body())
    else:
        if include_usage:
            yield sse({**head, "choices": [], "usage": job.usage(plan)})
    yield sse("[DONE]")


def validation_error(exc: RequestValidationError) -> APIError:
    """pydantic's first complaint as one line naming the field."""
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    where = ".".join(loc) or "body"
    if error["type"] == "json_invalid":
        return APIError(400, f"the body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})")
    if error["type"] == "extra_forbidden":
        return APIError(400, f"unknown field {where!r}: docs/serving.md lists the fields gptlab takes", where)
    if error["type"] == "missing":
        return APIError(400, f"{where} is required", where)
    return APIError(400, f"{where}: {error['msg']}", where)


def served_name(source: Path) -> str:
    """The run's name for a run directory or its best/ or last/ checkpoint, else the checkpoint's."""
    from gptlab.checkpoint import RunDir, resolve_checkpoint

    ckpt = resolve_checkpoint(source)
    run = RunDir(ckpt.parent)
    return run.path.name if run.is_run() and ckpt.name in (run.best.name, run.last.name) else ckpt.name


def create_app(
    source: str | Path | TextGenerator,
    *,
    api_key: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    max_body_bytes: int = 1 << 20,
    model_name: str | None = None,
    device: str = "auto",
    threads: int = 0,
) -> FastAPI:
    """The server for a run or checkpoint directory (or a loaded TextGenerator, e.g. in a notebook).

    api_key: when set, /v1 requests need `Authorization: Bearer KEY`. max_batch: sequences decoded
    together; max_queue: sequences that may wait beyond those (more: 429). The engine's worker thread
    runs while the app does (its lifespan). model_name: the id clients send (default: the run's name).
    device and threads: as for `gptlab sample` (threads 0: OMP_NUM_THREADS, else the cores available).
    app.state.server has the model, tokenizer, name and engine, for routes added beside these."""
    if max_batch < 1 or max_queue < 0 or max_body_bytes < 1:
        raise GptlabError(
            f"max batch must be >= 1, max queue >= 0 and max body bytes >= 1 (got {max_batch}, {max_queue}, "
            f"{max_body_bytes})"
        )
    if isinstance(source, TextGenerator):
        textgen, name = source, "gptlab"
    else:
        from gptlab.generation import load

        textgen, name = load(source, device, threads=threads), served_name(Path(source))
    server = Server(textgen, model_name or name, max_batch, max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.engine.start()
        try:
            yield
        finally:
            server.engine.stop()

    app = FastAPI(title="gptlab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the API is under /v1 (docs/serving.md)"
        else:
            message = f"{request.method} {request.url.path}: {exc.detail}"
        return APIError(exc.status_code, message).response()

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(
                401, "an API key is required: send the header Authorization: Bearer KEY", None, "missing_api_key"
            )
        if not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "incorrect API key", None, "invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.name, **server.engine.stats()}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [server.card()]}

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != server.name:
            raise APIError(
                404, f"no model {model_id!r} here; this server has {server.name!r}", "model", "model_not_found"
            )
        return server.card()

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise APIError(400, "prompt is an empty list; send a string or a list of strings", "prompt")
        plan = server.plan(body, texts, (), DEFAULT_COMPLETION_TOKENS, body.logprobs, bool(body.echo))
        shape = Completions(server.tokenizer, body.logprobs is not None)
        return await respond(server, plan, shape, body, request)

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        plan = server.plan(body, [chat.render(body.messages)], chat.TURN_STOPS, server.block_size, logprobs, False)
        shape = ChatCompletions(server.tokenizer, body.logprobs is True)
        return await respond(server, plan, shape, body, request)

    from gptlab.serving import playground  # it builds on this module's APIError and Server

    v1.include_router(playground.inspect_router(server))
    app.include_router(v1)
    app.include_router(playground.page_router())  # the web playground at /
    return app
