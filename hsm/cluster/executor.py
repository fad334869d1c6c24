"""The threads a member's calls run in when the cluster enforces a deadline.

Like :class:`concurrent.futures.ThreadPoolExecutor`, with one difference that matters here:
its threads are daemons that nobody joins at interpreter exit. ``ThreadPoolExecutor``
registers an exit hook that waits for every worker, so a call hung inside a PKCS#11 module
(which the deadline already gave up on) kept a finished command from exiting until the HSM
answered. A hung call here dies with the process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["MemberExecutor"]

T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class MemberExecutor:
    """Up to ``workers`` daemon threads, started on demand, that run submitted calls."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            if self._idle == 0 and len(self._threads) < self._workers:
                thread = threading.Thread(target=self._run, daemon=True,
                                          name=f"{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1 if self._idle else 0
        self._queue.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            future, fn, args = work
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del work, future, fn, args
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """No new calls; idle threads end now, busy ones when their call returns (a hung
        one never: it is a daemon, and the process does not wait for it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = len(self._threads)
        while True:  # calls not started yet are cancelled
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                work[0].cancel()
        for _ in range(threads):
            self._queue.put(None)
