"""No "Exception ignored" tracebacks on stderr when calls fail under injected faults.

python-pkcs11 finishes an object search whose C_FindObjectsInit failed from a finalizer,
whose own failing C_FindObjectsFinal it can only print; a long-running process showed those
tracebacks on stderr during every fault. The edge finishes every search itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from hsm.testing import Harness

_CHILD = textwrap.dedent("""
    import gc
    import sys

    import hsm
    from hsm.testing import FaultInjector

    config = sys.argv[1]
    faults = FaultInjector.for_config(config)
    with hsm.open(config) as client:
        key = client.create_key()
        blob = client.wrap(key.key_id, bytes(32))
        calls = (client.list_keys, lambda: client.unwrap(blob),
                 lambda: client.key_info(key.key_id), client.create_key)
        for error in ("DEVICE_ERROR", "GENERAL_ERROR", "FUNCTION_FAILED"):
            for only in ("C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal", None):
                faults.inject("hsm-a", error, calls=only)
                for call in calls * 2:
                    try:
                        call()
                    except hsm.HSMError:
                        pass
                faults.heal("hsm-a")
                gc.collect()  # finalizers of abandoned searches would run (and print) here
                for call in calls:
                    try:
                        call()
                    except hsm.HSMError:
                        pass
    gc.collect()
    print("done")
""")


def test_faults_print_no_exception_ignored_tracebacks(hsm_harness: Harness) -> None:
    """A process making calls through injected DEVICE_ERROR, GENERAL_ERROR and
    FUNCTION_FAILED faults (on the object search calls, then on every call) prints no
    "Exception ignored" traceback on stderr, and keeps working after each heal."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(hsm_harness.config_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "done"
    assert "Exception ignored" not in done.stderr
    assert "Traceback" not in done.stderr
