"""Running the simulator: the aiohttp application, ``serve`` for an event loop of
your own (``docpipe simulate``), and :class:`SimServer` on a thread of its own
(tests, demo)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from . import handlers as h
from .chat import chat
from .config import SimConfig
from .files import FILES, Files, files_get, files_post, serve_file
from .state import STATE, State

_SHUTDOWN_GRACE_S = 0.5
_T = TypeVar("_T")


def make_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application (state lives in the app).

    Paths without a route (``POST /chat/completions`` without ``/v1``) get aiohttp's
    plain-text "404: Not Found", as from any web server that is not a gateway.
    """
    app = web.Application(client_max_size=64 * 1024 * 1024)
    st = app[STATE] = State(config)

    # A signal rather than per-handler code so router errors (404/405) carry the id too.
    async def add_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
        response.headers["X-Oneapi-Request-Id"] = st.request_id()

    app.on_response_prepare.append(add_request_id)
    add = app.router
    add.add_post("/v1/chat/completions", chat)
    add.add_get("/v1/models", h.models)
    for prefix in ("/v1", ""):  # one-api serves billing with and without /v1
        add.add_get(f"{prefix}/dashboard/billing/subscription", h.billing_subscription)
        add.add_get(f"{prefix}/dashboard/billing/usage", h.billing_usage)
    add.add_get("/api/usage/token/", h.token_usage)
    add.add_get("/api/usage/token", h.token_usage)
    add.add_get("/_sim/stats", h.sim_stats)
    add.add_post("/_sim/stats/window", h.sim_stats_window)
    add.add_get("/_sim/config", h.sim_config_get)
    add.add_post("/_sim/config", h.sim_config_post)
    add.add_post("/_sim/reset", h.sim_reset)
    add.add_get("/_sim/bodies", h.sim_bodies)
    app[FILES] = Files()  # documents to HEAD (pipeline/simulator/files.py)
    add.add_get("/files/{name:.*}", serve_file)  # HEAD too
    add.add_get("/_sim/files", files_get)
    add.add_post("/_sim/files", files_post)
    return app


async def _run_app(app: web.Application, host: str, port: int, ready: Callable[[int], None] | None) -> None:
    runner = web.AppRunner(
        app,
        access_log=None,
        # Cancel handlers whose client went away, so timed-out "hang" requests do not pile up.
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_GRACE_S,
        keepalive_timeout=75.0,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        if ready is not None:
            ready(int(runner.addresses[0][1]))
        await asyncio.Future()  # until cancelled
    finally:
        # Hung requests would otherwise hold the graceful-shutdown wait for its full length.
        for task in list(app[STATE].hanging):
            task.cancel()
        await runner.cleanup()


async def serve(config: SimConfig, host: str, port: int, ready: Callable[[int], None] | None = None) -> None:
    """Run the simulator until cancelled; ``ready(bound_port)`` once listening."""
    await _run_app(make_app(config), host, port, ready)


class SimServer:
    """The simulator on a daemon thread with its own event loop.

    Usable from sync and async code alike; the client never shares the server's loop.
    """

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._app = make_app(config if config is not None else SimConfig())
        self._state = self._app[STATE]
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL for clients (``.../v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """Server root, for ``/_sim/*`` and ``/api/usage/token/``."""
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> SimConfig:
        """The configuration in force."""
        return self._state.config

    def start(self) -> SimServer:
        """Listen (on a free port when ``port`` was 0); returns once it accepts connections."""
        if self._thread is not None:
            return self
        ready = threading.Event()

        def on_ready(port: int) -> None:
            self.port = port
            ready.set()

        self._thread = threading.Thread(
            target=self._thread_main, args=(on_ready, ready), name=f"docpipe-sim-{id(self):x}", daemon=True
        )
        self._thread.start()
        if not ready.wait(10.0):
            raise RuntimeError("simulator did not start within 10 s")
        if self._error is not None:
            self._thread = None
            raise self._error
        return self

    def _thread_main(self, on_ready: Callable[[int], None], ready: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            with contextlib.suppress(asyncio.CancelledError):
                await _run_app(self._app, self.host, self.port, on_ready)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
        finally:
            ready.set()

    def stop(self) -> None:
        """Stop listening, cancel hung requests, join the thread (idempotent)."""
        thread, loop, task = self._thread, self._loop, self._task
        if thread is None:
            return
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=5.0)
        self._thread = None
        self._loop = None
        self._task = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _in_loop(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the server loop so it never races a handler."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return fn()
        fut: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # loop closed between the check and the call
            return fn()
        return fut.result(timeout=10.0)

    def stats(self) -> dict[str, Any]:
        """Like ``GET /_sim/stats``."""
        return self._in_loop(self._state.snapshot)

    def bodies(self) -> list[Any]:
        """Chat request bodies received so far (needs ``record_bodies=True``)."""
        return self._in_loop(lambda: list(self._state.bodies))

    def update(self, **changes: Any) -> None:
        """Apply configuration changes (validated in the caller's thread)."""
        new = self._state.config.with_changes(changes)
        self._in_loop(lambda: self._state.set_config(new))

    def reset(self) -> None:
        """Zero the counters, like ``POST /_sim/reset``."""
        self._in_loop(self._state.reset)

    def files(self, **control: Any) -> dict[str, Any]:
        """Like ``POST /_sim/files`` (change documents, set modes, ``reset``); returns the counters."""
        files = self._app[FILES]

        def apply() -> dict[str, Any]:
            files.control(control)
            return files.snapshot()

        return self._in_loop(apply)

    @property
    def files_url(self) -> str:
        """Where the simulated documents are: ``files_url + "/NAME"``."""
        return f"http://{self.host}:{self.port}/files"

    def reset_window(self) -> None:
        """Like POST /_sim/stats/window."""
        self._in_loop(self._state.reset_window)
