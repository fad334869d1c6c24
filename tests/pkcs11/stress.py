"""Many threads on one client: run as a script so that a crash fails the test, not pytest.

Usage: python stress.py CONFIG SECONDS THREADS. Prints one JSON line with the counts.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections import Counter

import hsm


def main(config: str, seconds: float, threads: int) -> int:
    counts: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    with hsm.open(config) as client:
        module = client._primary.module
        assert module is not None
        module.reinit_interval = 0.0  # this test forces re-initializes on purpose
        keys = [client.create_key().key_id for _ in range(2)]
        stop = time.monotonic() + seconds

        def worker(seed: int) -> None:
            rng = random.Random(seed)  # noqa: S311 - picks operations, not keys
            local: Counter[str] = Counter()
            try:
                while time.monotonic() < stop:
                    key = rng.choice(keys)
                    ctx = {"t": str(rng.randrange(4))}
                    op = rng.random()
                    if op < 0.4:
                        dk = client.generate_data_key(key, context=ctx)
                        if client.unwrap(dk.wrapped, context=ctx) != dk.plaintext:
                            raise AssertionError("data key unwrapped to other bytes")
                        local["datakey"] += 1
                    elif op < 0.7:
                        material = os.urandom(rng.choice((16, 32, 48)))
                        blob = client.wrap(key, material, context=ctx)
                        if client.unwrap(blob, context=ctx) != material:
                            raise AssertionError("wrap/unwrap gave other bytes")
                        local["wrap"] += 1
                    elif op < 0.85:
                        blob = client.wrap(key, b"x" * 32, context=ctx)
                        try:
                            client.unwrap(blob, context={"t": "other"})
                        except hsm.InvalidCiphertext:
                            local["refused"] += 1
                        else:
                            raise AssertionError("wrong context was accepted")
                    elif op < 0.95:
                        if len(client.generate_random(32)) != 32:
                            raise AssertionError("short random")
                        local["random"] += 1
                    elif op < 0.99:
                        listed = {k.key_id for k in client.list_keys()}
                        if not set(keys) <= listed:
                            raise AssertionError("list_keys lost a key")
                        local["list"] += 1
                    else:
                        client.key_info(key)
                        local["info"] += 1
            except Exception as exc:  # every failure is reported, none hidden
                with lock:
                    problems.append(f"{type(exc).__name__}: {exc}")
            with lock:
                counts.update(local)

        def reinitializer() -> None:
            # Re-initialize under load: in-flight calls drain first, nothing may fail.
            while time.monotonic() < stop - 0.3:
                time.sleep(0.4)
                module.reinitialize(module.generation)
                with lock:
                    counts["reinitialize"] += 1

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        pool.append(threading.Thread(target=reinitializer))
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    print(json.dumps({"counts": counts, "problems": problems[:10],
                      "problem_count": len(problems)}))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
