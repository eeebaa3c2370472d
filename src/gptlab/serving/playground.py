"""The web playground: the page at / and /v1/inspect, the numbers behind its "look inside" panel.

The page is static HTML, CSS and JS shipped in gptlab/serving/static (no CDN, no build step): a
client of the server's own /v1/completions (streaming, with logprobs) and of /v1/inspect. The
inspect numbers come from the functions that draw `gptlab inspect`'s pictures
(evaluation.inspect.prompt_attention and top_next_tokens), so the page and the PNGs agree.
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gptlab.errors import GptlabError
from gptlab.evaluation import inspect

STATIC = Path(__file__).parent / "static"
# the page's files, served under /playground/ (a fixed list: nothing else on disk is reachable)
FILES = {
    "playground.css": "text/css",
    "playground.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
MAX_WINDOW = 128  # tokens of attention sent at most: 128 x 128 per head is already more than a page can label


class InspectRequest(BaseModel):
    """POST /v1/inspect: what the model makes of a text, read as the start of a document."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is refused, never ignored

    model: str | None = None
    prompt: str
    layer: int = Field(0, ge=0, description="the layer whose heads' attention is returned")
    window: int = Field(48, ge=1, le=MAX_WINDOW, description="attention among the last `window` tokens only")
    top: int = Field(10, ge=1, le=100, description="how many next-token candidates")
    temperature: float = Field(1.0, gt=0, description="the temperature of the next-token distribution")


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    """OpenAI's error shape, as the completions endpoints answer."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status
    )


def inspection(lm: inspect.LanguageModel, req: InspectRequest) -> dict:
    """The JSON answer: token labels, one layer's attention (every head) and the next-token candidates.

    The attention is computed over the whole text the model sees, then its last `window` rows and
    columns are sent: each weight is the model's own, and a row sums to less than 1 where the
    earlier tokens, not sent, took the rest. Raises GptlabError for a text the tokenizer cannot
    encode, a layer the model lacks, or a model without attention."""
    attention = inspect.prompt_attention(lm, req.prompt)
    layer = attention.check_layer(req.layer)
    start = max(0, len(attention.ids) - req.window)
    nxt = inspect.top_next_tokens(lm, req.prompt, req.top, (req.temperature,))
    return {
        "object": "inspection",
        "n_layer": len(attention.weights),
        "n_head": attention.weights[0].size(0),
        "block_size": lm.model.config.block_size,
        "context_tokens": len(attention.ids),
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


def playground_router(lm: inspect.LanguageModel, model_id: str, lock: threading.Lock) -> APIRouter:
    """The page's routes for a server of `lm` (its model and tokenizer) named `model_id`.

    `lock` is held around each inspection: attention_weights switches the model's attention to its
    explicit path and hooks it for one forward pass, which nothing else may run through meanwhile."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/playground/{name}", include_in_schema=False)
    def static_file(name: str):
        if name not in FILES:
            return error(404, f"no file {name!r} in the playground", kind="not_found_error")
        return FileResponse(STATIC / name, media_type=FILES[name])

    @router.post("/v1/inspect")
    def inspect_text(req: InspectRequest):
        if req.model is not None and req.model != model_id:
            return error(404, f"the model {req.model!r} does not exist; this server has {model_id!r}", "model")
        try:
            with lock:
                return inspection(lm, req)
        except GptlabError as e:
            return error(400, str(e))

    return router
