"""The service under asyncio: its trio task tree as a trio *guest* on the running asyncio loop.

``trio.lowlevel.start_guest_run`` runs a trio run inside another loop: each step of trio's
scheduler is a callback of the asyncio loop (``loop.call_soon``), on its thread, and only trio's
wait for I/O, when it has nothing else to do, blocks in a worker thread of trio's own, which hands
the events back with ``loop.call_soon_threadsafe``. So the daemon's code runs unchanged, on the
program's one thread, beside the program's asyncio tasks:

    asyncio loop (the program's thread)
    ├─ the program's tasks: await ws.subscribe_to_symbol(...)  ──bridge──┐
    ├─ async callbacks' delivery tasks (feedd.control.callbacks)        │
    ├─ the keeper: stops the service when asyncio.run ends the program  │
    └─ trio guest run                                                   │
       └─ nursery: the service's task tree, and each bridged call  <────┘

A bridged call (:meth:`GuestRun.call`) is started as a trio task by ``TrioToken.run_sync_soon``
and its result (or exception: the same classes as under trio) set on an asyncio future the
caller awaits; cancelling the caller cancels the call. A sync call that needs trio's clock
(:meth:`GuestRun.call_sync`) runs in trio's context the same way. Both sides run on one thread,
so a trio task may set an asyncio future (and an asyncio task may read a counter) directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from feedd.errors import ServiceNotRunning

log = logging.getLogger(__name__)

T = TypeVar("T")

#: what a service run as a guest needs: its task tree (``run``) and its graceful stop
Run = Callable[..., Awaitable[Any]]


def _settle(future: asyncio.Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Hand ``value`` (or ``error``) to ``future``, unless its awaiter went away meanwhile."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class GuestRun:
    """One service's trio run on ``loop``: started by :meth:`start`, ended by :meth:`stop`
    (or by asyncio's own end of the program, see :meth:`_keep`)."""

    def __init__(
        self,
        run: Run,
        stop: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
        unwrap: Callable[[BaseException], BaseException],
    ) -> None:
        self._run = run
        self._unwrap = unwrap
        self._stop = stop
        self.loop = loop
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        #: set when the trio run has ended, with how the service ended (None, or its exception)
        self.done: asyncio.Future[BaseException | None] = loop.create_future()
        #: set once the service has started, or failed to
        self.started: asyncio.Future[None] = loop.create_future()
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the trio run and the service in it; returns once the service has started
        (raises what its start raised, as ``initialize()`` under trio does)."""
        trio.lowlevel.start_guest_run(
            self._main,
            self.started,
            run_sync_soon_threadsafe=self.loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=self.loop.call_soon,
            done_callback=self._finished,
            # asyncio owns the signals: trio leaves the wakeup fd to the loop (add_signal_handler
            # sets it), and takes no SIGINT, for which asyncio.run has installed its handler
            host_uses_signal_set_wakeup_fd=True,
        )
        self._keeper = self.loop.create_task(self._keep(), name="feedd: the guest run's keeper")
        await asyncio.shield(self.started)

    async def _main(self, started: asyncio.Future[None]) -> BaseException | None:
        """The trio run: a nursery holding the service and every bridged call."""
        self._token = trio.lowlevel.current_trio_token()
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await nursery.start(self._service, nursery)
                except Exception as exc:  # noqa: BLE001 (the service did not start: its caller hears why)
                    _settle(started, error=self._unwrap(exc))
                    return None
                _settle(started)
        except Exception as exc:  # the service failed while it ran: close() raises it
            log.error("feedd's service failed", exc_info=exc)
            failure = exc
        finally:
            self._nursery = None
        return failure

    async def _service(
        self, nursery: trio.Nursery, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The service until it stops; then the bridged calls still waiting are cancelled."""
        await self._run(task_status=task_status)
        nursery.cancel_scope.cancel()

    def _finished(self, result: Any) -> None:
        """trio's done_callback (``result`` an outcome), on the loop's thread: the run is over."""
        try:
            ended = result.unwrap()
        except BaseException as exc:  # noqa: BLE001 (trio's own failure: TrioInternalError, KeyboardInterrupt)
            ended = exc
        _settle(self.done, ended)

    async def _keep(self) -> None:
        """An asyncio task for as long as the trio run lasts. When the program's main returns
        without ``close()``, ``asyncio.run`` cancels every task left and waits for them; this
        one then stops the service gracefully and waits until the trio run has ended, so the
        loop is not closed under a guest still running (no traceback, no warning, no hang)."""
        try:
            await asyncio.shield(self.done)
        except asyncio.CancelledError:
            self.request_stop()
            await asyncio.shield(self.done)

    def request_stop(self) -> None:
        """Ask the service to stop gracefully (from the asyncio side); returns at once."""
        self._soon(self._stop)

    async def stop(self) -> BaseException | None:
        """Stop the service gracefully and wait until the trio run has ended; how it ended."""
        self.request_stop()
        return await asyncio.shield(self.done)

    def _soon(self, fn: Callable[[], object]) -> bool:
        """Run ``fn()`` in trio's context soon; False when the trio run has ended."""
        token = self._token
        if token is None or self.done.done():
            return False
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    def soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` in trio's context soon (it must not raise), or ServiceNotRunning."""
        if not self._soon(fn):
            raise ServiceNotRunning("the service has stopped")

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` as a trio task of the guest run, awaited here as an asyncio future."""
        if not self.started.done():  # called while another task is starting the service
            await asyncio.shield(self.started)
        future: asyncio.Future[T] = self.loop.create_future()
        scope = trio.CancelScope()

        async def run() -> None:
            try:
                with scope:
                    _settle(future, await fn(*args))
            except Exception as exc:  # noqa: BLE001 (the caller's to handle, on the asyncio side)
                _settle(future, error=exc)
            finally:
                if not future.done():  # cancelled: the service stops, or the caller went away
                    _settle(future, error=ServiceNotRunning("the service stopped before answering"))

        def spawn() -> None:
            if self._nursery is None:
                _settle(future, error=ServiceNotRunning("the service has stopped"))
            else:
                self._nursery.start_soon(run, name=f"feedd: {getattr(fn, '__qualname__', fn)} from asyncio")

        self.soon(spawn)
        try:
            return await future
        except asyncio.CancelledError:
            self._soon(scope.cancel)
            raise

    async def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in trio's context (where ``trio.current_time()`` works), its result here."""
        future: asyncio.Future[T] = self.loop.create_future()

        def in_trio() -> None:
            try:
                value = fn(*args)
            except BaseException as exc:  # noqa: BLE001 (to the caller: run_sync_soon's callback must not raise)
                _settle(future, error=exc)
            else:
                _settle(future, value)

        self.soon(in_trio)
        return await future


__all__ = ["GuestRun"]
