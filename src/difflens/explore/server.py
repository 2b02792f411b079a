"""Running the application with uvicorn: in the foreground for the commands, or on a background thread
on a free loopback port for tests and benchmarks. No access log (prompts and tokens must not end up in
one)."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["serve_forever", "ThreadedServer"]


def _config(app: Any, host: str, port: int, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, access_log=False, log_level=log_level, lifespan="off",
                          timeout_graceful_shutdown=2)


def serve_forever(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.Server(_config(app, host, port, log_level)).run()


class ThreadedServer:
    """uvicorn on a thread, listening on ``host`` at ``port`` (0: a free port, read from :attr:`port`)."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.server = uvicorn.Server(_config(app, host, self.port, log_level))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # (older uvicorn)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="difflens-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "ThreadedServer":
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
