"""Running a pass in this process, FoundationDB-style: the real sync loop, client, login guard and
store against the simulator over HTTP and a real Postgres, with virtual time and crash points.

* Time: retry and ``Retry-After`` waits go to a virtual clock (``RetryPolicy(sleep=..., clock=...)``
  and the sync's ``clock``), so a 120 s ``Retry-After`` costs nothing and run budgets still bind.
* Crash points: a death is ``world.Crash`` (a ``BaseException``) raised in the worker's thread at a
  named point: ``before_request`` / ``after_processing`` of a request (raised by the HTTP adapter once
  the simulator fired the crash), ``before_commit`` / ``after_commit`` of a block (raised around
  ``store.commit_block``). After it nothing more is sent, no further account starts, and the next pass
  starts again from what the database holds, as a new process would.

``install()`` wraps ``store.commit_block`` and ``sync.sync_account`` once per process; the wrappers
act only while ``CURRENT`` names a world.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from typing import Any

import requests
import requests.adapters

from sync_worker import app, cli, client, commands, config, errors, exitcodes, logs, store, sync
from tests.chaos import world as worldmod

CURRENT: worldmod.World | None = None
_installed = False
_parser_lock = threading.Lock()
_parser: Any = None


class VirtualClock:
    """Monotonic time plus every wait slept so far: sleeping costs nothing, deadlines still bind."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() + self._offset

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._offset += max(0.0, seconds)


class _CrashingAdapter(requests.adapters.HTTPAdapter):
    """The transport of a worker that can die: once the world fired a crash, the request in flight
    ends in ``Crash`` and no other request goes out."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        world = CURRENT
        if world is not None and world.crashed.is_set():
            raise worldmod.Crash("dead processes send nothing")
        try:
            response = super().send(request, *args, **kwargs)
        except Exception:
            if world is not None and world.crashed.is_set():
                raise worldmod.Crash("crash point reached during a request") from None
            raise
        if world is not None and world.crashed.is_set():
            raise worldmod.Crash("crash point reached during a request")
        return response


def install() -> None:
    """Wrap the two module functions the crash points need (once per process)."""
    global _installed  # noqa: PLW0603  # one set of wrappers per process
    if _installed:
        return
    _installed = True
    real_commit = store.commit_block
    real_sync_account = sync.sync_account

    def commit_block(*args: Any, **kwargs: Any) -> Any:
        world = CURRENT
        if world is not None:
            world.at_commit("before")
        result = real_commit(*args, **kwargs)
        if world is not None:
            world.at_commit("after")
        return result

    def sync_account(*args: Any, **kwargs: Any) -> Any:
        world = CURRENT
        if world is not None and world.crashed.is_set():
            raise worldmod.Crash("a dead process starts no other account")
        return real_sync_account(*args, **kwargs)

    store.commit_block = commit_block
    sync.sync_account = sync_account


@dataclasses.dataclass(frozen=True)
class Outcome:
    exit_code: int | None  # None: crashed
    failed: tuple[str, ...]


def run_pass(world: worldmod.World, env: dict[str, str]) -> Outcome:
    """One ``once`` pass of ``env``'s worker, in this thread, against ``world``."""
    global CURRENT  # noqa: PLW0603  # the crash points read the world being run
    settings = config.load(env)
    clock = VirtualClock()
    http = requests.Session()
    http.trust_env = False
    adapter = _CrashingAdapter(pool_connections=1, pool_maxsize=4)
    http.mount("http://", adapter)
    CURRENT = world
    try:
        with app.pooled(settings) as pool:
            guard = app.login_guard(settings, pool)
            # The production configuration, with the harness's virtual clock and crashing transport.
            cfg = app.client_config(settings, login_guard=guard, sleep=clock.sleep)
            api = client.ThingSpaceClient(
                dataclasses.replace(
                    cfg,
                    retry=dataclasses.replace(cfg.retry, clock=clock.now),
                    session=http,
                    clock=clock.now,
                )
            )
            try:
                result = app.sync_once(settings, api=api, connect=pool, clock=clock.now)
            finally:
                api.close()
    except worldmod.Crash:
        return Outcome(None, tuple(world.schedule.accounts))
    except errors.SyncWorkerError as exc:
        return Outcome(exitcodes.for_error(exc), tuple(world.schedule.accounts))
    finally:
        CURRENT = None
        http.close()
    return Outcome(result.exit_code, tuple(r.account for r in result.accounts if not r.ok))


def operator(argv: list[str], env: dict[str, str]) -> int:
    """An operator command run in this process, as ``cli.main`` runs it, its output discarded."""
    global _parser  # noqa: PLW0603  # built once: it costs ~25 ms
    with _parser_lock:
        if _parser is None:
            _parser = cli.build_parser()
        args = _parser.parse_args(argv)
    sink = io.StringIO()
    ctx = commands.Context(args, env, sink, sink)
    try:
        return int(cli.command_function(args.func)(ctx))
    except errors.SyncWorkerError as exc:
        return exitcodes.for_error(exc)
    finally:
        _apply_logs()


def configure_logs(stream: Any = None) -> None:
    """Worker logs of the in-process passes: INFO to ``stream``, or nothing at all (the default)."""
    global _log_stream  # noqa: PLW0603  # one logging configuration per process
    _log_stream = stream
    _apply_logs()


def _apply_logs() -> None:
    # An operator command configures logging for itself; the run's choice is put back after it.
    if _log_stream is None:
        logs.configure("json", "CRITICAL", _NULL)
    else:
        logs.configure("json", "INFO", _log_stream)


class _Null(io.StringIO):
    """A stream that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)


_NULL = _Null()
_log_stream: Any = None
