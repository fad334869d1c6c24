#!/usr/bin/env python3
"""Benchmark: ``generate_data_key`` + ``unwrap`` through ``hsm`` against raw python-pkcs11.

One run, one SoftHSM token (made in a temporary directory), one process, one master key.
Each side does the same PKCS#11 work per operation:

- ``C_GenerateRandom`` of 32 bytes;
- AES-256-GCM encryption of those bytes inside the HSM under the master key, with a
  12-byte ``os.urandom`` IV and the 38-byte blob header + encoded context as AAD;
- building the sealed blob, parsing it back, and AES-GCM decryption inside the HSM.

The ``hsm`` side is ``client.generate_data_key`` then ``client.unwrap``. The raw side uses
a worker session opened without a PIN on the same loaded module (the client's login
session already logged the token in), the same key object (found by label once) and
hand-written blob code. Rounds alternate hsm/raw/hsm/raw...; the medians of each side
and their ratio are reported. Target: the library costs at most 15% (ratio >= 0.85).

    .venv/bin/python scripts/bench/data_keys.py [--rounds 7] [--seconds 1.5] [--json]
    .venv/bin/python scripts/bench/data_keys.py --profile 5     # cProfile of the hsm side

Exits 0 whether or not the target is met (it is a measurement); non-zero on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import pkcs11
from _rounds import Op, Rate, profile, run_for
from pkcs11 import Mechanism, ObjectClass

import hsm
from hsm.config import load_config
from hsm.context import encode_context
from hsm.keys.master import label_for
from hsm.pkcs11 import Module

TARGET = 0.85
CONTEXT: Mapping[str, str] = {"tenant": "acme"}
BENCH_LABEL = "bench"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

# The blob format written by hand (see hsm/keys/blob.py and docs/FORMAT.md).
_HEADER = struct.Struct(">4sBB16sI12s")
_MAGIC = b"HSMK"
_FORMAT = 1
_ALG = 1
_GCM = Mechanism.AES_GCM
_GCMParams = pkcs11.GCMParams



# -- the token ----------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string of a plain path is a valid TOML basic string


def _token_by_hand(work: Path) -> Path:
    """One SoftHSM instance in ``work``: module copy, conf, token, hsm.toml. Returns its path."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise SystemExit("softhsm2-util not found on PATH (apt-get install softhsm2)")
    source = Path(os.environ.get("HSM_SOFTHSM_MODULE", SOFTHSM_MODULE))
    module = work / f"libsofthsm2-bench-{secrets.token_hex(4)}.so"
    shutil.copyfile(source, module)
    tokens = work / "tokens"
    tokens.mkdir(mode=0o700)
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n", encoding="utf-8")
    pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
    pin_file = work / "pin"
    _write_private(pin_file, pin)
    done = subprocess.run(
        [util, "--module", str(module), "--init-token", "--free", "--label", BENCH_LABEL,
         "--pin", pin, "--so-pin", so_pin],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).replace(pin, "***").replace(so_pin, "***")
        raise SystemExit(f"softhsm2-util --init-token failed: {detail.strip()}")
    config = work / "hsm.toml"
    _write_private(config, "\n".join([
        "[[member]]",
        'name = "bench"',
        f"module = {_toml_str(str(module))}",
        f"token = {_toml_str(BENCH_LABEL)}",
        f"pin = {_toml_str('file:' + str(pin_file))}",
        f"env = {{ SOFTHSM2_CONF = {_toml_str(str(conf))} }}",
        "",
    ]))
    return config


def make_token(work: Path) -> Path:
    """The hsm.toml of a fresh one-token SoftHSM in ``work`` (hsm.testing's harness if any)."""
    try:
        from hsm.testing import harness_up
    except ImportError:
        return _token_by_hand(work)
    # No fault-injection shim: measure the library against the module itself.
    return Path(harness_up(work / "harness", members=1, faults=False).config_path)


# -- the two sides ------------------------------------------------------------------------


def hsm_op(client: hsm.Client, key_id: str) -> Op:
    def op() -> object:
        dk = client.generate_data_key(key_id, context=CONTEXT)
        return client.unwrap(dk.wrapped, context=CONTEXT)
    return op


def raw_op(session: Any, key: Any, key_uuid: bytes, version: int, ctx: bytes) -> Op:
    """The same PKCS#11 calls and blob bytes, written directly against python-pkcs11."""
    def op() -> object:
        # generate_data_key
        plaintext = session.generate_random(256)  # bits
        iv = os.urandom(12)
        header = _HEADER.pack(_MAGIC, _FORMAT, _ALG, key_uuid, version, iv)
        sealed = cast(bytes, key.encrypt(plaintext, mechanism=_GCM,
                                         mechanism_param=_GCMParams(iv, header + ctx, 128)))
        blob = header + sealed
        # unwrap
        magic, fmt, alg, _kid, _ver, blob_iv = _HEADER.unpack_from(blob)
        if magic != _MAGIC or fmt != _FORMAT or alg != _ALG:
            raise ValueError("malformed blob")
        return cast(bytes, key.decrypt(blob[_HEADER.size:], mechanism=_GCM,
                                       mechanism_param=_GCMParams(
                                           blob_iv, blob[:_HEADER.size] + ctx, 128)))
    return op


def _raw_seal(key: Any, key_uuid: bytes, version: int, ctx: bytes, plaintext: bytes) -> bytes:
    iv = os.urandom(12)
    header = _HEADER.pack(_MAGIC, _FORMAT, _ALG, key_uuid, version, iv)
    sealed = cast(bytes, key.encrypt(plaintext, mechanism=_GCM,
                                     mechanism_param=_GCMParams(iv, header + ctx, 128)))
    return header + sealed


def _raw_open(key: Any, blob: bytes, ctx: bytes) -> bytes:
    iv = blob[26:38]
    return cast(bytes, key.decrypt(blob[38:], mechanism=_GCM,
                                   mechanism_param=_GCMParams(iv, blob[:38] + ctx, 128)))


def cross_check(client: hsm.Client, key_id: str, key: Any, key_uuid: bytes, version: int,
                ctx: bytes) -> None:
    """Both sides must produce and accept each other's blobs: proof they do the same work."""
    dk = client.generate_data_key(key_id, context=CONTEXT)
    if len(dk.wrapped) != _HEADER.size + 32 + 16:
        raise SystemExit(f"hsm blob is {len(dk.wrapped)} bytes; expected {_HEADER.size + 48}")
    if _raw_open(key, dk.wrapped, ctx) != bytes(dk.plaintext):
        raise SystemExit("raw side can't open an hsm blob")
    plaintext = os.urandom(32)
    blob = _raw_seal(key, key_uuid, version, ctx, plaintext)
    if bytes(client.unwrap(blob, context=CONTEXT)) != plaintext:
        raise SystemExit("hsm can't open a raw-side blob")


# -- measuring ----------------------------------------------------------------------------





def measure(hsm_side: Op, raw_side: Op, rounds: int, seconds: float, warmup: float,
            *, verbose: bool) -> tuple[list[Rate], list[Rate]]:
    run_for(hsm_side, warmup)
    run_for(raw_side, warmup)
    hsm_rates: list[Rate] = []
    raw_rates: list[Rate] = []
    for i in range(rounds):
        hsm_rates.append(run_for(hsm_side, seconds))
        raw_rates.append(run_for(raw_side, seconds))
        if verbose:
            h, r = hsm_rates[-1], raw_rates[-1]
            print(f"round {i + 1}/{rounds}: hsm {h.wall:7.0f} ops/s   raw {r.wall:7.0f} ops/s   "
                  f"ratio {h.wall / r.wall:.3f}   (per CPU-s: hsm {h.cpu:7.0f}  raw {r.cpu:7.0f}  "
                  f"ratio {h.cpu / r.cpu:.3f})", flush=True)
    return hsm_rates, raw_rates




# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="hsm generate_data_key+unwrap vs raw python-pkcs11 on one SoftHSM token")
    # Many short alternating rounds: on a shared VM the speed drifts by tens of percent
    # within seconds; short interleaved rounds put both sides through the same drift.
    parser.add_argument("--rounds", type=int, default=41, help="rounds per side (default 41)")
    parser.add_argument("--seconds", type=float, default=0.25,
                        help="seconds per round per side (default 0.25)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="warm-up seconds per side (default 1.0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="instead of measuring, cProfile the hsm side for SECONDS")
    parser.add_argument("--top", type=int, default=30, help="rows of profile output")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--rounds must be >= 1, --seconds > 0, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hsm-bench-") as tmp:
        config = load_config(make_token(Path(tmp)))
        member = config.members[0]
        with hsm.open(config) as client:
            info = client.create_key()
            key_uuid = uuid.UUID(info.key_id).bytes
            ctx = encode_context(CONTEXT)
            # The client's module: the same process-wide object, one more reference.
            module = Module.acquire(member.module, member.env)
            try:
                session = module.find_token(member.token).open(rw=True)  # no PIN: logged in
                try:
                    key = session.get_key(object_class=ObjectClass.SECRET_KEY,
                                          label=label_for(info.key_id, info.version))
                    cross_check(client, info.key_id, key, key_uuid, info.version, ctx)
                    hsm_side = hsm_op(client, info.key_id)
                    raw_side = raw_op(session, key, key_uuid, info.version, ctx)
                    if args.profile > 0:
                        run_for(hsm_side, args.warmup)
                        print(profile(hsm_side, args.profile, args.top))
                        return 0
                    hsm_rates, raw_rates = measure(hsm_side, raw_side, args.rounds,
                                                   args.seconds, args.warmup,
                                                   verbose=not args.json)
                finally:
                    session.close()
                os_locking = module.os_locking
            finally:
                module.release()

    hsm_median = statistics.median(r.wall for r in hsm_rates)
    raw_median = statistics.median(r.wall for r in raw_rates)
    ratio = hsm_median / raw_median
    cpu_ratio = (statistics.median(r.cpu for r in hsm_rates)
                 / statistics.median(r.cpu for r in raw_rates))
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    if args.json:
        print(json.dumps({
            "rounds": args.rounds,
            "seconds": args.seconds,
            "hsm_ops_per_s": [round(r.wall, 1) for r in hsm_rates],
            "raw_ops_per_s": [round(r.wall, 1) for r in raw_rates],
            "hsm_ops_per_cpu_s": [round(r.cpu, 1) for r in hsm_rates],
            "raw_ops_per_cpu_s": [round(r.cpu, 1) for r in raw_rates],
            "hsm_median": round(hsm_median, 1),
            "raw_median": round(raw_median, 1),
            "ratio": round(ratio, 4),
            "cpu_ratio": round(cpu_ratio, 4),
            "target": TARGET,
            "pass": ratio >= TARGET,
            "os_locking": os_locking,
            "python": platform.python_version(),
            "python_pkcs11": metadata.version("python-pkcs11"),
        }))
    else:
        print(f"hsm  median {hsm_median:8.0f} ops/s   (generate_data_key + unwrap)")
        print(f"raw  median {raw_median:8.0f} ops/s   (python-pkcs11, same calls)")
        print(f"ratio (hsm/raw) = {ratio:.2f}  target >= {TARGET:.2f}  {verdict}")
        print(f"[ratio of medians per CPU second {cpu_ratio:.2f}; {args.rounds} rounds x "
              f"{args.seconds:g} s per side; OS locking {'on' if os_locking else 'off'}; "
              f"python {platform.python_version()}, "
              f"python-pkcs11 {metadata.version('python-pkcs11')}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
