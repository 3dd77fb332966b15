"""The HTTP server's limits: uvicorn configured so that no connection is held without bound.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and caps the open connections
(``limit_concurrency``: 503 beyond) and the size of a request head (16 KiB with h11), but it waits forever for
a new connection's request headers.  :func:`header_timeout_protocol` adds that limit: a connection that has
not sent a complete request head within ``header_timeout_s`` of opening (or of its previous response) is
closed.
"""

from __future__ import annotations

from .limits import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_LIMIT_CONCURRENCY


def _base_protocol():
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # httptools is optional for uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def header_timeout_protocol(header_timeout_s: float, base=None):
    """A uvicorn HTTP protocol class that closes connections whose request head does not arrive in time."""
    base = base or _base_protocol()
    timeout = float(header_timeout_s)

    class HeaderTimeoutProtocol(base):
        _vinspect_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_timer()

        def _arm_header_timer(self):
            if self._vinspect_timer is not None:
                self._vinspect_timer.cancel()
            self._vinspect_timer = self.loop.call_later(timeout, self._header_timeout)

        def _header_timeout(self):
            cycle = self.cycle
            if (cycle is None or cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()  # no request in progress: its head never came

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc):
            if self._vinspect_timer is not None:
                self._vinspect_timer.cancel()
            super().connection_lost(exc)

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol


def uvicorn_config(app, *, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                   limit_concurrency: int | None = DEFAULT_LIMIT_CONCURRENCY, log_level: str = "info",
                   access_log: bool = True, timeout_graceful_shutdown: int = 30):
    import uvicorn

    return uvicorn.Config(app, http=header_timeout_protocol(header_timeout_s), log_level=log_level,
                          access_log=access_log, timeout_graceful_shutdown=timeout_graceful_shutdown,
                          server_header=False, limit_concurrency=limit_concurrency, timeout_keep_alive=5,
                          h11_max_incomplete_event_size=16 * 1024)
