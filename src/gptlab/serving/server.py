"""`gptlab serve`: the app under uvicorn, on a socket bound before it starts, so the printed URL is real
(--port 0 picks a free port). uvicorn stops on Ctrl-C or SIGTERM: it finishes the responses under way
for up to GRACE seconds, then the engine's thread ends."""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.serving import require_server_libraries

GRACE = 5  # seconds uvicorn gives open responses at shutdown


def listening_socket(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:  # getaddrinfo would wrap 70000 round to 4464
        raise GptlabError(f"--port must be 0 to 65535 (0: a free port), got {port}")
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
    threads: int = 0,
) -> None:
    """Serve a run or checkpoint until Ctrl-C or SIGTERM."""
    require_server_libraries()
    import uvicorn

    from gptlab.serving.app import create_app

    sock = listening_socket(host, port)  # first: a taken port fails before the model loads
    try:
        app = create_app(
            source, api_key=api_key, max_batch=max_batch, max_queue=max_queue, device=device, threads=threads
        )
        shown = f"[{host}]" if ":" in host else host
        name = app.state.server.name
        print(f"gptlab: serving {name!r} at http://{shown}:{sock.getsockname()[1]}/v1 (OpenAI API); Ctrl-C stops")
        print(f"gptlab: the playground is at http://{shown}:{sock.getsockname()[1]}/")
        if not is_loopback(host) and api_key is None:
            print(
                f"gptlab: warning: {host} is reachable from other machines and no --api-key is set: anyone who can "
                "reach it can use the model",
                file=sys.stderr,
            )
        sys.stdout.flush()

        class Server(uvicorn.Server):
            @contextmanager
            def capture_signals(self):
                """Ctrl-C or SIGTERM stop the server gracefully (a second Ctrl-C at once); unlike uvicorn's
                own handling, the signal is not raised again afterwards, so a clean stop exits with 0."""
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACE)).run(sockets=[sock])
    finally:
        sock.close()
    print("gptlab: server stopped", flush=True)
