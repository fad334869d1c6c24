"""Envelope messages through the client, against a real SoftHSM token: round trips of every
size around the frame boundaries, and every way of damaging a message, each refused with
its own typed error and without releasing plaintext that does not verify."""

from __future__ import annotations

import io
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import hsm
from hsm import envelope
from hsm.envelope import format as fmt
from hsm.errors import ContextMismatch, HSMError, InvalidCiphertext, KeyNotFound
from hsm.keys import DataKey, KeyInfo

F = fmt.FRAME_MIN
CTX = {"tenant": "acme"}
TAG = 16
#: the reasons the format itself gives; any other InvalidCiphertext came from the HSM
FORMAT_REASONS = {"malformed", "truncated", "commitment", "header_tag", "frame_tag", "trailing"}


# -- helpers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where each field of a message sits (offsets into the message)."""

    blob_at: int
    blob_len: int
    ctx_at: int
    ctx_len: int
    commitment_at: int
    tag_at: int
    header_size: int
    frames: tuple[tuple[int, int, int], ...]  # (start, end, type) of each frame

    def frame_bytes(self, message: bytes, index: int) -> bytes:
        start, end, _ = self.frames[index]
        return message[start:end]


def layout(message: bytes) -> Layout:
    """Parse a well-formed message into its field offsets (independently of decrypt)."""
    header = fmt.read_header(io.BytesIO(message))
    blob_at = 44
    ctx_at = blob_at + len(header.blob) + 2
    commitment_at = ctx_at + len(header.context_bytes)
    frames = []
    pos = header.size
    while pos < len(message):
        kind = message[pos]
        if kind == 0:
            end = pos + 1 + header.frame_size + TAG
        else:
            (length,) = struct.unpack_from(">I", message, pos + 1)
            end = pos + 5 + length + TAG
        frames.append((pos, end, kind))
        pos = end
    assert pos == len(message)
    return Layout(blob_at, len(header.blob), ctx_at, len(header.context_bytes), commitment_at,
                  commitment_at + 32, header.size, tuple(frames))


def outcome(call: Callable[[], object]) -> str:
    """What a decrypt call did: the error class, and for InvalidCiphertext the format's
    reason (or "hsm" when the HSM refused the sealed key). Never "returned"."""
    try:
        call()
    except ContextMismatch:
        return "ContextMismatch"
    except KeyNotFound:
        return "KeyNotFound"
    except InvalidCiphertext as err:
        if type(err) is not InvalidCiphertext:
            return f"unexpected {type(err).__name__}({err.reason})"
        return err.reason if err.reason in FORMAT_REASONS else "hsm"
    except HSMError as err:  # pragma: no cover - a failure, reported with its class
        return f"unexpected {type(err).__name__}({err.reason})"
    return "returned"


def flip(message: bytes, offset: int, mask: int) -> bytes:
    return message[:offset] + bytes([message[offset] ^ mask]) + message[offset + 1:]


def expected_outcomes(lay: Layout, message: bytes, offset: int, mask: int,
                      context_given: bool) -> set[str]:
    """The outcomes a flip of ``mask`` at ``offset`` may have (see the tamper test)."""
    b = lay.blob_at
    if offset < 6:  # magic, version, suite
        return {"malformed"}
    if offset < 10:  # frame size: out of bounds, or in bounds and caught by the header tag
        return {"malformed", "header_tag"}
    if offset < 42:  # message id: the HKDF salt, so the commitment no longer matches
        return {"commitment"}
    if offset < b:  # blob length: the parse shifts, so a later length or bound fails
        return {"malformed", "truncated", "hsm", "ContextMismatch"}
    if offset < b + 6:  # blob magic, format, algorithm: the keyring's parser refuses it
        return {"malformed"}
    if offset < b + 22:  # blob key id: no such master key
        return {"KeyNotFound"}
    if offset < b + 26:  # blob key version (1): version 0 is malformed, others don't exist
        return {"malformed"} if (offset, mask) == (b + 25, 1) else {"KeyNotFound"}
    if offset < b + lay.blob_len:  # blob IV, sealed key, tag: the HSM refuses it
        return {"hsm"}
    if offset < lay.ctx_at:  # context length
        return {"malformed", "truncated"}
    if offset < lay.commitment_at:  # the context: lengths, or the text of keys and values
        if _is_context_text(message, lay, offset) and mask != 0x80:
            return {"ContextMismatch"} if context_given else {"hsm"}
        return {"malformed"}  # a length, or text no longer UTF-8
    if offset < lay.tag_at:
        return {"commitment"}
    if offset < lay.header_size:
        return {"header_tag"}
    for start, end, kind in lay.frames:
        if start <= offset < end:
            if offset == start:  # the type byte: another type, or the other's length
                return {"malformed", "truncated", "frame_tag"}
            if kind == 1 and offset < start + 5:  # the final frame's length
                return {"malformed", "truncated", "frame_tag"}
            return {"frame_tag"}
    raise AssertionError(offset)


def _is_context_text(message: bytes, lay: Layout, offset: int) -> bool:
    """Whether ``offset`` is inside a key or value of the context (not a count or length)."""
    pos = lay.ctx_at + 2
    end = lay.commitment_at
    while pos < end:
        (n,) = struct.unpack_from(">H", message, pos)
        if pos + 2 <= offset < pos + 2 + n:
            return True
        pos += 2 + n
    return False


@pytest.fixture(scope="module")
def other_key(client: hsm.Client) -> KeyInfo:
    """A second master key on the same token."""
    return client.create_key()


@pytest.fixture(scope="module")
def small(client: hsm.Client, master_key: KeyInfo) -> bytes:
    """A 100-byte message in one final frame (frame size 1024)."""
    return client.encrypt(master_key.key_id, bytes(range(100)), CTX, frame_size=F)


@pytest.fixture(scope="module")
def two_frames(client: hsm.Client, master_key: KeyInfo) -> bytes:
    """A 1500-byte message: a regular frame and a final frame of 476 bytes."""
    return client.encrypt(master_key.key_id, _data(1500), CTX, frame_size=F)


def _data(size: int) -> bytes:
    return bytes((i * 31 + 7) % 256 for i in range(size))


def _refused(client: hsm.Client, message: bytes, context: dict[str, str] | None = CTX,
             ) -> InvalidCiphertext:
    with pytest.raises(InvalidCiphertext) as info:
        client.decrypt(message, context)
    return info.value


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "frames"), [
    (0, 1), (1, 1), (F - 1, 1), (F, 1), (F + 1, 2), (2 * F, 2), (3 * F + 7, 4),
])
def test_round_trip_around_frame_boundaries(client: hsm.Client, master_key: KeyInfo,
                                            size: int, frames: int) -> None:
    """Every size around the frame boundaries decrypts to itself, in the expected frames
    (exactly one final frame, never an empty one after full frames)."""
    plaintext = _data(size)
    message = client.encrypt(master_key.key_id, plaintext, CTX, frame_size=F)
    lay = layout(message)
    assert len(lay.frames) == frames
    assert [kind for _, _, kind in lay.frames] == [0] * (frames - 1) + [1]
    assert len(message) == lay.header_size + (frames - 1) * (1 + F + TAG) + 5 + (
        size - (frames - 1) * F) + TAG
    assert client.decrypt(message, CTX) == plaintext
    assert client.decrypt(message) == plaintext


@pytest.mark.parametrize("size", [1, fmt.DEFAULT_FRAME, fmt.DEFAULT_FRAME + 1])
def test_round_trip_with_the_default_frame_size(client: hsm.Client, master_key: KeyInfo,
                                                size: int) -> None:
    """The default frame size (64 KiB) round-trips, in one frame up to 64 KiB."""
    plaintext = _data(size)
    message = client.encrypt(master_key.key_id, plaintext, CTX)
    lay = layout(message)
    assert fmt.read_header(io.BytesIO(message)).frame_size == fmt.DEFAULT_FRAME
    assert len(lay.frames) == (1 if size <= fmt.DEFAULT_FRAME else 2)
    assert client.decrypt(message, CTX) == plaintext


@pytest.mark.parametrize("size", [0, F, 3 * F + 7])
def test_stream_round_trip(client: hsm.Client, master_key: KeyInfo, size: int) -> None:
    """encrypt_stream and decrypt_stream agree with each other and with encrypt/decrypt,
    and their summaries count what passed."""
    plaintext = _data(size)
    sealed = io.BytesIO()
    summary = client.encrypt_stream(master_key.key_id, io.BytesIO(plaintext), sealed, CTX,
                                    frame_size=F)
    message = sealed.getvalue()
    assert (summary.bytes_in, summary.bytes_out) == (size, len(message))
    assert (summary.key_id, summary.key_version) == (master_key.key_id, master_key.version)
    assert client.decrypt(message, CTX) == plaintext
    out = io.BytesIO()
    back = client.decrypt_stream(io.BytesIO(message), out, CTX)
    assert out.getvalue() == plaintext
    assert (back.bytes_in, back.bytes_out, back.frame_size) == (len(message), size, F)


def test_empty_context_and_no_context_are_the_same(client: hsm.Client,
                                                   master_key: KeyInfo) -> None:
    """A message made with no context decrypts with {} or None, and vice versa."""
    contexts: list[dict[str, str] | None] = [{}, None]
    for made_with in contexts:
        message = client.encrypt(master_key.key_id, b"data", made_with, frame_size=F)
        assert client.decrypt(message, {}) == b"data"
        assert client.decrypt(message, None) == b"data"


# -- single-byte changes ---------------------------------------------------------------------


def test_every_bit_flip_in_a_small_message_is_refused_with_its_error(
        client: hsm.Client, small: bytes) -> None:
    """Every bit flipped anywhere in a 100-byte message is refused, never decrypted.

    The error is precise: format fields (magic, version, suite, frame size, lengths) give
    InvalidCiphertext "malformed" or "truncated" (or "header_tag" for a frame size still in
    bounds); the message id and the commitment give "commitment"; the header tag gives
    "header_tag"; the sealed key's own magic/format/algorithm give "malformed", its key id
    or version KeyNotFound (no such master key; version 0 is "malformed"), its IV, sealed
    key or tag an InvalidCiphertext from the HSM; the context's text gives ContextMismatch
    when the caller passes the original context and the HSM's InvalidCiphertext when the
    caller passes none (the sealed key is bound to the original context), its counts and
    lengths (or text no longer UTF-8) "malformed"; the frame's type or length
    "malformed"/"truncated"/"frame_tag", its ciphertext and tag "frame_tag".
    """
    lay = layout(small)
    wrong: list[str] = []
    for offset in range(len(small)):
        for bit in range(8):
            mask = 1 << bit
            tampered = flip(small, offset, mask)
            for context in (CTX, None):
                got = outcome(lambda: client.decrypt(tampered, context))  # noqa: B023
                allowed = expected_outcomes(lay, small, offset, mask, context is not None)
                if got not in allowed:
                    wrong.append(f"offset {offset} mask {mask:#04x} ctx={context}: {got}, "
                                 f"expected {sorted(allowed)}")
    assert not wrong, "\n".join(wrong[:20])


def test_every_byte_change_in_a_two_frame_message_is_refused(
        client: hsm.Client, two_frames: bytes) -> None:
    """One bit changed in any byte of a two-frame message (the bit rotating with the
    offset) is refused with the same errors as in a one-frame message."""
    lay = layout(two_frames)
    assert len(lay.frames) == 2
    wrong: list[str] = []
    for offset in range(len(two_frames)):
        mask = 1 << (offset % 8)
        got = outcome(lambda: client.decrypt(flip(two_frames, offset, mask), CTX))  # noqa: B023
        allowed = expected_outcomes(lay, two_frames, offset, mask, True)
        if got not in allowed:
            wrong.append(f"offset {offset} mask {mask:#04x}: {got}, expected {sorted(allowed)}")
    assert not wrong, "\n".join(wrong[:20])


def test_a_stream_releases_no_plaintext_of_a_tampered_frame(
        client: hsm.Client, master_key: KeyInfo) -> None:
    """decrypt_stream writes the frames before a tampered one (each authentic) and nothing
    of the tampered frame or after it."""
    plaintext = _data(3 * F)
    message = client.encrypt(master_key.key_id, plaintext, CTX, frame_size=F)
    lay = layout(message)
    start, _, _ = lay.frames[1]
    out = io.BytesIO()
    with pytest.raises(InvalidCiphertext) as info:
        client.decrypt_stream(io.BytesIO(flip(message, start + 100, 1)), out, CTX)
    assert info.value.reason == "frame_tag"
    assert out.getvalue() == plaintext[:F]


# -- truncation and trailing bytes -------------------------------------------------------------


def test_truncation_at_every_offset_is_refused(client: hsm.Client, small: bytes) -> None:
    """Every prefix of a small message is refused as truncated."""
    reasons = set()
    for cut in range(len(small)):
        reasons.add(_refused(client, small[:cut]).reason)
    assert reasons == {"truncated"}


def test_truncation_at_every_frame_boundary_is_refused(client: hsm.Client,
                                                       master_key: KeyInfo) -> None:
    """A multi-frame message cut after its header or after any regular frame (its final
    frame dropped) is refused as truncated, in memory and as a stream."""
    message = client.encrypt(master_key.key_id, _data(3 * F + 7), CTX, frame_size=F)
    lay = layout(message)
    cuts = [lay.header_size] + [end for _, end, kind in lay.frames if kind == 0]
    assert len(cuts) == 4
    for cut in cuts:
        assert _refused(client, message[:cut]).reason == "truncated"
        with pytest.raises(InvalidCiphertext) as info:
            client.decrypt_stream(io.BytesIO(message[:cut]), io.BytesIO(), CTX)
        assert info.value.reason == "truncated"
        # cuts inside the next frame: its type, its length, its body
        for inside in (cut + 1, cut + 3, cut + 5, min(cut + 500, len(message) - 1)):
            assert inside < len(message)
            assert _refused(client, message[:inside]).reason == "truncated"


@pytest.mark.parametrize("extra", [b"\x00", b"\x01", bytes(16), b"HSME"])
def test_trailing_bytes_are_refused(client: hsm.Client, small: bytes, extra: bytes) -> None:
    """Bytes after the final frame are refused."""
    assert _refused(client, small + extra).reason == "trailing"


def test_two_messages_concatenated_are_refused(client: hsm.Client, small: bytes) -> None:
    """A message followed by another message is not two messages: it is refused."""
    assert _refused(client, small + small).reason == "trailing"


# -- frames moved between places ---------------------------------------------------------------


@pytest.fixture(scope="module")
def four_frames(client: hsm.Client, master_key: KeyInfo) -> tuple[bytes, Layout]:
    """A message of three regular frames and a final frame of 7 bytes."""
    message = client.encrypt(master_key.key_id, _data(3 * F + 7), CTX, frame_size=F)
    return message, layout(message)


def _assemble(message: bytes, lay: Layout, frames: list[bytes]) -> bytes:
    return message[: lay.header_size] + b"".join(frames)


def test_reordered_frames_are_refused(client: hsm.Client,
                                      four_frames: tuple[bytes, Layout]) -> None:
    """Two regular frames swapped are refused (the sequence number is in nonce and AAD)."""
    message, lay = four_frames
    f = [lay.frame_bytes(message, i) for i in range(4)]
    for order in ([1, 0, 2, 3], [0, 2, 1, 3], [2, 1, 0, 3]):
        assert _refused(client, _assemble(message, lay, [f[i] for i in order])).reason \
            == "frame_tag"


def test_duplicated_frame_is_refused(client: hsm.Client,
                                     four_frames: tuple[bytes, Layout]) -> None:
    """A regular frame repeated, or one dropped, is refused."""
    message, lay = four_frames
    f = [lay.frame_bytes(message, i) for i in range(4)]
    for frames in ([f[0], f[0], f[1], f[2], f[3]], [f[0], f[1], f[1], f[2], f[3]],
                   [f[0], f[2], f[3]], [f[1], f[2], f[3]]):
        assert _refused(client, _assemble(message, lay, frames)).reason == "frame_tag"


def test_final_frame_repeated_is_refused(client: hsm.Client,
                                         four_frames: tuple[bytes, Layout]) -> None:
    """The final frame twice is refused as trailing bytes."""
    message, lay = four_frames
    assert _refused(client, message + lay.frame_bytes(message, 3)).reason == "trailing"


def test_frame_spliced_from_another_message_is_refused(
        client: hsm.Client, master_key: KeyInfo,
        four_frames: tuple[bytes, Layout]) -> None:
    """A frame taken from another message (same master key, same frame size, same
    position) is refused: every message has its own data key and message id."""
    message, lay = four_frames
    other = client.encrypt(master_key.key_id, _data(3 * F + 7), CTX, frame_size=F)
    other_lay = layout(other)
    for i in range(4):
        frames = [lay.frame_bytes(message, j) for j in range(4)]
        frames[i] = other_lay.frame_bytes(other, i)
        assert _refused(client, _assemble(message, lay, frames)).reason == "frame_tag"
    # the other message's header with this one's frames
    assert _refused(client, other[: other_lay.header_size] + message[lay.header_size:]
                    ).reason == "frame_tag"


def test_frames_spliced_between_messages_under_one_data_key_are_refused(
        client: hsm.Client, master_key: KeyInfo) -> None:
    """Even two messages under the same data key cannot exchange frames (the message id
    salts the frame key and is in every frame's AAD)."""
    data_key = client.generate_data_key(master_key.key_id, CTX)
    a = envelope.encrypt(_data(2 * F + 7), data_key, CTX, frame_size=F)
    b = envelope.encrypt(_data(2 * F + 7), data_key, CTX, frame_size=F)
    la, lb = layout(a), layout(b)
    assert a[: la.blob_at + la.blob_len] != b[: lb.blob_at + lb.blob_len]  # other message id
    for i in range(3):
        frames = [la.frame_bytes(a, j) for j in range(3)]
        frames[i] = lb.frame_bytes(b, i)
        assert _refused(client, _assemble(a, la, frames)).reason == "frame_tag"


def _forge(data_key: DataKey, message: bytes, frames: list[tuple[int, int, bytes]]) -> bytes:
    """``message``'s header followed by frames made here with the message's real keys:
    each ``(seq, type, plaintext)`` sealed exactly as encrypt would seal it."""
    lay = layout(message)
    header = fmt.read_header(io.BytesIO(message))
    keys = fmt.message_keys(data_key.plaintext, header.message_id)
    out = [message[: lay.header_size]]
    for seq, kind, plaintext in frames:
        nonce = bytes(4) + seq.to_bytes(8, "big")
        aad = header.message_id + struct.pack(">QBI", seq, kind, len(plaintext))
        sealed = keys.aead.encrypt(nonce, plaintext, aad)
        out.append(b"\x00" + sealed if kind == 0
                   else b"\x01" + struct.pack(">I", len(plaintext)) + sealed)
    return b"".join(out)


def test_final_frame_swapped_for_a_regular_one_is_refused(
        client: hsm.Client, master_key: KeyInfo) -> None:
    """A message whose last frame is a regular frame (the final one swapped for it) is
    refused as truncated, even when that frame itself is authentic; a regular frame
    relabelled final, or the final relabelled regular, does not verify."""
    data_key = client.generate_data_key(master_key.key_id, CTX)
    plaintext = _data(2 * F)
    message = envelope.encrypt(plaintext, data_key, CTX, frame_size=F)
    assert _forge(data_key, message, [(1, 0, plaintext[:F]), (2, 1, plaintext[F:])]) == message
    swapped = _forge(data_key, message, [(1, 0, plaintext[:F]), (2, 0, plaintext[F:])])
    assert _refused(client, swapped).reason == "truncated"
    lay = layout(message)
    regular = lay.frame_bytes(message, 0)
    relabelled_final = b"\x01" + struct.pack(">I", F) + regular[1:]
    assert _refused(client, _assemble(message, lay, [relabelled_final])).reason == "frame_tag"
    final = lay.frame_bytes(message, 1)
    relabelled_regular = b"\x00" + final[5:]
    assert _refused(client, _assemble(message, lay, [lay.frame_bytes(message, 0),
                                                     relabelled_regular, final])
                    ).reason == "frame_tag"


def test_final_frame_early_is_refused(client: hsm.Client, master_key: KeyInfo) -> None:
    """An authentic final frame followed by more frames is refused (trailing bytes)."""
    data_key = client.generate_data_key(master_key.key_id, CTX)
    message = envelope.encrypt(_data(10), data_key, CTX, frame_size=F)
    forged = _forge(data_key, message, [(1, 1, b"early end"), (2, 0, bytes(F)),
                                        (3, 1, b"")])
    assert _refused(client, forged).reason == "trailing"


# -- context and keys: each failure its own error ------------------------------------------------


def test_wrong_context_names_the_differing_keys(client: hsm.Client, master_key: KeyInfo,
                                                ) -> None:
    """A context that differs from the message's raises ContextMismatch naming the keys
    that differ, are missing or are extra (never their values)."""
    message = client.encrypt(master_key.key_id, b"data", {"tenant": "acme", "app": "x"},
                             frame_size=F)
    with pytest.raises(ContextMismatch) as info:
        client.decrypt(message, {"tenant": "other", "app": "x", "extra": "1"})
    text = str(info.value)
    assert "'tenant'" in text
    assert "'extra'" in text
    assert "'app'" not in text
    assert "acme" not in text
    assert "other" not in text
    assert info.value.reason == "context_mismatch"
    with pytest.raises(ContextMismatch, match="'app'"):
        client.decrypt(message, {"tenant": "acme"})
    with pytest.raises(ContextMismatch, match="'tenant'"):
        client.decrypt(message, {})


def test_no_context_argument_reads_the_context_from_the_header(
        client: hsm.Client, master_key: KeyInfo) -> None:
    """decrypt without a context uses the one in the header (it is not secret)."""
    message = client.encrypt(master_key.key_id, b"data", {"tenant": "acme", "app": "x"},
                             frame_size=F)
    assert client.decrypt(message) == b"data"
    assert client.decrypt(message, None) == b"data"


def _rewrite_key(message: bytes, key_uuid: bytes, version: int | None = None) -> bytes:
    lay = layout(message)
    at = lay.blob_at + 6
    out = message[:at] + key_uuid + message[at + 16:]
    if version is not None:
        out = out[: at + 16] + struct.pack(">I", version) + out[at + 20:]
    return out


def test_missing_master_key_raises_key_not_found(client: hsm.Client, small: bytes) -> None:
    """A message whose sealed key names a master key (or version) the HSM does not hold
    raises KeyNotFound."""
    with pytest.raises(KeyNotFound):
        client.decrypt(_rewrite_key(small, uuid.uuid4().bytes), CTX)
    key_uuid = small[layout(small).blob_at + 6: layout(small).blob_at + 22]
    with pytest.raises(KeyNotFound):
        client.decrypt(_rewrite_key(small, key_uuid, version=2), CTX)


def test_wrong_master_key_raises_invalid_ciphertext(client: hsm.Client, small: bytes,
                                                    other_key: KeyInfo) -> None:
    """A message rewritten to name another existing master key does not verify: the HSM
    refuses it with InvalidCiphertext (not KeyNotFound, not ContextMismatch)."""
    rewritten = _rewrite_key(small, uuid.UUID(other_key.key_id).bytes)
    for context in (CTX, None):
        err = _refused(client, rewritten, context)
        assert type(err) is InvalidCiphertext
        assert err.reason not in FORMAT_REASONS


def test_sealed_key_from_another_context_raises_invalid_ciphertext(
        client: hsm.Client, master_key: KeyInfo) -> None:
    """A header whose context was rewritten (and the caller passes the rewritten one)
    fails at the HSM: the sealed key is bound to the original context."""
    message = client.encrypt(master_key.key_id, b"data", {"tenant": "acme"}, frame_size=F)
    lay = layout(message)
    ctx = message[lay.ctx_at: lay.commitment_at]
    assert ctx.endswith(b"acme")
    rewritten = message[: lay.ctx_at] + ctx[:-1] + b"f" + message[lay.commitment_at:]
    err = _refused(client, rewritten, {"tenant": "acmf"})
    assert type(err) is InvalidCiphertext
    with pytest.raises(ContextMismatch):
        client.decrypt(rewritten, {"tenant": "acme"})


# -- key commitment ---------------------------------------------------------------------------


class _Tracking(io.BytesIO):
    """Counts the bytes handed out."""

    handed = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.handed += len(data)
        return data


def test_header_naming_another_data_key_is_refused_by_the_commitment(
        client: hsm.Client, master_key: KeyInfo) -> None:
    """A message made under data key A whose header carries data key B (sealed under the
    same master key and context, so the HSM opens it) is refused by the key commitment,
    before any frame is read or decrypted."""
    a = client.generate_data_key(master_key.key_id, CTX)
    b = client.generate_data_key(master_key.key_id, CTX)
    message = envelope.encrypt(_data(2 * F), a, CTX, frame_size=F)
    lay = layout(message)
    assert len(b.wrapped) == lay.blob_len
    swapped = message[: lay.blob_at] + b.wrapped + message[lay.blob_at + lay.blob_len:]
    src, out = _Tracking(swapped), io.BytesIO()
    with pytest.raises(InvalidCiphertext) as info:
        client.decrypt_stream(src, out, CTX)
    assert info.value.reason == "commitment"
    assert src.handed == lay.header_size
    assert out.getvalue() == b""
    # the header tag made with B's keys does not help: the commitment is checked first
    keys_b = fmt.message_keys(b.plaintext, fmt.read_header(io.BytesIO(swapped)).message_id)
    raw = swapped[: lay.tag_at]
    retagged = raw + keys_b.aead.encrypt(bytes(12), b"", raw) + swapped[lay.header_size:]
    assert _refused(client, retagged).reason == "commitment"


def test_a_sealed_key_that_is_no_data_key_is_refused(client: hsm.Client,
                                                      master_key: KeyInfo) -> None:
    """A well-formed message whose sealed key is a caller's 16-byte key (sealed by
    client.wrap under the same master key and context) is refused as malformed; and
    encrypting with a data key that is not 32 bytes is refused."""
    import io

    from hsm.context import encode_context
    from hsm.envelope import encrypt
    from hsm.envelope.format import encrypt_frames, write_header
    from hsm.keys import DataKey

    ctx = {"a": "b"}
    short = DataKey(master_key.key_id, 1, bytearray(b"k" * 16),
                    client.wrap(master_key.key_id, b"k" * 16, ctx))
    with pytest.raises(hsm.InvalidInput):
        encrypt(b"x", short, ctx)
    header, message_id, keys = write_header(1024, short.wrapped, encode_context(ctx),
                                            short.plaintext)
    forged = header + b"".join(encrypt_frames(io.BytesIO(b"secret"), keys, message_id, 1024))
    with pytest.raises(hsm.InvalidCiphertext) as info:
        client.decrypt(forged, ctx)
    assert info.value.reason == "malformed"
