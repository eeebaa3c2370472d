"""The request bodies the server accepts: OpenAI's fields, gptlab's extensions, nothing else.

Types are checked strictly (a string is not a number) and an unknown field is an error, so no field
is ever ignored without a word. Fields of OpenAI's API that gptlab cannot honour are accepted only at
their neutral value (a frequency penalty of 0, no logit bias, ...) and refused otherwise (see
`refused`); docs/serving.md lists every field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_LOGPROBS = 20  # alternatives per token, as vLLM allows (OpenAI: 5 for completions, 20 for chat)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    """What completions and chat share. None means the default written beside each field."""

    model: str | None = None  # the served model's id (/v1/models); None: the served model
    max_tokens: int | None = None  # completions: 16; chat: the model's context
    temperature: float | None = None  # 1.0; 0 = greedy
    top_p: float | None = None  # 1.0 (all tokens)
    n: int | None = None  # 1: choices per prompt
    stop: str | list[str] | None = None
    seed: int | None = None  # None: fresh randomness; choice i of a request uses seed + i
    stream: bool | None = None  # False
    stream_options: StreamOptions | None = None
    user: str | None = None  # ignored: an end-user id for OpenAI's abuse monitoring, nothing to do here
    # OpenAI fields gptlab refuses unless they are neutral (see `refused`)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # gptlab's extensions
    top_k: int | None = None  # None or 0: all tokens
    repetition_penalty: float | None = None  # 1.0: none
    truncate: bool | None = None  # False: a prompt longer than the context is an error; True: keep its end

    def refused(self) -> tuple[str, str] | None:
        """(field, why) for the first field set to something gptlab cannot do, else None."""
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0):
                return name, f"{name} is not supported; use repetition_penalty (a gptlab extension) instead"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        return None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = None  # None: no logprobs; N: each token's logprob and its N likeliest alternatives
    echo: bool | None = None  # False; True: the prompt comes back before the completion (scored with logprobs)
    best_of: int | None = None  # only None or n: gptlab does not rank candidates
    suffix: str | None = None  # only None: gptlab models do not fill in the middle

    def refused(self) -> tuple[str, str] | None:
        if self.best_of is not None and self.best_of != (self.n or 1):
            return "best_of", "best_of is not supported (gptlab returns every choice it generates); leave it out"
        if self.suffix is not None:
            return "suffix", "suffix (fill in the middle) is not supported; leave it out"
        return super().refused()


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens
    logprobs: bool | None = None  # False
    top_logprobs: int | None = None  # alternatives per token, with logprobs

    def refused(self) -> tuple[str, str] | None:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            return "max_completion_tokens", "give max_tokens or max_completion_tokens, not both"
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        return super().refused()
