"""Keep addresses, phone numbers and tokens out of the HTTP libraries' log lines.

httpx logs every request's full URL at INFO ("HTTP Request: GET https://...?To=%2B4915..."), and
the Twilio lookup after an uncertain 5xx can only filter by recipient in the query string (the
provider's shape: a GET listing has no body). urllib3, under requests (web push), logs the path at
DEBUG, and a push endpoint's path is the subscription's token. These filters keep the lines (the
method, the host and the status are useful) and drop what identifies a person: the query string,
and for urllib3 the path.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import httpx

_HIDDEN = "<path hidden>"


class _RedactURLs(logging.Filter):
    def __init__(self, hide_path: bool) -> None:
        super().__init__()
        self.hide_path = hide_path

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(self._redact(arg) for arg in record.args)
        return True

    def _redact(self, value):
        if isinstance(value, httpx.URL):
            value = str(value)
        if not isinstance(value, str):
            return value
        if value.startswith("/"):
            return _HIDDEN if self.hide_path else value.split("?", 1)[0]
        if "://" in value:
            parts = urlsplit(value)
            path = _HIDDEN if self.hide_path and parts.path not in ("", "/") else parts.path
            return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        return value


_LOGGERS = {"httpx": False, "urllib3.connectionpool": True}  # logger -> hide the path too


def install() -> None:
    """Add the filters once per process (our HTTP clients call it when they open)."""
    for name, hide_path in _LOGGERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactURLs) for f in logger.filters):
            logger.addFilter(_RedactURLs(hide_path))
