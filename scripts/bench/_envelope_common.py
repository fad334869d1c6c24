"""Shared pieces of the ``envelope_*.py`` benchmarks (not a benchmark itself).

- :func:`one_member_client`: a throw-away one-member SoftHSM harness in a temporary
  directory (``hsm.testing.harness_up(dir, members=1, faults=False)``: no fault shim, the
  module itself) with an open client and one master key; removed on exit.
- :class:`Discard`: a sink that counts the bytes written to it and keeps none.
- :func:`timed`: wall-clock and thread-CPU seconds of one call.
- Formatting helpers for the PASS/FAIL lines.

The scripts import it as a sibling module (``python scripts/bench/envelope_x.py`` puts
``scripts/bench`` first on ``sys.path``).
"""

from __future__ import annotations

import gc
import hashlib
import io
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hsm
from hsm.testing import Harness, harness_down, harness_up

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

MiB = 1024 * 1024
CONTEXT: dict[str, str] = {"tenant": "acme", "purpose": "bench"}


@dataclass(frozen=True)
class Bench:
    """What :func:`one_member_client` yields."""

    client: hsm.Client
    key_id: str
    config_path: Path


@contextmanager
def one_member_client(prefix: str) -> Iterator[Bench]:
    """A fresh one-member SoftHSM harness, an open client on it and a new master key."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        where = Path(tmp) / "harness"
        harness = harness_up(where, members=1, faults=False)
        try:
            with hsm.open(harness.config_path) as client:
                key_id = client.create_key().key_id
                yield Bench(client, key_id, Path(harness.config_path))
        finally:
            harness_down(where)


@contextmanager
def one_member_harness(prefix: str, *, faults: bool = False) -> Iterator[Harness]:
    """A fresh one-member SoftHSM harness (no client). ``faults=True`` loads SoftHSM through
    the fault-injection shim (only for what-if runs with added HSM latency)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        where = Path(tmp) / "harness"
        harness = harness_up(where, members=1, faults=faults)
        try:
            yield harness
        finally:
            harness_down(where)


class Discard(io.BytesIO):
    """A binary sink that keeps nothing: counts bytes (and hashes them if asked)."""

    def __init__(self, digest: bool = False) -> None:
        super().__init__()
        self.count = 0
        self.hash = hashlib.sha256() if digest else None

    def write(self, data: ReadableBuffer, /) -> int:
        n = memoryview(data).nbytes
        self.count += n
        if self.hash is not None:
            self.hash.update(data)
        return n

    def writable(self) -> bool:
        return True


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float
    faults: int  # minor page faults of the process during the call


def timed(op: Callable[[], object]) -> Timing:
    """Seconds of wall clock and of this thread's CPU for one call of ``op``."""
    gc.collect()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu0 = time.thread_time()
    t0 = time.perf_counter()
    op()
    wall = time.perf_counter() - t0
    cpu = time.thread_time() - cpu0
    return Timing(wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def versions(*extra: str) -> dict[str, Any]:
    """Versions worth printing with the figures."""
    found: dict[str, Any] = {"python": platform.python_version()}
    for name in ("cryptography", "python-pkcs11", *extra):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def versions_line(found: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in found.items() if v is not None)
