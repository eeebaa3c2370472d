"""The batch scheduler behind the server: continuous batching over one batched KV cache.

Every choice of every request is a Sequence. Sequences wait in a queue; a worker thread runs steps:
1. drop rows whose client went away or that finished;
2. admit waiting sequences into free rows of the cache and prefill their prompts (all but the last
   token): the newcomers of a step together, in one forward pass over their rows (padded at the end),
   or alone where a prompt's own tokens are scored (echo with logprobs);
3. one forward pass over every live row together, each row at its own position (KVCache keeps a
   length per row), which gives every row the logits of its next token;
4. pick each row's token with that row's own settings and random generator
   (gptlab.generation.sampling.sample_next), and hand it to the sequence's sink.

A row never sees another row, so a greedy or seeded sequence gets the same tokens alone and in a full
batch. Past the model's context each row follows gptlab.generation.generate's policy: its window
restarts from its newest block_size // 2 tokens, re-prefilled.

Live rows are packed at the front of the cache (a finished row's place is taken by the last one), so
a step's forward pass runs on exactly the live rows. Everything is bounded: the cache holds max_batch
rows of block_size positions, at most max_queue sequences wait beyond the free rows, and a sequence
holds at most its prompt and max_new_tokens tokens.

The worker runs model steps in its own thread (torch releases the GIL while it computes), so an
asyncio server stays responsive; sinks are called from that thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from gptlab.generation.sampling import SamplingSettings, sample_next

GREEDY = SamplingSettings(temperature=0.0)
PREFILL_TOKENS = 2048  # most positions (padding included) one prefill pass may take: bounds its attention memory


@dataclass
class Step:
    """One token, with its log-probability and the most likely alternatives when they were asked for."""

    token: int
    logprob: float | None = None  # log p(token | text before it) under the model's own distribution
    top: list[tuple[int, float]] | None = None  # (token, logprob) of the likeliest tokens there, best first


@dataclass
class PromptScores:
    """The prompt's own tokens scored (echo with logprobs): a Step for each token after the first."""

    steps: list[Step]


@dataclass
class Finished:
    reason: str  # "stop": the end-of-text token; "length": max_new_tokens reached


@dataclass
class Failed:
    message: str


Event = Step | PromptScores | Finished | Failed


@dataclass(eq=False)
class Sequence:
    """One text being generated: the prompt, how to sample, and where its tokens go."""

    prompt: list[int]
    settings: SamplingSettings  # max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed
    sink: Callable[[list[Event]], None]  # called from the worker thread with each step's events
    logprobs: int | None = None  # report each token's logprob and this many alternatives (None: no logprobs)
    score_prompt: bool = False  # also score the prompt's tokens (needs logprobs)
    cancelled: bool = False  # set by the client's side; the worker drops the row at its next step
    tokens: list[int] = field(init=False)  # the prompt, then each new token
    start: int = field(init=False, default=0)  # first token inside the model's window
    generated: int = field(init=False, default=0)
    generator: torch.Generator | None = field(init=False, default=None)
    seen: torch.Tensor | None = field(init=False, default=None)  # tokens in the text, for the repetition penalty

    def __post_init__(self):
        if not self.prompt:
            raise ValueError("a sequence needs at least one prompt token (e.g. the end-of-text token)")
        self.tokens = list(self.prompt)

    def cancel(self) -> None:
        self.cancelled = True


class QueueFull(Exception):
    """More sequences than the free rows and the queue can take now."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no more work."""


class Engine:
    def __init__(self, model: torch.nn.Module, stop_token: int | None, max_batch: int = 16, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model = model.eval()
        self.stop_token = stop_token  # end-of-text: a sequence that samples it is finished
        self.block_size = model.config.block_size
        self.vocab_size = model.config.vocab_size
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(max_batch, self.block_size)
        self.live: list[Sequence] = []  # row i of the cache holds live[i]
        self.waiting: deque[Sequence] = deque()
        self.calls: deque[tuple[Callable, Future]] = deque()  # work to run between two steps (call)
        self.rows_taken = 0  # live rows plus rows being admitted, counted under the lock
        self.steps = 0  # forward passes over the batch so far
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.stopping = False
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the client's side (any thread)

    def start(self) -> None:
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="gptlab-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Finish the step under way, fail what is left, end the worker thread."""
        with self.lock:
            self.stopping = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        for seq in [*self.live, *self.waiting]:
            seq.sink([Failed("the server is shutting down")])
        for _, future in self.calls:
            future.set_exception(EngineStopped("the server is shutting down"))
        self.calls.clear()
        self.live.clear()
        self.waiting.clear()

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue the sequences, all or none: QueueFull when the free rows and the queue cannot take them all."""
        with self.lock:
            if self.stopping:
                raise EngineStopped("the server is shutting down")
            capacity = self.max_batch - self.rows_taken + self.max_queue - len(self.waiting)
            if len(sequences) > capacity:
                raise QueueFull(
                    f"the server is busy: {self.rows_taken} sequences are running and {len(self.waiting)} waiting "
                    f"(at most {self.max_batch} + {self.max_queue}); retry shortly"
                )
            self.waiting.extend(sequences)
            self.wake.notify()

    def call(self, fn: Callable):
        """fn() run in the worker thread between two steps, where nothing else uses the model (the
        playground's inspection hooks the model for one forward pass); its result, or its exception."""
        future = Future()
        with self.lock:
            if self.stopping:
                raise EngineStopped("the server is shutting down")
            worker = self.thread is not None  # without one, nothing else runs the model
            if worker:
                self.calls.append((fn, future))
                self.wake.notify()
        return future.result() if worker else fn()

    def stats(self) -> dict[str, int]:
        return {
            "running": self.rows_taken,
            "waiting": len(self.waiting),
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            "steps": self.steps,
        }

    # ------------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.lock:
                    while not self.stopping and not self.waiting and not self.live and not self.calls:
                        self.wake.wait()
                    if self.stopping:
                        return
                    calls, self.calls = self.calls, deque()
                    admitted = []
                    while self.waiting and self.rows_taken < self.max_batch:
                        seq = self.waiting.popleft()
                        if not seq.cancelled:
                            admitted.append(seq)
                            self.rows_taken += 1
                for fn, future in calls:
                    try:
                        future.set_result(fn())
                    except Exception as e:  # the caller's to handle
                        future.set_exception(e)
                try:
                    self._step(admitted)
                except Exception as e:  # a failed step fails the sequences in it, not the server
                    failed = [s for s in self.live if s not in admitted] + admitted
                    for seq in failed:
                        seq.sink([Failed(f"generation failed: {type(e).__name__}: {e}")])
                    self.live.clear()
                    self.cache.reset()
                    with self.lock:
                        self.rows_taken = 0

    def _step(self, admitted: list[Sequence]) -> None:
        self._release([i for i, seq in enumerate(self.live) if seq.cancelled])
        events: dict[int, list[Event]] = {}
        for seq in admitted:
            seq.start = max(0, len(seq.tokens) - self.block_size)
        # Newcomers whose prompts nobody scores are prefilled together, shortest first (least padding);
        # those that score their prompt need its logits and go alone after them.
        plain = sorted((s for s in admitted if not s.score_prompt), key=lambda s: len(s.tokens) - s.start)
        self.live.extend(plain)
        self._prefill_together(len(self.live) - len(plain), plain)
        for seq in admitted:
            if seq.score_prompt:
                self.live.append(seq)
                events[len(self.live) - 1] = [self._prefill_scored(len(self.live) - 1, seq)]
        for seq in admitted:
            if seq.settings.repetition_penalty != 1.0:
                seq.seen = torch.zeros((1, self.vocab_size), dtype=torch.bool, device=self.device)
                seq.seen[0, seq.tokens] = True
            seq.generator = torch.Generator(device=self.device)
            if seq.settings.seed is None:
                seq.generator.seed()
            else:
                seq.generator.manual_seed(seq.settings.seed)
        for row, seq in enumerate(self.live):
            if len(seq.tokens) - seq.start > self.block_size:  # the window is full: keep its newest half
                seq.start = len(seq.tokens) - max(1, self.block_size // 2)
                self._prefill_group(row, [seq])
        if not self.live:
            return
        live = self.live
        last = torch.tensor([[seq.tokens[-1]] for seq in live], dtype=torch.long, device=self.device)
        logits = self.model(last, cache=self.cache.rows(0, len(live)))[0][:, -1]  # (rows, vocab)
        self.steps += 1
        chosen = self._sample(logits, live)
        reports = self._logprobs(logits, chosen, live)
        finished = []
        for row, (seq, token) in enumerate(zip(live, chosen.tolist())):
            out = events.setdefault(row, [])
            seq.generated += 1
            if token == self.stop_token:
                out.append(Finished("stop"))
                finished.append(row)
                continue
            seq.tokens.append(token)
            if seq.seen is not None:
                seq.seen[0, token] = True
            logprob, top = reports.get(row, (None, None))
            out.append(Step(token, logprob, top))
            if seq.generated >= seq.settings.max_new_tokens:
                out.append(Finished("length"))
                finished.append(row)
        for row, out in events.items():
            if not live[row].cancelled:
                live[row].sink(out)
        self._release(finished)

    def _prefill_together(self, first: int, sequences: list[Sequence]) -> None:
        """Prefill rows first, first + 1, ... with these sequences' windows but the last token, in as few
        forward passes as PREFILL_TOKENS allows (each on a group of rows, the shorter windows padded at
        their end). Padding sits after a row's real tokens, which attend only to earlier positions, so
        their keys and values are those of the row alone; each row's length is then set to its window,
        and its next token overwrites the padding."""
        group: list[Sequence] = []
        for seq in sequences:  # shortest window first
            if group and (len(group) + 1) * (len(seq.tokens) - 1 - seq.start) > PREFILL_TOKENS:
                self._prefill_group(first, group)
                first += len(group)
                group = []
            group.append(seq)
        if group:
            self._prefill_group(first, group)

    def _prefill_group(self, first: int, group: list[Sequence]) -> None:
        """Fill rows first, first + 1, ... with each window's tokens but the last (the batched step feeds
        that one), in one forward pass."""
        cache = self.cache.rows(first, first + len(group))
        cache.reset()
        windows = [seq.tokens[seq.start : -1] for seq in group]
        longest = max(len(w) for w in windows)
        if longest == 0:
            return
        idx = torch.tensor([w + [0] * (longest - len(w)) for w in windows], dtype=torch.long, device=self.device)
        self.model(idx, cache=cache, logits=False)
        cache.lengths.copy_(torch.tensor([len(w) for w in windows]))

    def _prefill_scored(self, row: int, seq: Sequence) -> PromptScores:
        """Prefill row like _prefill_group, and score the prompt's tokens on the way (echo with logprobs)."""
        cache = self.cache.rows(row, row + 1)
        cache.reset()
        window = seq.tokens[seq.start : -1]
        if not window:
            return PromptScores([])
        idx = torch.tensor([window], dtype=torch.long, device=self.device)
        logits = self.model(idx, cache=cache)[0]
        # position t predicts token t + 1: every prompt token after the first gets its logprob
        targets = torch.tensor(seq.tokens[seq.start + 1 :], device=self.device)
        reports = report(torch.log_softmax(logits[0].float(), dim=-1), targets, seq.logprobs or 0)
        return PromptScores([Step(token, lp, top) for token, (lp, top) in zip(targets.tolist(), reports)])

    def _sample(self, logits: torch.Tensor, live: list[Sequence]) -> torch.Tensor:
        """Each row's next token with its own settings; greedy rows without a penalty share one argmax."""
        greedy = [i for i, seq in enumerate(live) if seq.settings.temperature == 0 and seq.seen is None]
        if len(greedy) == len(live):  # no copy of the logits when every row is greedy
            return sample_next(logits, GREEDY)[:, 0]
        chosen = torch.empty(len(live), dtype=torch.long, device=self.device)
        if greedy:
            chosen[greedy] = sample_next(logits[greedy], GREEDY)[:, 0]
        for i, seq in enumerate(live):
            if seq.settings.temperature != 0 or seq.seen is not None:
                chosen[i] = sample_next(logits[i : i + 1], seq.settings, seq.generator, seq.seen)[0, 0]
        return chosen

    def _logprobs(
        self, logits: torch.Tensor, chosen: torch.Tensor, live: list[Sequence]
    ) -> dict[int, tuple[float, list[tuple[int, float]]]]:
        """Row -> (logprob of its token, its top alternatives) for the rows that asked, under the model's
        own distribution (before temperature, top-k, top-p or the repetition penalty)."""
        rows = [i for i, seq in enumerate(live) if seq.logprobs is not None]
        if not rows:
            return {}
        k = max(live[i].logprobs for i in rows)
        reports = report(torch.log_softmax(logits[rows].float(), dim=-1), chosen[rows], k)
        return {i: (lp, top[: live[i].logprobs]) for i, (lp, top) in zip(rows, reports)}

    def _release(self, rows: list[int]) -> None:
        """Free these rows: the last live row moves into each freed place, so live rows stay packed."""
        if not rows:
            return
        for row in sorted(rows, reverse=True):
            last = len(self.live) - 1
            if row != last:
                self.cache.move_row(last, row)
                self.live[row] = self.live[last]
            self.live.pop()
        with self.lock:
            self.rows_taken -= len(rows)


def report(logprobs: torch.Tensor, tokens: torch.Tensor, k: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """For each row of logprobs (R, vocab): the logprob of its token in `tokens` (R,) and its k likeliest
    (token, logprob), best first."""
    picked = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
    k = min(k, logprobs.size(-1))
    if k == 0:
        return [(lp, []) for lp in picked]
    values, ids = logprobs.topk(k, dim=-1)
    return [(lp, list(zip(i, v))) for lp, i, v in zip(picked, ids.tolist(), values.tolist())]
