#!/usr/bin/env python3
"""Benchmark: what the fault-injection shim costs per call.

Two one-member SoftHSM harnesses in a temporary directory, one loading SoftHSM directly
(``faults=False``), one through the shim; one client on each, in one process. Rounds
alternate direct/shim; the medians are reported for:

- ``random``: ``client.generate_random(32)``: one PKCS#11 call (``C_GenerateRandom``);
- ``datakey``: ``generate_data_key`` + ``unwrap``: 7 PKCS#11 calls (C_GenerateRandom,
  C_EncryptInit, C_Encrypt twice (size, then data), C_DecryptInit, C_Decrypt twice);
- the same on the shim while a control file exists that does not apply to these calls
  (``calls=C_SeedRandom``): every call then reads and parses it.

    .venv/bin/python scripts/bench/shim_overhead.py [--rounds 7] [--seconds 1.0] [--json]

A measurement: exits 0 whatever the numbers; non-zero only on errors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import hsm
from hsm.testing import FaultInjector, harness_up


def rate(op: Callable[[], object], seconds: float) -> float:
    """Operations per second of ``op`` over about ``seconds``."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            op()
        done += 50
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hsm-shim-bench-") as tmp:
        direct_h = harness_up(Path(tmp) / "direct", 1, faults=False)
        shim_h = harness_up(Path(tmp) / "shim", 1, faults=True)
        injector = FaultInjector(shim_h)
        with hsm.open(direct_h.config_path) as direct, hsm.open(shim_h.config_path) as shim:
            keys = {id(c): c.create_key().key_id for c in (direct, shim)}

            def random_op(client: hsm.Client) -> Callable[[], object]:
                return lambda: client.generate_random(32)

            def datakey_op(client: hsm.Client) -> Callable[[], object]:
                key = keys[id(client)]

                def op() -> object:
                    dk = client.generate_data_key(key, {"bench": "shim"})
                    return client.unwrap(dk.wrapped, {"bench": "shim"})
                return op

            results: dict[str, dict[str, float]] = {}
            for name, make, calls in (("random", random_op, 1), ("datakey", datakey_op, 7)):
                for client in (direct, shim):  # warm up both
                    rate(make(client), 0.2)
                samples: dict[str, list[float]] = {"direct": [], "shim": [], "shim_file": []}
                for _ in range(args.rounds):
                    samples["direct"].append(rate(make(direct), args.seconds))
                    samples["shim"].append(rate(make(shim), args.seconds))
                    injector.inject(shim_h.members[0].name, "DEVICE_ERROR", calls="C_SeedRandom")
                    try:
                        samples["shim_file"].append(rate(make(shim), args.seconds))
                    finally:
                        injector.heal(shim_h.members[0].name)
                med = {side: statistics.median(values) for side, values in samples.items()}
                us = {side: 1e6 / ops for side, ops in med.items()}
                results[name] = {
                    "pkcs11_calls_per_op": calls,
                    "direct_ops_s": round(med["direct"]),
                    "shim_ops_s": round(med["shim"]),
                    "shim_with_file_ops_s": round(med["shim_file"]),
                    "overhead_us_per_op": round(us["shim"] - us["direct"], 2),
                    "overhead_us_per_call": round((us["shim"] - us["direct"]) / calls, 2),
                    "with_file_us_per_call": round((us["shim_file"] - us["direct"]) / calls, 2),
                    "ratio": round(med["shim"] / med["direct"], 3),
                }
    if args.json:
        print(json.dumps(results))
    else:
        for name, row in results.items():
            print(f"{name:8} direct {row['direct_ops_s']:>7}/s  shim {row['shim_ops_s']:>7}/s "
                  f"(ratio {row['ratio']}, {row['overhead_us_per_call']:+.2f} us per PKCS#11 "
                  f"call; {row['with_file_us_per_call']:+.2f} us with a control file present)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
