"""The web playground: the page at / and POST /v1/inspect, the numbers behind its "look inside" panel.

The page is static HTML, CSS and JS shipped in gptlab/serving/static (no CDN, no build step): a
client of the server's own /v1/completions (streamed, with logprobs) and of /v1/inspect. The
inspect numbers come from the functions that draw `gptlab inspect`'s pictures
(evaluation.inspect.prompt_attention and top_next_tokens), so the page and the PNGs agree.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from gptlab.errors import GptlabError
from gptlab.evaluation import inspect
from gptlab.serving.app import APIError, Server

STATIC = Path(__file__).parent / "static"
# the page's files, served under /playground/ (a fixed list: nothing else on disk is reachable)
FILES = {
    "playground.css": "text/css",
    "playground.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
MAX_WINDOW = 128  # attention among at most this many tokens: more cells than a page can label


class InspectRequest(BaseModel):
    """POST /v1/inspect: what the model computes for a text, read as the start of a document."""

    model_config = ConfigDict(extra="forbid", strict=True)  # as the completions bodies: no field ignored

    model: str | None = None
    prompt: str
    layer: int = Field(0, ge=0)  # whose heads' attention is sent
    window: int = Field(48, ge=1, le=MAX_WINDOW)  # attention among the last `window` tokens
    top: int = Field(10, ge=1, le=100)  # next-token candidates
    temperature: float = Field(1.0, gt=0)  # of the next-token distribution


def inspection(lm: inspect.LanguageModel, req: InspectRequest) -> dict:
    """The answer: the model's shape, token labels, one layer's attention (every head), the next tokens.

    The attention is computed over the whole text the model sees, then its last `window` rows and
    columns are sent: every weight is the model's own, and a row sums to less than 1 where the
    earlier tokens, not sent, took the rest."""
    try:
        inspect.attention_blocks(lm.model)
    except GptlabError as e:  # the bigram model
        raise APIError(400, str(e), "model") from None
    try:
        attention = inspect.prompt_attention(lm, req.prompt)
        nxt = inspect.top_next_tokens(lm, req.prompt, req.top, (req.temperature,))
    except GptlabError as e:  # a text the tokenizer cannot encode
        raise APIError(400, str(e), "prompt") from None
    try:
        layer = attention.check_layer(req.layer)
    except GptlabError as e:
        raise APIError(400, str(e), "layer") from None
    start = max(0, len(attention.ids) - req.window)
    return {
        "object": "inspection",
        "n_layer": len(attention.weights),
        "n_head": attention.weights[0].size(0),
        "block_size": lm.model.config.block_size,
        "context_tokens": len(attention.ids),
        "truncated": len(lm.tokenizer.encode(req.prompt)) + 1 > len(attention.ids),  # the text's start unseen
        "start": start,
        "tokens": [{"id": i, "label": label} for i, label in zip(attention.ids[start:], attention.labels[start:])],
        "layer": layer,
        "attention": attention.weights[layer][:, start:, start:].double().round(decimals=4).tolist(),
        "temperature": req.temperature,
        "next_tokens": [
            {"id": i, "label": label, "prob": round(p, 6)}
            for i, label, p in zip(nxt.ids, nxt.labels, nxt.probs[0].tolist())
        ],
    }


def inspect_router(server: Server) -> APIRouter:
    """POST /inspect (the app mounts it under /v1, behind the API key like the other /v1 routes).

    The inspection runs in the engine's thread between two decoding steps: attention_weights switches
    the model's attention to its explicit path and hooks it for one forward pass, which no other
    request may run through meanwhile."""
    router = APIRouter()

    @router.post("/inspect")
    def inspect_text(req: InspectRequest) -> dict:
        if req.model is not None:
            server.check_model(req.model)
        return server.engine.call(lambda: inspection(server, req))

    return router


def page_router() -> APIRouter:
    """GET / (the page) and GET /playground/NAME (its files); no API key: they hold no model output."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/playground/{name}", include_in_schema=False)
    def static_file(name: str) -> FileResponse:
        if name not in FILES:
            raise APIError(404, f"no file {name!r} in the playground; it has {', '.join(FILES)}", "name")
        return FileResponse(STATIC / name, media_type=FILES[name])

    return router
