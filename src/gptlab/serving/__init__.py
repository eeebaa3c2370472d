"""Serving: an OpenAI-compatible HTTP API over a batch scheduler (continuous batching).

    from gptlab.serving import create_app      # the FastAPI app, for tests, notebooks or any ASGI server
    from gptlab.serving import serve           # what `gptlab serve` runs: the app under uvicorn

FastAPI and uvicorn are an optional extra (pip install 'gptlab[serve]'); without them both names
raise a one-line GptlabError saying so. engine.py, the scheduler, needs neither.
"""

from __future__ import annotations

from gptlab.errors import GptlabError

INSTALL_HINT = "gptlab serve needs FastAPI and uvicorn: pip install 'gptlab[serve]'"


def require_server_libraries() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise GptlabError(INSTALL_HINT) from None


def __getattr__(name: str):
    if name == "create_app":
        require_server_libraries()
        from gptlab.serving.app import create_app

        return create_app
    if name == "serve":
        from gptlab.serving.server import serve

        return serve
    raise AttributeError(f"module 'gptlab.serving' has no attribute {name!r}")


__all__ = ["create_app", "serve"]
