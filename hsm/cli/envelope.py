"""``hsm encrypt`` and ``hsm decrypt``: files and streams under a master key.

Envelope encryption by default: any size, streamed in constant memory (a data key from the
HSM encrypts the data here, in AES-256-GCM frames; the message carries the data key sealed
under the master key). ``--direct`` encrypts 1 to 4096 bytes inside the HSM itself, with no
data key (AWS KMS Encrypt). IN and OUT are paths; ``-`` is stdin / stdout.

Output to a path goes to a temporary file in OUT's directory, is flushed to disk and renamed
over OUT only once everything succeeded; on any failure the temporary file is removed and
OUT is left as it was (absent, or with its old content). Decrypted files are created mode
0600. Decryption verifies each frame before writing it, so nothing unauthenticated is ever
written, not even to stdout (where a failure mid-stream leaves an authentic but incomplete
prefix, and exit status 1).

No partial output outlives the command, however it ends. Where the filesystem can
(``O_TMPFILE``: ext4, tmpfs, xfs, btrfs...) the temporary file has no name at all until it
is complete, then gets one and is renamed over OUT: a ``kill -9`` leaves nothing. Elsewhere
it is ``.OUT.hsm-PID-XXXXXXXX.tmp``, locked while written: SIGTERM and SIGHUP remove it as
SIGINT does, and after a ``kill -9`` the next ``hsm encrypt``/``decrypt`` into that directory
removes it (its process gone, its lock free). A failed write names OUT, never IN (a full
disk is the output's problem), and says OUT was not written or was left unchanged.

Past the 400-line mark: the output-file handling above serves these two commands only, and reads
best next to them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import secrets
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, BinaryIO, cast

import click

from hsm.cli._common import (
    CLIError,
    common_options,
    context_option,
    describe,
    emit,
    open_client,
    settings,
    stdout_is_terminal,
)
from hsm.envelope import DEFAULT_FRAME, FRAME_MAX, FRAME_MIN
from hsm.envelope.format import MAGIC as ENVELOPE_MAGIC
from hsm.errors import ContextMismatch, HSMError, InvalidCiphertext, Reason
from hsm.keys.blob import DIRECT, DIRECT_MAX_PLAINTEXT, parse_blob

__all__ = ["PROGRESS_MIN", "decrypt", "encrypt", "want_progress"]

#: Inputs at least this large (or of unknown size) get a progress bar on a terminal.
PROGRESS_MIN = 8 * 1024 * 1024

_KEY_HELP = "Master key id (see 'hsm key list')."
_STDIO = "-"

Progress = Callable[[int], None]


# -- input and output ------------------------------------------------------------------------


@contextlib.contextmanager
def _reading(path: str) -> Iterator[tuple[BinaryIO, int | None]]:
    """IN opened for binary reading, with its size when it is a regular file."""
    if path == _STDIO:
        stream = sys.stdin.buffer
        yield stream, _regular_size(stream)
        return
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, after the caller is done
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    with stream:
        yield stream, _regular_size(stream)


def _regular_size(stream: BinaryIO) -> int | None:
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's BytesIO)
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class _OutputError(OSError):
    """Writing OUT failed: the message names OUT and what became of it (never IN)."""

    def __init__(self, exc: OSError, where: str, outcome: str) -> None:
        super().__init__(exc.errno, exc.strerror, where)
        reason = exc.strerror or str(exc)
        self.message = f"cannot write {where}: {reason}" + (f"; {outcome}" if outcome else "")


class _Output(io.RawIOBase):
    """OUT, written through ``inner``: a failed write or flush is an :class:`_OutputError`
    naming OUT (``where``) and ``outcome``."""

    def __init__(self, inner: BinaryIO | io.RawIOBase, where: str, outcome: str, *,
                 owned: bool = False) -> None:
        super().__init__()
        self._inner, self._where, self._outcome, self._owned = inner, where, outcome, owned

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._owned:
                self._inner.close()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            written = self._inner.write(data)
        except OSError as exc:
            raise self.failed(exc) from None
        return len(data) if written is None else written

    def flush(self) -> None:
        try:
            self._inner.flush()
        except OSError as exc:
            raise self.failed(exc) from None

    def failed(self, exc: OSError) -> _OutputError:
        return exc if isinstance(exc, _OutputError) else _OutputError(exc, self._where,
                                                                     self._outcome)


def _file(fd: int, where: str, outcome: str) -> tuple[_Output, BinaryIO]:
    """OUT's file descriptor ``fd``, buffered; closing the stream closes ``fd``."""
    raw = _Output(io.FileIO(fd, "wb", closefd=True), where, outcome, owned=True)
    return raw, cast(BinaryIO, io.BufferedWriter(raw))


@contextlib.contextmanager
def _writing(path: str, *, private: bool) -> Iterator[BinaryIO]:
    """OUT for binary writing: stdout for ``-``; for a path, a temporary file beside it that
    replaces it only if the block succeeds (and is removed if it doesn't, SIGTERM and
    SIGHUP included; see the module docstring for ``kill -9``).

    An existing OUT that is not a regular file (``/dev/null``, a FIFO) is written in place,
    like stdout. ``private``: the new file is mode 0600, else ``0666 & ~umask``.
    """
    if path == _STDIO:
        stdout = _Output(sys.stdout.buffer, "stdout", "")
        try:
            yield cast(BinaryIO, stdout)
        finally:
            stdout.flush()
        return
    if os.path.exists(path) and not os.path.isfile(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except OSError as exc:
            raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None
        raw, special = _file(fd, path, "")
        try:
            with special:
                yield special
                special.flush()
        except OSError as exc:  # flushed on close
            raise raw.failed(exc) from None
        return
    outcome = f"{path} left unchanged" if os.path.lexists(path) else f"{path} not written"
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale(directory)
    fd, temp = _create_temp(directory, os.path.basename(path), path, outcome)
    raw, out = _file(fd, path, outcome)
    written = False
    try:
        with _cleanup_on_signals(), out:
            if not private:
                os.fchmod(fd, 0o666 & ~_umask())  # created 0600; ciphertext is not secret
            yield out
            try:
                out.flush()
                os.fsync(fd)
                if temp is None:  # O_TMPFILE: it gets a name only now that it is whole
                    temp = _link_temp(fd, directory, os.path.basename(path))
                os.replace(temp, path)
            except OSError as exc:
                raise raw.failed(exc) from None
            temp, written = None, True  # it is OUT now
    except BaseException as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, _Terminated) and not written:
            click.echo(f"hsm: error: {signal.Signals(exc.signum).name}: {outcome}", err=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself, durable (best effort)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# Temporary files: ".OUT.hsm-PID-XXXXXXXX.tmp", locked (flock) by the process writing them.
_TEMP_RE = re.compile(r"\A\..+\.hsm-(\d+)-[0-9a-f]{8}\.tmp\Z", re.DOTALL)


def _temp_name(directory: str, base: str) -> str:
    return os.path.join(directory, f".{base}.hsm-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _create_temp(directory: str, base: str, path: str, outcome: str) -> tuple[int, str | None]:
    """A new file in ``directory`` (mode 0600, locked): unnamed (``O_TMPFILE``) where the
    filesystem allows it, else named by :func:`_temp_name`. (fd, name or None)."""
    tmpfile = getattr(os, "O_TMPFILE", None)
    if tmpfile is not None and os.path.isdir("/proc/self/fd"):  # linked through /proc
        try:
            fd = os.open(directory, tmpfile | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError:
            pass  # not on this filesystem: a named file, below
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd, None
    for _ in range(100):
        name = _temp_name(directory, base)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                         | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise CLIError(f"cannot write {path}: {exc.strerror or exc}; {outcome}") from None
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until closed: the file is being written
        return fd, name
    raise CLIError(f"cannot write {path}: no free temporary name in {directory}")


def _link_temp(fd: int, directory: str, base: str) -> str:
    """Give the complete unnamed file ``fd`` a temporary name (to rename over OUT)."""
    # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N: os.link uses plain link() (which does
    # not follow that magic link) unless a directory fd is given.
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            name = _temp_name(directory, base)
            try:
                os.link(str(fd), name, src_dir_fd=proc, follow_symlinks=True)
            except FileExistsError:
                continue
            return name
    finally:
        os.close(proc)


def _remove_stale(directory: str) -> None:
    """Remove temporary files of ours left in ``directory`` by processes killed outright:
    named by :func:`_temp_name`, regular, ours, their process gone and their lock free."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        found = _TEMP_RE.match(entry.name)
        if found is None or _alive(int(found[1])):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.path)
        except OSError:
            continue  # locked: a writer in another PID namespace; or gone meanwhile
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, someone else's
    return True


class _Terminated(SystemExit):
    """SIGTERM or SIGHUP while OUT is written: unwinds like SIGINT, exit status 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise _Terminated(signum)


@contextlib.contextmanager
def _cleanup_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`_Terminated` (where they would
    have killed the process outright: a handler or SIG_IGN someone set is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _terminate)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _same_file(src: str, dst: str) -> bool:
    if _STDIO in (src, dst):
        return False
    try:
        return os.path.samefile(src, dst)
    except OSError:  # OUT does not exist yet
        return False


def _is_stdout(path: str) -> bool:
    """``-``, or a path naming the file stdout is (``/dev/stdout``): no text goes there."""
    if path == _STDIO:
        return True
    try:
        ours, theirs = os.fstat(sys.stdout.fileno()), os.stat(path)
    except (AttributeError, OSError, ValueError):
        return False
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


def _head(stream: BinaryIO) -> bytes:
    """The first bytes of IN without consuming them, where the stream can tell (a hint)."""
    peek = getattr(stream, "peek", None)
    if peek is None:
        return b""
    try:
        return bytes(peek(4)[:4])
    except (OSError, ValueError):
        return b""


def _read_at_most(stream: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``stream`` (fewer only at its end)."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        data = stream.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


# -- progress --------------------------------------------------------------------------------


def want_progress(size: int | None, terminal: bool) -> bool:
    """A bar only on a terminal, and only for large inputs or inputs of unknown size."""
    return terminal and (size is None or size >= PROGRESS_MIN)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _progress(label: str, size: int | None) -> Iterator[Progress | None]:
    """A rich progress bar on stderr (never on stdout: it may carry the data or the JSON),
    removed when done; ``None`` where :func:`want_progress` says no."""
    if not want_progress(size, _stderr_is_terminal()):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=size)
        yield lambda n: bar.advance(task, n)


# -- errors ----------------------------------------------------------------------------------


def _failure(exc: HSMError, src: str, dst: str, *, direct: bool) -> CLIError:
    """One line saying what went wrong with IN, and that OUT was not written."""
    name = "stdin" if src == _STDIO else src
    kept = "" if dst == _STDIO else f"; {dst} not written"
    if isinstance(exc, ContextMismatch):
        return CLIError(f"{exc.message}{kept}")
    if isinstance(exc, InvalidCiphertext):
        if exc.reason is Reason.MALFORMED:
            return CLIError(f"{name}: {exc.message}{kept}")
        if direct:
            return CLIError(f"{name}: ciphertext does not verify (altered, made under another "
                            f"key, or bound to another context: check --context){kept}")
        if exc.reason in (Reason.TRUNCATED, Reason.TRAILING):
            return CLIError(f"{name}: {exc.message}{kept}")
        return CLIError(f"{name}: {exc.message} (altered, or made under another key){kept}")
    return CLIError(describe(exc))


@contextlib.contextmanager
def _reported(src: str, dst: str, *, direct: bool) -> Iterator[None]:
    try:
        yield
    except HSMError as exc:
        raise _failure(exc, src, dst, direct=direct) from None
    except _OutputError as exc:
        raise CLIError(exc.message) from None
    except OSError as exc:
        where = exc.filename or (dst if isinstance(exc, BrokenPipeError) else src)
        raise CLIError(f"{where}: {exc.strerror or exc}") from None


def _check_paths(src: str, dst: str) -> None:
    if _same_file(src, dst):
        raise click.UsageError(f"OUT is the same file as IN ({dst}); write somewhere else")
    if settings().json and _is_stdout(dst):
        raise click.UsageError("--json needs OUT to be a file: stdout carries the data")


def _summary(key_id: str, version: int, bytes_in: int, bytes_out: int, seconds: float,
             frame_size: int | None, direct: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"key_id": key_id, "version": version, "bytes_in": bytes_in,
                           "bytes_out": bytes_out}
    if frame_size is not None:
        out["frame_size"] = frame_size
    out.update(seconds=round(seconds, 6), direct=direct)
    return out


def _report(summary: dict[str, Any], verb: str, dst: str) -> None:
    if _is_stdout(dst):
        return  # stdout is the data (and --json was refused)
    emit(summary, f"{verb} {summary['bytes_in']} bytes -> {dst} ({summary['bytes_out']} "
                  f"bytes) under key {summary['key_id']} v{summary['version']} in "
                  f"{summary['seconds']:.2f} s")


# -- commands --------------------------------------------------------------------------------


@click.command()
@click.option("--key", "key_id", required=True, metavar="KEY_ID", help=_KEY_HELP)
@context_option
@click.option("--direct", is_flag=True,
              help=f"Encrypt inside the HSM with no data key: 1 to {DIRECT_MAX_PLAINTEXT} "
                   "bytes (AWS KMS Encrypt).")
@click.option("--frame-size", type=click.IntRange(FRAME_MIN, FRAME_MAX), metavar="N",
              help=f"Plaintext bytes per frame, {FRAME_MIN} to {FRAME_MAX} "
                   f"(default {DEFAULT_FRAME}).")
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False, allow_dash=True))
@common_options
def encrypt(key_id: str, context: dict[str, str], direct: bool, frame_size: int | None,
            src: str, dst: str) -> None:
    """Encrypt IN into OUT under KEY_ID ('-': stdin / stdout).

    Envelope encryption, any size, streamed; 'hsm decrypt' with the same --context opens
    it. With --direct, 1 to 4096 bytes encrypted inside the HSM ('hsm decrypt --direct').
    OUT is replaced only if everything succeeded.
    """
    if direct and frame_size is not None:
        raise click.UsageError("--frame-size is for envelope encryption, not --direct")
    _check_paths(src, dst)
    if dst == _STDIO and stdout_is_terminal():
        raise click.UsageError("refusing to write ciphertext to a terminal; give OUT or "
                               "redirect stdout")
    frames = frame_size or DEFAULT_FRAME
    with _reported(src, dst, direct=direct), _reading(src) as (stream, size):
        if direct:
            summary = _encrypt_direct(key_id, context, stream, size, src, dst)
        else:
            with (open_client() as client, _writing(dst, private=False) as out,
                  _progress("encrypting", size) as progress):
                started = time.perf_counter()
                done = client.encrypt_stream(key_id, stream, out, context,
                                             frame_size=frames, progress=progress)
            summary = _summary(done.key_id, done.key_version, done.bytes_in, done.bytes_out,
                               time.perf_counter() - started, done.frame_size, False)
    _report(summary, "encrypted", dst)


def _encrypt_direct(key_id: str, context: dict[str, str], stream: BinaryIO,
                    size: int | None, src: str, dst: str) -> dict[str, Any]:
    name = "stdin" if src == _STDIO else src
    too_big = size is not None and size > DIRECT_MAX_PLAINTEXT  # a file: not even read
    data = b"" if too_big else _read_at_most(stream, DIRECT_MAX_PLAINTEXT + 1)
    if too_big or len(data) > DIRECT_MAX_PLAINTEXT:
        raise CLIError(
            f"{name} is larger than {DIRECT_MAX_PLAINTEXT} bytes: --direct encrypts at most "
            f"{DIRECT_MAX_PLAINTEXT} bytes inside the HSM (KMS Encrypt); use envelope "
            "encryption (hsm encrypt without --direct: any size, streamed)")
    if not data:
        raise CLIError(f"{name} is empty: --direct encrypts 1 to {DIRECT_MAX_PLAINTEXT} bytes")
    with open_client() as client:
        started = time.perf_counter()
        blob = client.encrypt_direct(key_id, data, context)
        with _writing(dst, private=False) as out:
            out.write(blob)
        seconds = time.perf_counter() - started
    parsed = parse_blob(blob, DIRECT)
    return _summary(parsed.key_id, parsed.version, len(data), len(blob), seconds, None, True)


@click.command()
@context_option
@click.option("--direct", is_flag=True,
              help="IN is a direct ciphertext ('hsm encrypt --direct'), not an envelope "
                   "message.")
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False, allow_dash=True))
@common_options
def decrypt(context: dict[str, str], direct: bool, src: str, dst: str) -> None:
    """Decrypt IN into OUT ('-': stdin / stdout); the ciphertext names its key.

    --context must be exactly the context IN was encrypted with (none given: the empty
    context). Every frame is verified before it is written; on any failure OUT is not
    created (or keeps its old content) and the exit status is 1. OUT is created mode 0600.
    """
    _check_paths(src, dst)
    with _reported(src, dst, direct=direct), _reading(src) as (stream, size):
        head = _head(stream)
        name = "stdin" if src == _STDIO else src
        if direct and head == ENVELOPE_MAGIC:
            raise CLIError(f"{name} is an envelope message, not a direct ciphertext: "
                           "decrypt it without --direct")
        if not direct and head == DIRECT.magic:
            raise CLIError(f"{name} is a direct ciphertext ('hsm encrypt --direct'): "
                           "decrypt it with --direct")
        if direct:
            summary = _decrypt_direct(context, stream, dst)
        else:
            with (open_client() as client, _writing(dst, private=True) as out,
                  _progress("decrypting", size) as progress):
                started = time.perf_counter()
                done = client.decrypt_stream(stream, out, context, progress=progress)
            summary = _summary(done.key_id, done.key_version, done.bytes_in, done.bytes_out,
                               time.perf_counter() - started, done.frame_size, False)
    _report(summary, "decrypted", dst)


def _decrypt_direct(context: dict[str, str], stream: BinaryIO, dst: str) -> dict[str, Any]:
    blob = _read_at_most(stream, DIRECT.max_size + 1)
    parsed = parse_blob(blob, DIRECT)  # malformed or too long: refused before any HSM call
    with open_client() as client:
        started = time.perf_counter()
        plaintext = client.decrypt_direct(blob, context)
        with _writing(dst, private=True) as out:
            out.write(plaintext)
        seconds = time.perf_counter() - started
    return _summary(parsed.key_id, parsed.version, len(blob), len(plaintext), seconds, None,
                    True)
