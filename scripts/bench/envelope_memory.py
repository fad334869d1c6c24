#!/usr/bin/env python3
"""Benchmark: peak memory (RSS) of the process while streaming 1 GiB through ``hsm``.

One process, one throw-away SoftHSM token. The 1 GiB never exists in memory: the source
is a reader that makes pseudo-random bytes on demand (an AES-CTR keystream, as many bytes
as each ``read`` asks for), and sinks keep nothing. Two phases, each measured on its own:

1. encrypt: ``client.encrypt_stream(key_id, reader, sink, context)``, the sink counting
   bytes only;
2. round trip: a thread runs ``client.encrypt_stream`` of the same 1 GiB into a pipe while
   this thread runs ``client.decrypt_stream`` from the pipe into a sink that hashes what
   it gets (checked equal to the source's hash at the end). Its peak includes the
   encryptor in the other thread, so it bounds decryption's from above.

Peak RSS, per phase: the kernel's high-water mark ``VmHWM`` of ``/proc/self/status``,
reset just before the phase by writing 5 to ``/proc/self/clear_refs``; also the largest
``VmRSS`` seen by a thread sampling every 5 ms; ``getrusage(RUSAGE_SELF).ru_maxrss`` at
the end of the phase is printed as a cross-check (on Linux it reads the same high-water
mark, so the reset applies to it too). Reported: the RSS before the phase (after setup:
imports, SoftHSM loaded, client open), the peak, and the growth. Target: peak RSS
<= 100 MiB (absolute: the whole process, what ``top`` shows); the growth is printed too.

    .venv/bin/python scripts/bench/envelope_memory.py [--size-mib 1024] [--rounds 1] [--json]

With several rounds the verdict uses the largest peak (a memory bound is about the worst
case), the median is printed too. A measurement: exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from _envelope_common import (
    CONTEXT,
    Discard,
    MiB,
    median,
    one_member_client,
    verdict,
    versions,
    versions_line,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsm.envelope import DEFAULT_FRAME

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

TARGET_MIB = 100.0
SAMPLE_S = 0.005


class KeystreamReader(io.BytesIO):
    """``total`` pseudo-random bytes, made on demand (AES-256-CTR of zeros under a random
    key), hashed as they go out; nothing is kept. ``read`` and ``readinto`` both work (a
    BytesIO only by type: none of its own buffer is used)."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.left = total
        self.hash = hashlib.sha256()
        self._ctr = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()

    def read(self, size: int | None = -1, /) -> bytes:
        n = self.left if size is None or size < 0 else min(size, self.left)
        if n <= 0:
            return b""
        data = self._ctr.update(bytes(n))
        self.left -= n
        self.hash.update(data)
        return data

    def read1(self, size: int | None = -1, /) -> bytes:
        return self.read(size)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    readinto1 = readinto

    def readable(self) -> bool:
        return True


def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


class Sampler:
    """The largest VmRSS seen by a thread polling every ``SAMPLE_S`` seconds."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, status_kib("VmRSS"))
            self.samples += 1
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Phase:
    name: str
    baseline_mib: float  # VmRSS just before
    peak_mib: float  # VmHWM after a reset (or the sampler's peak if no reset)
    sampled_peak_mib: float
    maxrss_mib: float  # ru_maxrss at the end of the phase (same high-water mark)
    growth_mib: float
    seconds: float
    mib_per_s: float
    hwm_reset: bool


def measure(name: str, size: int, run: Callable[[], None]) -> Phase:
    baseline = status_kib("VmRSS")
    hwm_reset = reset_peak()
    t0 = time.perf_counter()
    with Sampler() as sampler:
        run()
    seconds = time.perf_counter() - t0
    hwm = status_kib("VmHWM") if hwm_reset else sampler.peak_kib
    peak = max(hwm, sampler.peak_kib)
    return Phase(name, baseline / 1024, peak / 1024, sampler.peak_kib / 1024,
                 maxrss_kib() / 1024, (peak - baseline) / 1024, seconds,
                 size / MiB / seconds, hwm_reset)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="peak RSS while streaming 1 GiB through encrypt_stream/decrypt_stream")
    parser.add_argument("--size-mib", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both phases")
    parser.add_argument("--frame-size", type=int, default=DEFAULT_FRAME,
                        help=f"hsm frame size (default {DEFAULT_FRAME})")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.size_mib < 1:
        parser.error("--rounds and --size-mib must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size, frame = args.size_mib * MiB, args.frame_size
    phases: list[Phase] = []
    with one_member_client("hsm-bench-memory-") as bench:
        client, key_id = bench.client, bench.key_id
        # Warm every code path once on a little data, so that lazily made objects (and
        # the thread machinery) are part of the baseline, not of the peak.
        warm = KeystreamReader(4 * frame)
        client.encrypt_stream(key_id, warm, Discard(), CONTEXT, frame_size=frame)
        made = io.BytesIO()
        client.encrypt_stream(key_id, KeystreamReader(4 * frame), made, CONTEXT,
                              frame_size=frame)
        client.decrypt_stream(io.BytesIO(made.getvalue()), Discard(), CONTEXT)
        del made, warm

        for i in range(args.rounds):
            def encrypt_only() -> None:
                sink = Discard()
                summary = client.encrypt_stream(key_id, KeystreamReader(size), sink, CONTEXT,
                                                frame_size=frame)
                if summary.bytes_in != size or sink.count != summary.bytes_out:
                    raise SystemExit(f"encrypt_stream: {summary} vs {sink.count} written")

            def round_trip() -> None:
                source = KeystreamReader(size)
                rfd, wfd = os.pipe()
                failed: list[BaseException] = []

                def produce() -> None:
                    try:
                        with open(wfd, "wb") as pipe_w:
                            client.encrypt_stream(key_id, source, pipe_w, CONTEXT,
                                                  frame_size=frame)
                    except BaseException as exc:  # reported by the main thread
                        failed.append(exc)

                producer = threading.Thread(target=produce, name="encryptor")
                producer.start()
                sink = Discard(digest=True)
                try:
                    with open(rfd, "rb") as pipe_r:
                        client.decrypt_stream(pipe_r, sink, CONTEXT)
                finally:
                    producer.join()
                if failed:
                    raise failed[0]
                if sink.count != size or sink.hash is None \
                        or sink.hash.digest() != source.hash.digest():
                    raise SystemExit("round trip through the pipe did not give the data back")

            phases.append(measure("encrypt", size, encrypt_only))
            phases.append(measure("round_trip", size, round_trip))
            if not args.json:
                for p in phases[-2:]:
                    print(f"round {i + 1}/{args.rounds} {p.name:10}: RSS before "
                          f"{p.baseline_mib:6.1f} MiB, peak {p.peak_mib:6.1f} MiB (sampled "
                          f"{p.sampled_peak_mib:6.1f}), growth {p.growth_mib:+6.1f} MiB; "
                          f"{p.seconds:5.1f} s, {p.mib_per_s:5.0f} MiB/s", flush=True)

    worst = max(p.peak_mib for p in phases)
    ok = worst <= TARGET_MIB
    found = versions()
    by_name = {n: [p for p in phases if p.name == n] for n in ("encrypt", "round_trip")}
    summary: dict[str, Any] = {
        n: {"median_peak_mib": round(median([p.peak_mib for p in ps]), 1),
            "max_peak_mib": round(max(p.peak_mib for p in ps), 1),
            "median_growth_mib": round(median([p.growth_mib for p in ps]), 1),
            "max_growth_mib": round(max(p.growth_mib for p in ps), 1)}
        for n, ps in by_name.items()
    }
    if args.json:
        print(json.dumps({
            "size_bytes": size, "frame_size": frame, "rounds": args.rounds,
            "phases": [asdict(p) for p in phases], "summary": summary,
            "peak_mib": round(worst, 1), "target_mib": TARGET_MIB, "pass": ok,
            "versions": found,
        }))
        return 0
    for n, s in summary.items():
        print(f"{n:10}: peak RSS {s['max_peak_mib']:6.1f} MiB (median {s['median_peak_mib']:.1f}), "
              f"growth over the RSS before it {s['max_growth_mib']:+.1f} MiB")
    print(f"peak RSS streaming {args.size_mib} MiB = {worst:.1f} MiB  target <= "
          f"{TARGET_MIB:.0f} MiB  {verdict(ok)}")
    print(f"[frame {frame} B; peak = VmHWM after a reset"
          f"{'' if all(p.hwm_reset for p in phases) else ' (reset refused: sampled VmRSS)'}; "
          f"ru_maxrss {max(p.maxrss_mib for p in phases):.1f} MiB; "
          f"{versions_line(found)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
