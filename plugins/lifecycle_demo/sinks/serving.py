"""What the local servers share: an HTTP server on a thread of its own (start, stop, a context
manager, the port it got), and a command line that serves until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OwnedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: BackgroundHTTPServer  # what the handlers answer for (self.server.owner)


class BackgroundHTTPServer:
    """A ThreadingHTTPServer on a daemon thread. Subclasses give `name` (errors, the thread) and
    `handler_class()`; ``port=0`` picks a free port."""

    name = "local server"
    allow_reuse_address = False

    def __init__(self, host: str, port: int) -> None:
        self.host, self._requested_port = host, port
        self._httpd: OwnedHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{self.name} not started")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self):
        if self._httpd is not None:
            raise RuntimeError(f"{self.name} already started")
        httpd = OwnedHTTPServer((self.host, self._requested_port), self.handler_class(), bind_and_activate=False)
        httpd.allow_reuse_address, httpd.owner = self.allow_reuse_address, self
        try:
            httpd.server_bind()
            httpd.server_activate()
        except OSError:
            httpd.server_close()
            raise
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        self._stopped()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _stopped(self) -> None:
        """After the server stopped listening, before its thread is joined (a subclass's clean-up)."""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_until_signalled(stop: Callable[[], None]) -> int:
    """Block until SIGINT or SIGTERM (the command-line servers), then `stop()`; exit code 0."""
    signalled = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: signalled.set())
    try:
        while not signalled.wait(0.5):
            pass
    finally:
        stop()
    return 0
