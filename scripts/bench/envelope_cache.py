#!/usr/bin/env python3
"""Benchmark: 1 KiB envelope messages with the data-key cache on and off.

One run, one process, one throw-away SoftHSM token, two clients on it:

- off: ``hsm.open(config)``: every ``client.encrypt`` asks the HSM for a fresh data key
  (``generate_data_key``) and every ``client.decrypt`` unseals one (``unwrap``);
- on: ``hsm.open(config, cache=hsm.CacheConfig(max_age=60, max_messages=10**9))``: the
  data key and the opened sealed key are reused (``hsm/envelope/cache.py``), so after the
  first message no HSM call is made.

One operation = ``client.encrypt(key_id, 1 KiB, context)`` then ``client.decrypt(message,
context)`` (checked equal once per side before measuring). Rounds alternate off/on/off/on
(short rounds: the VM drifts); messages/s per side are the medians of the rounds and the
verdict is their ratio, on / off. Target: >= 20x. Each round also reports messages per CPU
second of this thread (SoftHSM runs in it), less sensitive to other load on the machine.

    .venv/bin/python scripts/bench/envelope_cache.py [--rounds 21] [--seconds 0.5] [--json]
    .venv/bin/python scripts/bench/envelope_cache.py --profile on    # cProfile one side

A measurement: exits 0 whatever the numbers; non-zero only on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from _envelope_common import (
    CONTEXT,
    median,
    one_member_harness,
    verdict,
    versions,
    versions_line,
)
from _rounds import Op, Rate, profile, run_for

import hsm
from hsm.testing import FaultInjector

TARGET = 20.0
SIZE = 1024
# --hsm-delay-ms: one delay per HSM operation (generate_data_key, unwrap), not per call.
DELAYED_CALLS = "C_EncryptInit,C_DecryptInit"






def message_op(client: hsm.Client, key_id: str, plaintext: bytes) -> Op:
    def op() -> object:
        return client.decrypt(client.encrypt(key_id, plaintext, CONTEXT), CONTEXT)
    return op




def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="1 KiB client.encrypt+decrypt with the data-key cache on vs off")
    parser.add_argument("--rounds", type=int, default=21, help="rounds per side (default 21)")
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="seconds per round per side (default 0.5)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="warm-up seconds per side (default 0.5)")
    parser.add_argument("--hsm-delay-ms", type=int, default=0, metavar="MS",
                        help="what-if: load SoftHSM through the fault shim and make every "
                             "data-key operation wait MS ms (a networked HSM's round "
                             "trip); default 0: no shim, SoftHSM as it is")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--profile", choices=("on", "off"), default=None,
                        help="instead of measuring, cProfile that side for --profile-seconds")
    parser.add_argument("--profile-seconds", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=30, help="rows of profile output")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0 or args.hsm_delay_ms < 0:
        parser.error("--rounds must be >= 1, --seconds > 0, --warmup >= 0, "
                     "--hsm-delay-ms >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plaintext = os.urandom(SIZE)
    cache_config = hsm.CacheConfig(max_age=60, max_messages=10**9)
    delay = args.hsm_delay_ms
    with one_member_harness("hsm-bench-cache-", faults=delay > 0) as harness, \
            hsm.open(harness.config_path) as off, \
            hsm.open(harness.config_path, cache=cache_config) as on:
        key_id = off.create_key().key_id
        if delay:
            # What-if: every data-key operation waits as for a networked HSM's round trip.
            FaultInjector(harness).inject(harness.members[0].name, delay_ms=delay,
                                          calls=DELAYED_CALLS)
        sides = {"off": message_op(off, key_id, plaintext), "on": message_op(on, key_id, plaintext)}
        for name, op in sides.items():
            if op() != plaintext:
                raise SystemExit(f"cache {name}: round trip does not give back the plaintext")
        if args.profile is not None:
            run_for(sides[args.profile], args.warmup)
            print(f"== cProfile: cache {args.profile}, {args.profile_seconds:g} s of "
                  f"1 KiB encrypt+decrypt")
            print(profile(sides[args.profile], args.profile_seconds, args.top))
            return 0
        for op in sides.values():
            run_for(op, args.warmup)
        rates: dict[str, list[Rate]] = {"off": [], "on": []}
        for i in range(args.rounds):
            for name in (("off", "on") if i % 2 == 0 else ("on", "off")):
                rates[name].append(run_for(sides[name], args.seconds))
            if not args.json:
                o, n = rates["off"][-1], rates["on"][-1]
                print(f"round {i + 1}/{args.rounds}: off {o.wall:7.0f} msg/s   on {n.wall:7.0f} "
                      f"msg/s   ratio {n.wall / o.wall:5.1f}   (per CPU-s: off {o.cpu:7.0f}  "
                      f"on {n.cpu:7.0f}  ratio {n.cpu / o.cpu:5.1f})", flush=True)
        stats = on.cache.stats() if on.cache is not None else {}

    off_median = median([r.wall for r in rates["off"]])
    on_median = median([r.wall for r in rates["on"]])
    ratio = on_median / off_median
    cpu_ratio = median([r.cpu for r in rates["on"]]) / median([r.cpu for r in rates["off"]])
    found = versions()
    if args.json:
        result: dict[str, Any] = {
            "message_bytes": SIZE, "rounds": args.rounds, "seconds": args.seconds,
            "off_msgs_per_s": [round(r.wall, 1) for r in rates["off"]],
            "on_msgs_per_s": [round(r.wall, 1) for r in rates["on"]],
            "off_median": round(off_median, 1), "on_median": round(on_median, 1),
            "ratio": round(ratio, 2), "cpu_ratio": round(cpu_ratio, 2),
            "target": TARGET, "pass": ratio >= TARGET, "cache_stats": stats,
            "hsm_delay_ms": delay,
            "versions": found,
        }
        print(json.dumps(result))
        return 0
    print(f"cache off  median {off_median:8.0f} msg/s   (1 KiB encrypt + decrypt, HSM calls "
          f"each message)")
    print(f"cache on   median {on_median:8.0f} msg/s   (data key and opened key reused)")
    print(f"ratio (on/off) = {ratio:.1f}  target >= {TARGET:.0f}  {verdict(ratio >= TARGET)}")
    if delay:
        print(f"[WHAT-IF: SoftHSM through the fault shim, +{delay} ms per data-key operation "
              f"({DELAYED_CALLS}); not the plain-SoftHSM figure]")
    print(f"[ratio of medians per CPU second {cpu_ratio:.1f}; {args.rounds} rounds x "
          f"{args.seconds:g} s per side; cache stats {stats}; {versions_line(found)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
