"""What a module that fails to load or to initialize means: permanent, or worth trying again.

- The file can't be loaded at all (not a shared object, no ``C_GetFunctionList``, or that
  call fails): a permanent :class:`~hsm.errors.ModuleLoadError` naming the file and what
  ``dlopen`` said. Found with ctypes before python-pkcs11 tries: its loader raises a plain
  ``PKCS11Error`` that does not say which step failed.
- The module loads but ``C_Initialize`` fails: what SoftHSM does while its token directory
  is missing or unreadable (a lost token). A transient :class:`~hsm.errors.HSMUnavailable`,
  reason ``module_init_failed``, naming the module and the answer: a later attempt (the
  cluster's probe) may succeed. python-pkcs11's exceptions carry no text, so the message
  names the exception class.
- ``C_Initialize`` answers "already initialized": other code of this process owns the
  module; permanent.
"""

from __future__ import annotations

import pkcs11.exceptions as p11e

from hsm.errors import HSMUnavailable, ModuleLoadError, Reason
from hsm.pkcs11 import native
from hsm.pkcs11.translate import translate_error

__all__ = ["check_loadable", "init_error", "load_error", "named"]


def named(exc: p11e.PKCS11Error) -> str:
    """The exception's class name, or its message for python-pkcs11's plain PKCS11Error."""
    if type(exc) is p11e.PKCS11Error:
        return str(exc) or "PKCS11Error"
    return type(exc).__name__


def check_loadable(path: str) -> None:
    """:class:`ModuleLoadError` unless ``path`` is a shared object with a working
    ``C_GetFunctionList``."""
    try:
        native.function_table(path)
    except OSError as exc:  # dlopen's own message: names the file and why
        raise ModuleLoadError(f"PKCS#11 module {path} can't be loaded: {exc}") from None
    except AttributeError:
        raise ModuleLoadError(f"{path} is not a PKCS#11 module (it has no "
                              "C_GetFunctionList)") from None
    except p11e.PKCS11Error as exc:
        raise ModuleLoadError(f"PKCS#11 module {path} can't be loaded: its "
                              f"C_GetFunctionList answered {named(exc)}") from None


def load_error(path: str, exc: p11e.PKCS11Error) -> HSMUnavailable | ModuleLoadError:
    """What a failed ``pkcs11.lib()`` or ``initialize()`` of ``path`` means (see above)."""
    if type(exc) is p11e.PKCS11Error and "loading" in str(exc):
        return ModuleLoadError(f"PKCS#11 module {path} can't be loaded: {exc}")
    if translate_error(exc, "initialize").reason is Reason.ALREADY_INITIALIZED:
        return ModuleLoadError(
            f"PKCS#11 module {path} is already initialized by other code in this process "
            "(C_Initialize answered CKR_CRYPTOKI_ALREADY_INITIALIZED); hsm must load it "
            "first, or be given its own copy of the module")
    return init_error(path, named(exc))


def init_error(path: str, what: str) -> HSMUnavailable:
    """The transient error for a ``C_Initialize`` of ``path`` that answered ``what``."""
    return HSMUnavailable(
        f"PKCS#11 module {path} failed to initialize: C_Initialize answered {what} "
        "(SoftHSM answers so while its token directory is missing or unreadable); a later "
        "attempt may succeed", reason=Reason.MODULE_INIT_FAILED)
