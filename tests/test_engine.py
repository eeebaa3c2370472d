"""The serving engine without HTTP: newcomers admitted in one step are prefilled together (their
shorter prompts padded) and still get exactly what each gets alone."""

import threading

import pytest
import torch

from gptlab.generation.sampling import SamplingSettings
from gptlab.models import GPT
from gptlab.serving.engine import Engine, Finished, PromptScores, Sequence, Step


def run_together(model: GPT, specs: list[dict], max_batch: int = 8) -> list[dict]:
    """Submit every spec in one call (so one step admits them all); each spec's steps, scores and finish."""
    engine = Engine(model, stop_token=None, max_batch=max_batch)
    results = [{"tokens": [], "logprobs": [], "scores": None, "finish": None} for _ in specs]
    done = threading.Semaphore(0)

    def sink(result: dict):
        def take(events):
            for event in events:
                if isinstance(event, Step):
                    result["tokens"].append(event.token)
                    result["logprobs"].append(event.logprob)
                elif isinstance(event, PromptScores):
                    result["scores"] = [s.logprob for s in event.steps]
                elif isinstance(event, Finished):
                    result["finish"] = event.reason
                    done.release()
                else:
                    raise AssertionError(event)

        return take

    engine.start()
    try:
        engine.submit([Sequence(sink=sink(r), **spec) for spec, r in zip(specs, results)])
        for _ in specs:
            assert done.acquire(timeout=60)
    finally:
        engine.stop()
    return results


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config)


def test_newcomers_prefilled_together_get_what_each_gets_alone(model):
    greedy = SamplingSettings(max_new_tokens=6, temperature=0.0)
    seeded = SamplingSettings(max_new_tokens=6, temperature=1.0, top_k=10, seed=7)
    specs = [  # prompt lengths 1 to 12 (block 16), so the shorter windows are padded; one row scores its prompt
        dict(prompt=[3], settings=greedy, logprobs=2),
        dict(prompt=list(range(5, 17)), settings=greedy, logprobs=2),
        dict(prompt=[9, 8, 7], settings=seeded, logprobs=2),
        dict(prompt=[1, 2, 3, 4, 5, 6], settings=greedy, logprobs=2, score_prompt=True),
        dict(prompt=[40, 41, 42, 43, 44], settings=seeded, logprobs=2),
    ]
    forward = model.forward
    prefill_rows = []

    def counting_forward(idx, *args, **kwargs):
        if idx.size(1) > 1:
            prefill_rows.append(idx.size(0))
        return forward(idx, *args, **kwargs)

    model.forward = counting_forward
    together = run_together(model, specs)
    # the four plain rows in one pass (the 1-token prompt's empty window is all padding), the scored prompt
    # alone, then the 12-token prompt's window re-prefilled alone when it outgrows the block (16)
    assert prefill_rows == [4, 1, 1]
    for spec, got in zip(specs, together):
        alone = run_together(model, [spec])[0]
        assert got["tokens"] == alone["tokens"] and got["finish"] == alone["finish"] == "length"
        assert got["logprobs"] == pytest.approx(alone["logprobs"], abs=1e-5)
        assert (got["scores"] is None) == (alone["scores"] is None)
        if got["scores"] is not None:
            assert got["scores"] == pytest.approx(alone["scores"], abs=1e-5)
