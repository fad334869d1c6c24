"""The PKCS#11 edge: loading modules, choosing tokens, PINs, error translation."""

from __future__ import annotations

import logging
from pathlib import Path

import pkcs11.exceptions as p11e
import pytest

import hsm
from hsm.errors import Kind
from hsm.pkcs11 import Module, PinSource, Recovery, Secret, TokenSelector, recovery_for, translated
from hsm.testing import Harness


def _write_config(path: Path, harness: Harness, **changes: str) -> Path:
    """A copy of the harness config with some member lines replaced."""
    text = harness.config_path.read_text()
    member = harness.members[0]
    for key, value in changes.items():
        if key == "token":
            text = text.replace(f'token = "{member.token_label}"', f'token = "{value}"')
        elif key == "pin":
            text = text.replace(f'pin = "file:{harness.pin_file}"', f'pin = "{value}"')
        elif key == "module":
            text = text.replace(f'module = "{member.module}"', f'module = "{value}"')
    path.write_text(text)
    return path


def test_modules_run_with_os_locking(hsm_client: hsm.Client) -> None:
    """After loading, the module runs with CKF_OS_LOCKING_OK, not python-pkcs11's NULL init."""
    status = hsm_client.status()[0]
    assert status.reachable
    assert status.os_locking


def test_probed_mechanisms_on_softhsm(hsm_client: hsm.Client) -> None:
    """SoftHSM 2.6: KW yes; RFC 5649 under 0x210A for multiples of 8 only; GCM with
    caller IVs; CKA_ALLOWED_MECHANISMS enforced."""
    mechanisms = hsm_client.status()[0].mechanisms
    assert mechanisms["aes_key_wrap"] is True
    assert mechanisms["aes_key_wrap_pad"] in ("0x210A", "0x210B")
    assert mechanisms["aes_gcm"] is True
    assert mechanisms["gcm_iv"] == "caller"
    assert mechanisms["allowed_mechanisms"] is True


def test_missing_module_is_a_clear_error(tmp_path: Path, hsm_harness: Harness) -> None:
    """A module path that does not exist gives ModuleLoadError naming the path."""
    config = _write_config(tmp_path / "c.toml", hsm_harness, module=str(tmp_path / "nope.so"))
    with pytest.raises(hsm.ModuleLoadError, match=r"nope\.so"):
        hsm.open(config)


def test_a_file_that_is_no_module(tmp_path: Path, hsm_harness: Harness) -> None:
    """A file that is not a PKCS#11 module gives ModuleLoadError, not a crash."""
    fake = tmp_path / "fake.so"
    fake.write_bytes(b"not an ELF file")
    config = _write_config(tmp_path / "c.toml", hsm_harness, module=str(fake))
    with pytest.raises(hsm.ModuleLoadError):
        hsm.open(config)


def test_missing_token_lists_those_present(tmp_path: Path, hsm_harness: Harness) -> None:
    """A token label that isn't there gives TokenNotFound listing the tokens that are."""
    config = _write_config(tmp_path / "c.toml", hsm_harness, token="no-such-token")
    with pytest.raises(hsm.TokenNotFound) as info:
        hsm.open(config)
    assert "no-such-token" in str(info.value)
    assert hsm_harness.members[0].token_label in str(info.value)
    assert hsm_harness.members[0].serial in str(info.value)


def test_token_by_serial(tmp_path: Path, hsm_harness: Harness) -> None:
    """A token can be chosen by serial instead of label."""
    member = hsm_harness.members[0]
    text = hsm_harness.config_path.read_text().replace(
        f'token = "{member.token_label}"', f'serial = "{member.serial}"')
    config = tmp_path / "c.toml"
    config.write_text(text)
    with hsm.open(config) as client:
        assert client.status()[0].token_serial == member.serial


def test_wrong_pin_fails_once_and_never_shows(
    tmp_path: Path, hsm_harness: Harness, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong PIN raises PinIncorrect (permanent) at once; the PIN is read once, not
    retried, and appears in no message or log."""
    wrong = "wrong-pin-4c1d"
    monkeypatch.setenv("HSM_TEST_WRONG_PIN", wrong)
    config = _write_config(tmp_path / "c.toml", hsm_harness, pin="env:HSM_TEST_WRONG_PIN")
    reads = []
    original = PinSource.read

    def counting(self: PinSource, **kw: object) -> Secret:
        reads.append(self)
        return original(self)

    monkeypatch.setattr(PinSource, "read", counting)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(hsm.PinIncorrect) as info:
        hsm.open(config)
    assert info.value.kind is Kind.PERMANENT
    assert recovery_for(info.value) is Recovery.NONE
    assert len(reads) == 1
    assert wrong not in str(info.value)
    assert all(wrong not in r.getMessage() for r in caplog.records)


def test_a_second_client_must_know_the_pin(
    tmp_path: Path, hsm_harness: Harness, hsm_client: hsm.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one client is logged in, another in the same process with a wrong PIN is
    refused (the token's login is shared, so the PIN is compared, not trusted)."""
    monkeypatch.setenv("HSM_TEST_WRONG_PIN", "not-the-pin")
    config = _write_config(tmp_path / "c.toml", hsm_harness, pin="env:HSM_TEST_WRONG_PIN")
    with pytest.raises(hsm.PinIncorrect):
        hsm.open(config)
    with hsm.open(hsm_harness.config_path) as second:
        assert second.list_keys() == hsm_client.list_keys()


def test_pin_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """env:, file: and prompt sources read the PIN; a bare PIN in the config is refused
    without echoing it; Secret hides its value."""
    monkeypatch.setenv("HSM_TEST_PIN", "1234")
    assert PinSource.parse("env:HSM_TEST_PIN").read().reveal() == "1234"
    pin_file = tmp_path / "pin"
    pin_file.write_text("5678\n")
    pin_file.chmod(0o600)
    assert PinSource.parse(f"file:{pin_file}").read().reveal() == "5678"
    assert PinSource.parse("prompt").read(ask=lambda _: "9999").reveal() == "9999"
    with pytest.raises(hsm.PinSourceError) as info:
        PinSource.parse("123456")
    assert "123456" not in str(info.value)
    with pytest.raises(hsm.PinSourceError, match="HSM_TEST_UNSET"):
        PinSource.parse("env:HSM_TEST_UNSET").read()
    with pytest.raises(hsm.PinSourceError, match="does not exist"):
        PinSource.parse(f"file:{tmp_path / 'none'}").read()
    secret = Secret("s3cret")
    assert "s3cret" not in repr(secret)
    assert "s3cret" not in str(secret)


def test_same_module_other_environment_is_refused(hsm_harness: Harness) -> None:
    """One shared object can't be loaded twice with different environments."""
    member = hsm_harness.members[0]
    module = Module.acquire(member.module, member.env)
    try:
        with pytest.raises(hsm.ModuleLoadError, match="another environment"):
            Module.acquire(member.module, {"SOFTHSM2_CONF": "/elsewhere"})
    finally:
        module.release()


def test_token_selector_needs_exactly_one() -> None:
    """A selector names a label or a serial, not both, not neither."""
    with pytest.raises(ValueError, match="exactly one"):
        TokenSelector()
    with pytest.raises(ValueError, match="exactly one"):
        TokenSelector(label="a", serial="b")


@pytest.mark.parametrize(
    ("raised", "expected", "kind", "recovery"),
    [
        (p11e.DeviceError(), hsm.HSMUnavailable, Kind.TRANSIENT, Recovery.SESSION),
        (p11e.DeviceRemoved(), hsm.HSMUnavailable, Kind.TRANSIENT, Recovery.MODULE),
        (p11e.SessionHandleInvalid(), hsm.HSMUnavailable, Kind.TRANSIENT, Recovery.SESSION),
        (p11e.FunctionFailed(), hsm.HSMUnavailable, Kind.TRANSIENT, Recovery.NONE),
        (p11e.ObjectHandleInvalid(), hsm.HSMUnavailable, Kind.TRANSIENT, Recovery.KEYS),
        (p11e.PinIncorrect(), hsm.PinIncorrect, Kind.PERMANENT, Recovery.NONE),
        (p11e.MechanismInvalid(), hsm.MechanismUnsupported, Kind.PERMANENT, Recovery.NONE),
        (p11e.EncryptedDataInvalid(), hsm.InvalidCiphertext, Kind.INTEGRITY, Recovery.NONE),
        (p11e.PKCS11Error("...not initialized..."), hsm.HSMUnavailable, Kind.TRANSIENT,
         Recovery.MODULE),
        (p11e.AttributeReadOnly(), hsm.OperationFailed, Kind.PERMANENT, Recovery.NONE),
    ],
)
def test_translation_table(
    raised: Exception, expected: type[hsm.HSMError], kind: Kind, recovery: Recovery
) -> None:
    """Each python-pkcs11 error becomes the package's error with its kind and recovery."""
    with pytest.raises(expected) as info, translated("op"):
        raise raised
    assert info.value.kind is kind
    assert recovery_for(info.value) is recovery


def test_general_error_depends_on_the_operation() -> None:
    """SoftHSM's GeneralError is an integrity failure on decrypt/unwrap, a device
    problem elsewhere."""
    with pytest.raises(hsm.InvalidCiphertext), translated("unwrap", integrity=True):
        raise p11e.GeneralError()
    with pytest.raises(hsm.HSMUnavailable), translated("login"):
        raise p11e.GeneralError()
