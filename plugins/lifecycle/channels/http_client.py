"""The SMS and push senders' HTTP client: urllib3 connection pools kept alive for a batch, and
every failure sorted by one question, had the request started to leave?

    before it started   NotSent: nothing reached the provider (connection refused, DNS, connect
                        timeout, TLS handshake, proxy, URL): the sender may say ChannelUnavailable
    after it started    Lost (`timed_out` for a timeout): the provider may have the message

Connecting (to the server or a proxy, the TLS handshake included) always happens before the
request starts; a connection the server closed while it was idle is replaced before it is used.
Nothing is retried or redirected here: the senders decide (Retry-After, lookups).

Why not httpx or requests, which the senders used before: on a loopback to the local provider
servers they spent 0.58 and 0.83 ms of CPU per request, urllib3 (under requests) 0.27 ms. On a
machine whose cores are busy, that CPU is what a send task's rate follows.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ProtocolError, ReadTimeoutError

_wire = threading.local()  # .started: the calling thread's request began to go out


class _Marking:
    """Notes, for the calling thread, the moment a request starts to leave: after the connection
    is made (urllib3 connects a plain-HTTP connection inside `request`; HTTPS ones are connected
    by the pool before it)."""

    sock: Any

    def request(self, *args, **kwargs):
        if self.sock is None:
            self.connect()  # type: ignore[attr-defined]
        _wire.started = True
        return super().request(*args, **kwargs)  # type: ignore[misc]


class MarkedHTTPConnection(_Marking, HTTPConnection):
    pass


class MarkedHTTPSConnection(_Marking, HTTPSConnection):
    pass


def pool_classes(http: type[HTTPConnection], https: type[HTTPSConnection]) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3's pool class per scheme, making connections of the given classes (a PoolManager's
    `pool_classes_by_scheme`)."""
    return {"http": type(f"{http.__name__}Pool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type(f"{https.__name__}Pool", (HTTPSConnectionPool,), {"ConnectionCls": https})}


POOLS = pool_classes(MarkedHTTPConnection, MarkedHTTPSConnection)


class WireError(Exception):
    """No reply came; `error` is urllib3's (or the socket's) exception."""

    def __init__(self, error: Exception):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


class NotSent(WireError):
    """Nothing of the request left this machine."""


class Lost(WireError):
    """The request (or part of it) went out and no complete reply came back."""

    def __init__(self, error: Exception):
        super().__init__(error)
        self.timed_out = isinstance(error, ReadTimeoutError | TimeoutError) or (
            isinstance(error, ProtocolError) and any(isinstance(a, TimeoutError) for a in error.args))


@dataclass(frozen=True)
class Reply:
    status_code: int
    headers: Any  # urllib3's HTTPHeaderDict: case-insensitive
    content: bytes
    reason_phrase: str

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY), None when
    there is none or NO_PROXY lists its host: read the way urllib, requests and httpx read it."""
    parts = urlsplit(url)
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or proxy_bypass(parts.netloc):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


@functools.cache
def tls_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """Certificate checks against `cafile` or `capath`; one per process (loading a CA bundle
    takes 20-30 ms, per batch it would be 40 us per message)."""
    return ssl.create_default_context(cafile=cafile, capath=capath)


def ca_bundle(path: str) -> ssl.SSLContext:
    """`tls_context` for a CA bundle file or a directory of certificates."""
    return tls_context(None, path) if os.path.isdir(path) else tls_context(path, None)


def ca_bundle_from(*variables: str) -> ssl.SSLContext:
    """`ca_bundle` of the first environment variable of `variables` that is set, else certifi's
    bundle: each sender reads the variables of the library it replaced (httpx, requests)."""
    return ca_bundle(next((os.environ[v] for v in variables if os.environ.get(v)), None) or certifi.where())


class Pools:
    """A sender's connection pools for a batch (`maxsize` kept-alive connections per server),
    through `proxy` if given (see environment_proxy); `tls` for https servers. Without a proxy
    each server's pool is found once, not parsed out of every request's URL by urllib3's
    PoolManager (a sixth of a request's CPU)."""

    def __init__(self, proxy: str | None, *, maxsize: int, tls: ssl.SSLContext | None,
                 pools: dict[str, type[HTTPConnectionPool]] = POOLS):
        options: dict[str, Any] = {"maxsize": maxsize, "block": False, "retries": False}
        if tls is not None:
            options["ssl_context"] = tls
        self.manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
        self.manager.pool_classes_by_scheme = pools
        self.proxy = proxy
        self._servers: dict[tuple[str, str], HTTPConnectionPool] = {}  # (scheme, netloc) -> its pool

    def request(self, method: str, url: str, *, headers: dict[str, str], body: bytes | None = None,
                timeout: float) -> Reply:
        """One request, its reply read in full (the connection then goes back to the pool).
        NotSent or Lost when no reply came; never retried, never redirected."""
        target: urllib3.PoolManager | HTTPConnectionPool = self.manager
        if self.proxy is None:
            parts = urlsplit(url)
            target = self._servers.get((parts.scheme, parts.netloc)) or self._servers.setdefault(
                (parts.scheme, parts.netloc), self.manager.connection_from_url(url))
            url = f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"
        _wire.started = False
        try:
            response = target.urlopen(method, url, body=body, headers=headers, redirect=False, retries=False,
                                      timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if not getattr(_wire, "started", False):
                raise NotSent(exc) from exc
            raise Lost(exc) from exc
        return Reply(response.status, response.headers, response.data, response.reason or "")

    def clear(self) -> None:
        """Close every connection."""
        self._servers.clear()
        self.manager.clear()
