"""One HTTP exchange with the ThingSpace API, within its deadline: the transport under ``client``.

``Transport.exchange`` sends one request through the session's mounted adapter and reads the
whole answer. Decisions worth knowing:

* Every exchange (token, login, API call) ends within ``total_timeout``, connect, headers and
  body together, however slowly the answer trickles in (the read timeout only bounds each
  wait): see "the total deadline of one exchange" below. An API call is also cut at the run's
  deadline (and not sent past it). A timed-out exchange is an ``errors.ApiTransientError`` and
  its connection is closed.
* A body over ``max_body_bytes`` is not read further (connection closed, first bytes kept):
  ``body_over_cap`` says so, and every body decoded from it is unreadable.
* Redirects are never followed (a request goes straight to the session's mounted adapter, which
  never follows one): a 3xx would carry the bearer and session tokens wherever it pointed.
* What requests reads from the environment (proxies, CA bundle) is read once, for the base URL's
  host; ``~/.netrc`` never is (its credentials would replace the bearer).
* requests' exceptions become ``errors.ApiTransientError`` / ``errors.ApiPermanentError`` here,
  with the network cause in words an operator can act on (``network_cause``).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

import requests
import requests.adapters
import requests.cookies
import requests.hooks
import requests.structures
import requests.utils
import urllib3.connection
import urllib3.connectionpool
import urllib3.poolmanager

from sync_worker import errors

USER_AGENT: Final = "thingspace-sms-sync/0.1"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# Sent with every request (after the session's own headers, before the call's).
_FIXED_HEADERS: Final = {"User-Agent": USER_AGENT, "Accept": "application/json"}
_HEADER_CACHE_SIZE: Final = 8


class Observer(Protocol):
    """Metrics hook: one ``on_request`` per HTTP exchange, one ``on_retry`` per planned retry."""

    def on_request(self, operation: str, status: int | None, seconds: float) -> None: ...

    def on_retry(self, operation: str, reason: str, wait: float) -> None: ...


class Transport:
    """One pooled HTTP session to one base URL; each ``exchange`` within its deadline. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None,
        pool_size: int,
        timeout: tuple[float, float],
        total_timeout: float,
        max_body_bytes: int,
        clock: Callable[[], float],
        observer: Observer | None,
    ) -> None:
        self._timeout = timeout
        self._total_timeout = total_timeout
        self._max_body_bytes = max_body_bytes
        # The run deadline's clock (``retry.RetryPolicy.clock``).
        self._clock = clock
        self._observer = observer
        self._owns_http = session is None
        self.http = session if session is not None else requests.Session()
        if self._owns_http:
            adapter = _WatchedAdapter(pool_connections=1, pool_maxsize=pool_size)
            self.http.mount("https://", adapter)
            self.http.mount("http://", adapter)
            _environment_once(self.http, base_url)
        # A CA bundle path from a caller's session is honoured; verify=False never is.
        bundle = self.http.verify
        self.verify: bool | str = bundle if isinstance(bundle, str) and bundle else True
        # Proxies, CA bundle and client certificate, as Session.request merged them on every
        # call: every request goes to the base URL's host, so once is enough. For a caller's
        # session that trusts the environment this reads it here, by requests' own rules.
        settings = self.http.merge_environment_settings(base_url, {}, False, self.verify, None)
        self._header_cache: dict[tuple[Any, ...], requests.structures.CaseInsensitiveDict[Any]] = {}
        self._send_settings: dict[str, Any] = {
            # The body is read by _read_body, against the exchange's deadline and the size cap.
            "stream": True,
            "verify": settings["verify"],
            "proxies": settings["proxies"],
            "cert": settings["cert"],
        }

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def exchange(
        self,
        operation: str,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        data: dict[str, str] | None = None,
        json_body: Any = None,
        auth: tuple[str, str] | None = None,
        run_deadline: float | None = None,
    ) -> requests.Response:
        """One request and its whole answer, within ``total_timeout`` and ``run_deadline``.

        ``run_deadline`` is a ``retry.clock()`` value (the run budget's end). Token and login
        exchanges get none: cutting a login short would only make an unknown outcome the
        login guard counts, and a login takes at most ``total_timeout`` anyway.
        """
        started = time.perf_counter()
        seconds, limit = self._exchange_budget(run_deadline)
        if seconds <= 0:
            raise errors.ApiTransientError(
                f"request to {host_port(url)} not sent: the run budget has ended", operation=operation
            )
        exchange = _Exchange(time.monotonic() + seconds)
        _WATCHDOG.watch(exchange)
        try:
            response = self._send(
                method, url, headers, data=data, json_body=json_body, auth=auth, exchange=exchange
            )
        except requests.RequestException as exc:
            # A socket timeout at the deadline is the deadline too.
            cut = _WATCHDOG.unwatch(exchange) or time.monotonic() >= exchange.deadline
            self._observe(operation, None, started)
            raise _request_error(exc, operation, url, cut=cut, seconds=seconds, limit=limit) from exc
        except BaseException:
            _WATCHDOG.unwatch(exchange)
            raise
        if _WATCHDOG.unwatch(exchange):
            # The deadline passed as the answer ended: its end may be the cut, not the server's.
            _discard(response)
            self._observe(operation, None, started)
            raise _deadline_error(operation, url, seconds, limit)
        self._observe(operation, response.status_code, started)
        return response

    def _exchange_budget(self, run_deadline: float | None) -> tuple[float, str]:
        """Seconds the next exchange may take, and what limits it (for the error message)."""
        total = self._total_timeout
        if run_deadline is None:
            return total, "total timeout"
        left = run_deadline - self._clock()
        return (left, "run budget") if left < total else (total, "total timeout")

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        data: dict[str, str] | None,
        json_body: Any,
        auth: tuple[str, str] | None,
        exchange: _Exchange,
    ) -> requests.Response:
        """What ``Session.request`` did, through the session's mounted adapter, minus its per-call merges.

        ``Session.request`` merged the environment, session settings and cookies again on every
        call (with the headers checked once, preparing and handing over a request costs about a
        quarter of what it did: 0.03 against 0.10 ms); those are fixed for the client's life and
        settled in ``__init__``. Kept from the session
        as before: its headers (ours win), params, auth (the request's wins), cookies (sent, and
        updated from ``Set-Cookie``), response hooks, and the adapter mounted for the URL, which
        raises requests' own exceptions. Redirects are not followed, as before; the body is read
        here (``_read_body``) so a connection cut mid-body is the same network error as before.
        The socket timeouts never exceed what is left of the exchange's deadline, and the
        connection is known to the watchdog (``_current``) while headers and body arrive.
        """
        http = self.http
        prepared = requests.PreparedRequest()
        # PreparedRequest.prepare's steps, in its order; the headers come checked from a cache.
        prepared.prepare_method(method)
        prepared.prepare_url(url, http.params or None)
        prepared.headers = self._checked_headers(headers)
        if len(http.cookies):  # an empty jar adds no Cookie header
            prepared.prepare_cookies(http.cookies)
        prepared.prepare_body(data or {}, None, json_body)
        prepared.prepare_auth(auth if auth is not None else http.auth, url)
        prepared.prepare_hooks(http.hooks)
        left = exchange.deadline - time.monotonic()
        connect, read = self._timeout
        timeout = (min(connect, left), min(read, left))
        _current.exchange = exchange
        try:
            started = time.perf_counter()
            response = http.get_adapter(url).send(prepared, timeout=timeout, **self._send_settings)
            response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
            if exchange.sock is None:
                # A caller's session without our adapter: the body phase is still watched.
                _WATCHDOG.attach(exchange, _socket_of(response))
            try:
                hooked: requests.Response = requests.hooks.dispatch_hook(  # type: ignore[no-untyped-call]
                    "response", prepared.hooks, response
                )
                response = hooked
                if "Set-Cookie" in response.headers:
                    requests.cookies.extract_cookies_to_jar(  # type: ignore[no-untyped-call]
                        http.cookies, prepared, response.raw
                    )
                _read_body(response, self._max_body_bytes)
            except BaseException:
                _discard(response)  # never back to the pool half-read
                raise
        finally:
            _current.exchange = None
        return response

    def _checked_headers(self, headers: dict[str, str]) -> requests.structures.CaseInsensitiveDict[Any]:
        """The session's headers, ours, then the call's, checked as requests checks them; a copy.

        The same few combinations recur on every call (the tokens change rarely), and checking
        each header's validity cost more than the rest of preparing a request: checked ones are
        kept (a handful at most). A header requests refuses raises ``InvalidHeader`` every time.
        """
        key = (tuple(self.http.headers.items()), tuple(headers.items()))
        try:
            checked = self._header_cache.get(key)
        except TypeError:  # an unhashable header value: requests refuses it, as before
            return self._merged_and_checked(headers)
        if checked is None:
            checked = self._merged_and_checked(headers)
            if len(self._header_cache) >= _HEADER_CACHE_SIZE:
                self._header_cache.clear()  # old tokens: their combinations never come back
            self._header_cache[key] = checked
        return checked.copy()

    def _merged_and_checked(self, headers: dict[str, str]) -> requests.structures.CaseInsensitiveDict[Any]:
        merged = requests.structures.CaseInsensitiveDict(self.http.headers)
        merged.update(_FIXED_HEADERS)
        merged.update(headers)
        for name in [k for k, v in merged.items() if v is None]:
            del merged[name]  # a session header set to None is removed, as requests does
        probe = requests.PreparedRequest()
        probe.prepare_headers(merged)
        return probe.headers

    def _observe(self, operation: str, status: int | None, started: float) -> None:
        if self._observer is not None:
            self._observer.on_request(operation, status, time.perf_counter() - started)


def _environment_once(session: requests.Session, base_url: str) -> None:
    """Read what requests takes from the environment once, not at every request.

    requests looks up the proxy variables (``HTTPS_PROXY``, ``NO_PROXY``...), the CA bundle
    variables (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) and ``~/.netrc`` on every call: a
    third of the client's CPU per history block. Every request goes to the base URL's host,
    so its proxies and bundle are settled here, with requests' own rules. ``~/.netrc`` is not
    read at all: its credentials would replace the bearer in ``Authorization``.
    """
    session.proxies = dict(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False


# --- network errors ------------------------------------------------------------


def host_port(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    return f"{parts.hostname}:{port}" if port else str(parts.hostname)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: causes, contexts, and urllib3's ``reason``/``args``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(e for e in linked if isinstance(e, BaseException))


# Most specific first: a TLS failure is also an OSError, a DNS failure too.
_CAUSES: Final[tuple[tuple[type[BaseException], Callable[[Any], str]], ...]] = (
    (socket.gaierror, lambda e: f"DNS lookup failed ({e.strerror or e})"),
    (ssl.SSLCertVerificationError, lambda e: f"TLS certificate verification failed ({e.verify_message})"),
    (ssl.SSLError, lambda e: f"TLS handshake failed ({e.reason or type(e).__name__})"),
    (
        ConnectionRefusedError,
        lambda _: "connection refused (nothing listens there, or a firewall rejects it)",
    ),
    (ConnectionResetError, lambda _: "connection reset by the peer"),
    (TimeoutError, lambda _: "timed out"),
)


def network_cause(exc: BaseException) -> str:
    """What went wrong below HTTP, in words an operator can act on: DNS, refused, TLS, reset..."""
    chain = list(_chain(exc))
    for kind, describe in _CAUSES:
        for e in chain:
            if isinstance(e, kind):
                return describe(e)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut off (ChunkedEncodingError)"
    if any(type(e).__name__ == "RemoteDisconnected" for e in chain):
        return "the server closed the connection without an answer"
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return str(e.strerror)
    return type(exc).__name__


# --- the total deadline of one exchange ------------------------------------------
#
# requests' read timeout bounds each socket read, so an answer trickling in a byte at a time
# never times out: the deadline of an exchange is kept by cutting its connection instead. The
# exchange registers with one watchdog thread; the connection it uses attaches its socket (our
# adapter's connections do so as they connect and as each request is sent, headers phase
# included; a caller's adapter only once the headers are in). At the deadline the watchdog shuts
# the socket down, which ends whatever read waits on it at once (TLS or not), and the exchange
# raises a timeout. A cut connection is closed, never handed back to the pool half-read.


class _Exchange:
    """One exchange's deadline (``time.monotonic``) and what the watchdog knows of it."""

    __slots__ = ("cut", "deadline", "owned", "sock")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.cut = False
        self.sock: socket.socket | None = None
        # A duplicate of a new connection's socket, closed when the exchange ends: TLS takes
        # the original over (detaching it) while the handshake, which must be cuttable, runs.
        self.owned: socket.socket | None = None


class _Watchdog:
    """One thread for the process, started by the first exchange, asleep until the earliest deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._live: set[_Exchange] = set()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def watch(self, exchange: _Exchange) -> None:
        with self._cond:
            self._live.add(exchange)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="thingspace-deadlines", daemon=True)
                self._thread.start()
            elif exchange.deadline < self._wake_at:
                self._cond.notify()

    def attach(self, exchange: _Exchange, sock: object, *, owned: bool = False) -> None:
        """The socket to shut down at ``exchange``'s deadline (at once if it passed already)."""
        if not isinstance(sock, socket.socket):
            return
        with self._cond:
            if owned:
                if exchange.owned is not None:
                    exchange.owned.close()
                exchange.owned = sock
            if exchange.sock is None or owned:
                exchange.sock = sock
            if exchange.cut:
                _shut_down(sock)

    def unwatch(self, exchange: _Exchange) -> bool:
        """Forget ``exchange``; True when its deadline passed (its connection was cut)."""
        with self._cond:
            self._live.discard(exchange)
            owned, exchange.owned, exchange.sock = exchange.owned, None, None
            cut = exchange.cut
        if owned is not None:
            owned.close()
        return cut

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                wake_at = math.inf
                for exchange in self._live:
                    if exchange.cut:
                        continue
                    if exchange.deadline <= now:
                        exchange.cut = True
                        if exchange.sock is not None:
                            _shut_down(exchange.sock)
                    else:
                        wake_at = min(wake_at, exchange.deadline)
                self._wake_at = wake_at
                self._cond.wait(None if wake_at == math.inf else wake_at - now)


_WATCHDOG: Final = _Watchdog()
# The exchange the current thread is sending, for the connection classes below.
_current = threading.local()


def _shut_down(sock: socket.socket) -> None:
    # socket.socket's own method even for an SSLSocket: only the file descriptor is touched,
    # never the TLS state the reading thread is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _attach_current(sock: object, *, new: bool) -> None:
    exchange: _Exchange | None = getattr(_current, "exchange", None)
    if exchange is None or not isinstance(sock, socket.socket):
        return
    if new:
        _WATCHDOG.attach(exchange, sock.dup(), owned=True)
    else:
        _WATCHDOG.attach(exchange, sock)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _attach_current(sock, new=True)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self.sock, new=False)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _attach_current(sock, new=True)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self.sock, new=False)
        super().request(*args, **kwargs)


class _WatchedHTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: Final[dict[str, type[urllib3.connectionpool.HTTPConnectionPool]]] = {
    "http": _WatchedHTTPConnectionPool,
    "https": _WatchedHTTPSConnectionPool,
}


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections the watchdog can cut from the first byte on."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.poolmanager.ProxyManager:
        manager: urllib3.poolmanager.ProxyManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are their own classes
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


def _socket_of(response: requests.Response) -> object:
    connection = getattr(response.raw, "connection", None) or getattr(response.raw, "_connection", None)
    return getattr(connection, "sock", None)


_READ_CHUNK: Final = 64 * 1024
_OVER_CAP: Final = "thingspace_body_over_cap"


def _read_body(response: requests.Response, cap: int) -> None:
    """Read the whole body now (requests' own errors for a cut or undecodable one), at most ``cap`` bytes.

    A longer body is not read further: its connection is closed, the first ``cap`` bytes are
    kept and ``body_over_cap`` says so (every body decoded through ``_json`` is then unreadable).
    """
    if response.raw is None:  # an adapter that built the response with its content
        content = response.content or b""
        if len(content) > cap:
            response._content = content[:cap]
            vars(response)[_OVER_CAP] = cap
        return
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_READ_CHUNK):
        if size + len(chunk) > cap:
            chunks.append(chunk[: cap - size])
            _discard(response)
            vars(response)[_OVER_CAP] = cap
            break
        chunks.append(chunk)
        size += len(chunk)
    response._content = b"".join(chunks)
    response._content_consumed = True  # type: ignore[attr-defined]


def body_over_cap(response: requests.Response) -> int | None:
    """The size cap ``response``'s body went over (only its first bytes were kept); None if within it."""
    cap = vars(response).get(_OVER_CAP)
    return cap if isinstance(cap, int) else None


def _discard(response: requests.Response) -> None:
    """Close ``response`` and its connection, unread: the pool gets the connection back closed."""
    with contextlib.suppress(Exception):
        if response.raw is not None:
            response.raw.close()
        response.close()


def _deadline_error(operation: str, url: str, seconds: float, limit: str) -> errors.ApiTransientError:
    return errors.ApiTransientError(
        f"request to {host_port(url)} timed out: no complete answer within {seconds:.3g} s ({limit})",
        operation=operation,
    )


def _request_error(
    exc: requests.RequestException, operation: str, url: str, *, cut: bool, seconds: float, limit: str
) -> errors.ApiError:
    """requests' exception as ours: the deadline when it was cut, else as before."""
    if cut:
        return _deadline_error(operation, url, seconds, limit)
    if isinstance(exc, requests.Timeout):
        return errors.ApiTransientError(
            f"request to {host_port(url)} timed out ({type(exc).__name__})", operation=operation
        )
    if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return errors.ApiTransientError(
            f"connection to {host_port(url)} failed: {network_cause(exc)}", operation=operation
        )
    return errors.ApiPermanentError(f"request could not be made ({type(exc).__name__})", operation=operation)
