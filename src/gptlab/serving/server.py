"""`gptlab serve`: the app under uvicorn, on a socket bound before it starts, so the printed URL is real
(--port 0 picks a free port). uvicorn stops on Ctrl-C or SIGTERM: it finishes the responses under way
for up to GRACE seconds, then the engine's thread ends."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.serving import require_server_libraries

GRACE = 5  # seconds uvicorn gives open responses at shutdown


def listening_socket(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise GptlabError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --host or --port"
        ) from None
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    source: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    device: str = "auto",
) -> None:
    """Serve a run or checkpoint until Ctrl-C or SIGTERM."""
    require_server_libraries()
    import uvicorn

    from gptlab.serving.app import create_app

    app = create_app(source, api_key=api_key, max_batch=max_batch, max_queue=max_queue, device=device)
    sock = listening_socket(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    name = app.state.server.name
    print(f"gptlab: serving {name!r} at http://{shown}:{bound_port}/v1 (OpenAI API); Ctrl-C stops", flush=True)
    print(f"gptlab: the playground is at http://{shown}:{bound_port}/", flush=True)
    if not is_loopback(host) and api_key is None:
        print(
            f"gptlab: warning: {host} is reachable from other machines and no --api-key is set: anyone who can "
            "reach it can use the model",
            file=sys.stderr,
            flush=True,
        )
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACE)
    uvicorn.Server(config).run(sockets=[sock])
    print("gptlab: server stopped", flush=True)
