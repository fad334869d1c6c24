"""Key replication primitives: the cluster wrapping key ceremony, replicable master keys,
export under the trusted key and import on another member, against SoftHSM harnesses."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from click.testing import CliRunner
from pkcs11 import Attribute, Mechanism, ObjectClass

from hsm.cli import cli
from hsm.cluster.ceremony import CeremonyReport, init_cluster
from hsm.config import Config, load_config
from hsm.errors import (
    ConfigError,
    HSMUnavailable,
    InvalidCiphertext,
    InvalidInput,
    OperationFailed,
    PinIncorrect,
    Reason,
    UnsafeKey,
)
from hsm.keys import Keyring
from hsm.keys.keywrap import WrapMechanism, wrap_key_object
from hsm.keys.master import check_attributes, label_for
from hsm.keys.replication import (
    CLUSTER_WRAP_LABEL,
    OfficerSession,
    establish_wrapping_key,
    material_kcv,
)
from hsm.pkcs11 import (
    AES_GCM,
    AES_KEY_WRAP,
    Attr,
    Capability,
    KeyClass,
    KeyTemplate,
    KeyType,
    Module,
    PinSource,
    SecretKey,
    SessionPool,
)
from hsm.testing import Harness, harness_down, harness_up

# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def keyrings(config: Config) -> Iterator[list[Keyring]]:
    """One open keyring per member (module, shared pool, keyring), released on exit."""
    with ExitStack() as stack:
        rings = []
        for member in config.members:
            module = Module.acquire(member.module, member.env)
            stack.callback(module.release)
            pool = SessionPool.acquire(module, member.token, member.pin, size=2)
            stack.callback(pool.release)
            rings.append(Keyring(pool).open())
        yield rings


@contextmanager
def officer(config: Config, index: int) -> Iterator[OfficerSession]:
    """A security-officer session on member ``index`` (no user login may be open on it)."""
    member = config.members[index]
    assert member.so_pin is not None
    module = Module.acquire(member.module, member.env)
    try:
        with OfficerSession(module, member.token, member.so_pin.read(),
                            name=member.name) as session:
            yield session
    finally:
        module.release()


def establish(config: Config, index: int, material: bytes) -> str:
    """Put the wrapping key made from ``material`` on member ``index`` only."""
    member = config.members[index]
    assert member.so_pin is not None
    module = Module.acquire(member.module, member.env)
    try:
        return establish_wrapping_key(module, member.token, member.so_pin.read(),
                                      bytearray(material), name=member.name)
    finally:
        module.release()


def raw_key(ring: Keyring, key_id: str, version: int = 1) -> SecretKey:
    """The key object behind a master key, through the keyring's own pool (test-only)."""
    with ring.pool.session() as lease:
        return ring._keys.find(lease, uuid.UUID(key_id).bytes, version)


def raw_object(ring: Keyring, label: str) -> Any:
    """The python-pkcs11 object labelled ``label``, to poke the HSM directly (test-only)."""
    with ring.pool.session() as lease:
        found = list(lease.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                                Attribute.LABEL: label}))
    assert len(found) == 1
    return found[0]


def trusted_key(ring: Keyring) -> SecretKey:
    """The cluster wrapping key object on the keyring's token."""
    with ring.pool.session() as lease:
        found = lease.find_keys(CLUSTER_WRAP_LABEL)
    assert len(found) == 1
    return found[0]


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Config]:
    """The config of a new two-member harness, no ceremony run yet."""
    harness = harness_up(tmp_path / "h", 2)
    yield load_config(harness.config_path)
    harness_down(tmp_path / "h")


@dataclasses.dataclass
class Cluster:
    harness: Harness
    config: Config
    report: CeremonyReport
    a: Keyring
    b: Keyring


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two members after the ceremony, with a keyring open on each."""
    directory = tmp_path_factory.mktemp("replication") / "h"
    harness = harness_up(directory, 2)
    config = load_config(harness.config_path)
    report = init_cluster(config)  # before any user login on the members
    with keyrings(config) as (a, b):
        yield Cluster(harness, config, report, a, b)
    harness_down(directory)


# -- policy -----------------------------------------------------------------------------------


def test_policy_accepts_extractable_only_with_wrap_with_trusted() -> None:
    """EXTRACTABLE passes the master-key policy with WRAP_WITH_TRUSTED and fails without."""
    attrs: dict[Attr, Any] = {
        Attr.CLASS: KeyClass.SECRET_KEY, Attr.KEY_TYPE: KeyType.AES, Attr.VALUE_LEN: 32,
        Attr.TOKEN: True, Attr.PRIVATE: True, Attr.SENSITIVE: True, Attr.EXTRACTABLE: True,
        Attr.WRAP: False, Attr.UNWRAP: False, Attr.SIGN: False, Attr.VERIFY: False,
        Attr.DERIVE: False, Attr.MODIFIABLE: False, Attr.ALLOWED_MECHANISMS: (AES_GCM,),
    }
    check_attributes({**attrs, Attr.WRAP_WITH_TRUSTED: True}, "k", allow_unsafe=False)
    for trust in ({Attr.WRAP_WITH_TRUSTED: False}, {}):
        with pytest.raises(UnsafeKey, match="EXTRACTABLE without WRAP_WITH_TRUSTED"):
            check_attributes({**attrs, **trust}, "k", allow_unsafe=False)


# -- the ceremony -----------------------------------------------------------------------------


def test_ceremony_gives_every_member_the_same_trusted_wrapping_key(cluster: Cluster) -> None:
    """After the ceremony both members hold a trusted, non-extractable, wrap-only key with
    one KCV."""
    report = cluster.report
    assert [m.name for m in report.members] == ["hsm-a", "hsm-b"]
    assert all(m.created for m in report.members)
    assert {m.kcv for m in report.members} == {report.kcv}
    assert len(report.kcv) == 6
    for ring in (cluster.a, cluster.b):
        key = trusted_key(ring)
        attrs = key.read([
            Attr.TRUSTED, Attr.EXTRACTABLE, Attr.SENSITIVE, Attr.WRAP, Attr.UNWRAP,
            Attr.ENCRYPT, Attr.DECRYPT, Attr.MODIFIABLE, Attr.CHECK_VALUE,
        ])
        assert all(attrs[a] is True for a in (Attr.TRUSTED, Attr.SENSITIVE, Attr.WRAP,
                                              Attr.UNWRAP))
        assert all(attrs[a] is False for a in (Attr.EXTRACTABLE, Attr.ENCRYPT, Attr.DECRYPT,
                                               Attr.MODIFIABLE))
        check_value = attrs[Attr.CHECK_VALUE]
        assert isinstance(check_value, bytes)
        assert check_value.hex() == report.kcv == key.kcv()


def test_ceremony_twice_is_idempotent(fresh: Config) -> None:
    """A second ceremony changes nothing and reports the key as already present."""
    first = init_cluster(fresh)
    second = init_cluster(fresh)
    assert second.kcv == first.kcv
    assert [m.created for m in second.members] == [False, False]


def test_ceremony_with_given_material_has_its_kcv(fresh: Config) -> None:
    """Material given to the ceremony gives the KCV computed from it in software."""
    material = os.urandom(32)
    assert init_cluster(fresh, material=material).kcv == material_kcv(material)
    with pytest.raises(InvalidInput):
        init_cluster(fresh, material=b"short")


def test_member_with_a_different_wrapping_key_is_reported(fresh: Config) -> None:
    """A member holding another wrapping key is named, and no other member is changed."""
    establish(fresh, 1, os.urandom(32))
    with pytest.raises(OperationFailed, match="hsm-b") as info:
        init_cluster(fresh, material=os.urandom(32))
    assert info.value.reason is Reason.WRAPPING_KEY_MISMATCH
    with officer(fresh, 0) as session:
        assert session.wrapping_key_kcv() is None


def test_establish_never_replaces_a_wrapping_key(fresh: Config) -> None:
    """establish_wrapping_key is idempotent with the same material and refuses other material."""
    material = os.urandom(32)
    kcv = establish(fresh, 0, material)
    assert establish(fresh, 0, material) == kcv
    with pytest.raises(OperationFailed, match=kcv) as info:
        establish(fresh, 0, os.urandom(32))
    assert info.value.reason is Reason.WRAPPING_KEY_MISMATCH


def test_partial_cluster_needs_the_original_material(fresh: Config) -> None:
    """One member holding the key and one not: refused without the material, completed with it."""
    material = os.urandom(32)
    establish(fresh, 0, material)
    with pytest.raises(OperationFailed, match="hsm-b") as info:
        init_cluster(fresh)
    assert info.value.reason is Reason.WRAPPING_KEY_PARTIAL
    report = init_cluster(fresh, material=material)
    assert [(m.name, m.created) for m in report.members] == [("hsm-a", False), ("hsm-b", True)]
    assert report.kcv == material_kcv(material)


def test_wrong_so_pin_on_one_member_changes_nothing(fresh: Config,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused SO PIN on one member stops the ceremony before any member is changed."""
    monkeypatch.setenv("HSM_TEST_WRONG_SO_PIN", "not-the-so-pin")
    wrong = dataclasses.replace(fresh.members[1],
                                so_pin=PinSource("env", "HSM_TEST_WRONG_SO_PIN"))
    config = dataclasses.replace(fresh, members=(fresh.members[0], wrong))
    with pytest.raises(PinIncorrect, match="hsm-b"):
        init_cluster(config)
    with officer(fresh, 0) as session:
        assert session.wrapping_key_kcv() is None


def test_failure_on_a_later_member_rolls_back_the_earlier_ones(
        fresh: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """If creating the key fails on hsm-b, the key this run made on hsm-a is destroyed again."""
    create = OfficerSession.create_wrapping_key

    def failing(self: OfficerSession, material: bytes | bytearray,
                label: str = CLUSTER_WRAP_LABEL) -> str:
        if self.name == "hsm-b":
            raise HSMUnavailable("injected: device error", reason=Reason.DEVICE_ERROR)
        return create(self, material, label)

    monkeypatch.setattr(OfficerSession, "create_wrapping_key", failing)
    with pytest.raises(HSMUnavailable, match="member hsm-b: injected"):
        init_cluster(fresh)
    monkeypatch.undo()
    for index in (0, 1):
        with officer(fresh, index) as session:
            assert session.wrapping_key_kcv() is None


def test_ceremony_needs_every_so_pin(fresh: Config) -> None:
    """A member without so_pin is a ConfigError naming it."""
    config = dataclasses.replace(
        fresh, members=(fresh.members[0], dataclasses.replace(fresh.members[1], so_pin=None)))
    with pytest.raises(ConfigError, match="hsm-b"):
        init_cluster(config)


def test_so_login_next_to_a_user_login_is_a_clear_error(fresh: Config) -> None:
    """While this process holds a user login on a member, the ceremony says so and changes
    nothing; once it is closed the ceremony runs."""
    with keyrings(dataclasses.replace(fresh, members=fresh.members[1:])):
        with pytest.raises(OperationFailed, match="hsm-b") as info:
            init_cluster(fresh)
        assert info.value.reason is Reason.USER_LOGGED_IN
    with officer(fresh, 0) as session:
        assert session.wrapping_key_kcv() is None
    assert all(m.created for m in init_cluster(fresh).members)


def test_ceremony_cli(fresh: Config) -> None:
    """`hsm cluster init --json` prints one JSON object; run again it reports nothing created."""
    runner = CliRunner()
    first = runner.invoke(cli, ["cluster", "init", "--config", str(fresh.path), "--json"])
    assert first.exit_code == 0, first.stderr
    data = json.loads(first.stdout)
    assert [m["name"] for m in data["members"]] == ["hsm-a", "hsm-b"]
    assert all(m["created"] and m["kcv"] == data["kcv"] for m in data["members"])
    second = runner.invoke(cli, ["cluster", "init", "--config", str(fresh.path)])
    assert second.exit_code == 0, second.stderr
    assert "already present" in second.stdout
    assert f"kcv {data['kcv']}" in second.stdout


def test_ceremony_cli_error_is_one_line(fresh: Config, tmp_path: Path) -> None:
    """A config without so_pin fails with exit 1 and one error line naming the member."""
    assert fresh.path is not None
    text = "\n".join(line for line in fresh.path.read_text().splitlines()
                     if not line.startswith("so_pin"))
    path = tmp_path / "no-so.toml"
    path.write_text(text + "\n")
    result = CliRunner().invoke(cli, ["cluster", "init", "--config", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("hsm: error: ")
    assert "hsm-a" in lines[0]
    assert "so_pin" in lines[0]


# -- replicable keys: export and import -------------------------------------------------------


def test_replicated_key_has_the_same_kcv_and_opens_the_same_blobs(cluster: Cluster) -> None:
    """A replicable key made on A, exported and imported on B: same KCV, and B opens what A
    sealed."""
    info = cluster.a.create_key(replicable=True)
    blob = cluster.a.export_key(info.key_id, 1)
    assert len(blob) == 40
    copy = cluster.b.import_key(info.key_id, 1, blob, expected_kcv=info.kcv)
    assert copy == info
    assert cluster.b.has_key(info.key_id, 1) == info
    sealed = cluster.a.wrap(info.key_id, b"k" * 32, {"tenant": "acme"})
    assert cluster.b.unwrap(sealed, {"tenant": "acme"}) == b"k" * 32
    sealed = cluster.b.wrap(info.key_id, b"j" * 32)
    assert cluster.a.unwrap(sealed) == b"j" * 32


def test_imported_copy_leaves_the_hsm_only_under_the_trusted_key(cluster: Cluster) -> None:
    """B's copy is sensitive and WRAP_WITH_TRUSTED: its value can't be read, an untrusted key
    can't wrap it, the trusted key can."""
    info = cluster.a.create_key(replicable=True)
    cluster.b.import_key(info.key_id, 1, cluster.a.export_key(info.key_id, 1))
    obj = raw_key(cluster.b, info.key_id)
    wanted = (Attr.SENSITIVE, Attr.EXTRACTABLE, Attr.WRAP_WITH_TRUSTED, Attr.PRIVATE,
              Attr.TOKEN)
    attrs = obj.read(wanted)
    assert all(attrs[a] is True for a in wanted)
    with pytest.raises((p11e.AttributeSensitive, p11e.FunctionFailed)):
        raw_object(cluster.b, label_for(info.key_id, 1))[Attribute.VALUE]
    with cluster.b.pool.session() as lease:
        untrusted = lease.generate_key(KeyTemplate(
            key_type=KeyType.AES, capabilities=Capability.WRAP | Capability.UNWRAP,
            token=False, private=True, sensitive=True, extractable=False), 32)
        with pytest.raises(OperationFailed) as refused:
            wrap_key_object(lease, untrusted, obj, WrapMechanism.KW, cluster.b.mechanisms)
        assert refused.value.reason is Reason.KEY_NOT_WRAPPABLE
        untrusted.destroy()
    assert len(cluster.b.export_key(info.key_id, 1)) == 40


def test_imported_copy_has_the_rights_of_the_original_and_no_more(cluster: Cluster) -> None:
    """B's copy is like A's original: ENCRYPT/DECRYPT only, not modifiable, AES-GCM alone
    (AES-ECB refused), and the replication leaves it usable."""
    info = cluster.a.create_key(replicable=True)
    cluster.b.import_key(info.key_id, 1, cluster.a.export_key(info.key_id, 1),
                         expected_kcv=info.kcv)
    wanted = (Attr.ENCRYPT, Attr.DECRYPT, Attr.WRAP, Attr.UNWRAP, Attr.DERIVE, Attr.MODIFIABLE,
              Attr.ALLOWED_MECHANISMS)
    original = raw_key(cluster.a, info.key_id).read(wanted)
    copy = raw_key(cluster.b, info.key_id).read(wanted)
    assert copy == original == {
        Attr.ENCRYPT: True, Attr.DECRYPT: True, Attr.WRAP: False, Attr.UNWRAP: False,
        Attr.DERIVE: False, Attr.MODIFIABLE: False, Attr.ALLOWED_MECHANISMS: (AES_GCM,),
    }
    with pytest.raises(p11e.MechanismInvalid):
        raw_object(cluster.b, label_for(info.key_id, 1)).encrypt(bytes(16),
                                                                 mechanism=Mechanism.AES_ECB)
    with pytest.raises(p11e.PKCS11Error):
        raw_object(cluster.b, label_for(info.key_id, 1))[Attribute.DERIVE] = True
    assert all(k.key_id != info.key_id for k, _ in cluster.b.weak_keys())


def test_trusted_key_refuses_to_unwrap_into_a_modifiable_copy(cluster: Cluster) -> None:
    """Someone with the user PIN can't unwrap an exported key into a modifiable copy (to set
    CKA_DERIVE on it later): the cluster wrapping key's unwrap template says not MODIFIABLE."""
    info = cluster.a.create_key(replicable=True)
    blob = cluster.a.export_key(info.key_id, 1)
    wrapper = trusted_key(cluster.b)
    modifiable = KeyTemplate(key_type=KeyType.AES, capabilities=Capability.ENCRYPT,
                             token=False, private=True, sensitive=True, extractable=True,
                             wrap_with_trusted=True)
    with pytest.raises(OperationFailed) as refused:
        wrapper.unwrap(blob, AES_KEY_WRAP, modifiable)
    assert refused.value.reason is Reason.TEMPLATE_INCONSISTENT


def test_trusted_key_refuses_to_unwrap_into_a_readable_key(cluster: Cluster) -> None:
    """Someone with the user PIN can't unwrap an exported key into a copy they could read."""
    info = cluster.a.create_key(replicable=True)
    blob = cluster.a.export_key(info.key_id, 1)
    wrapper = trusted_key(cluster.b)
    readable = KeyTemplate(key_type=KeyType.AES, capabilities=Capability.ENCRYPT, token=False,
                           private=True, sensitive=False, extractable=True)
    with pytest.raises(OperationFailed) as refused:
        wrapper.unwrap(blob, AES_KEY_WRAP, readable)
    assert refused.value.reason is Reason.TEMPLATE_INCONSISTENT
    assert isinstance(refused.value.__cause__, p11e.TemplateInconsistent)


def test_non_replicable_key_cannot_be_exported(cluster: Cluster) -> None:
    """A master key created without replicable=True is refused by name, not wrapped."""
    info = cluster.a.create_key()
    with pytest.raises(OperationFailed, match=info.key_id) as refused:
        cluster.a.export_key(info.key_id, 1)
    assert refused.value.reason is Reason.NOT_REPLICABLE
    assert raw_key(cluster.a, info.key_id).read([Attr.EXTRACTABLE]) == {Attr.EXTRACTABLE: False}


def test_export_and_import_without_the_ceremony_are_clear_errors(fresh: Config) -> None:
    """Without the cluster wrapping key, export and import say to run `hsm cluster init`."""
    with keyrings(fresh) as (a, b):
        info = a.create_key(replicable=True)
        with pytest.raises(OperationFailed, match="hsm cluster init") as refused:
            a.export_key(info.key_id, 1)
        assert refused.value.reason is Reason.NO_WRAPPING_KEY
        with pytest.raises(OperationFailed, match="hsm cluster init"):
            b.import_key(info.key_id, 1, bytes(40))
        assert b.has_key(info.key_id, 1) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "other key"])
def test_tampered_blob_fails_import_and_leaves_nothing(cluster: Cluster, damage: str) -> None:
    """A damaged blob, or one that isn't this key's, raises InvalidCiphertext; B holds nothing."""
    info = cluster.a.create_key(replicable=True)
    blob = bytearray(cluster.a.export_key(info.key_id, 1))
    if damage == "flip":
        blob[13] ^= 0x01
    elif damage == "truncate":
        del blob[-8:]
    elif damage == "other key":
        blob = bytearray(cluster.a.export_key(cluster.a.create_key(replicable=True).key_id, 1))
    with pytest.raises(InvalidCiphertext):
        cluster.b.import_key(info.key_id, 1, bytes(blob), expected_kcv=info.kcv)
    assert cluster.b.has_key(info.key_id, 1) is None
    assert all(k.key_id != info.key_id for k in cluster.b.list_keys())


def test_import_twice_is_idempotent(cluster: Cluster) -> None:
    """A second import of the same key version returns the copy already there."""
    info = cluster.a.create_key(replicable=True)
    blob = cluster.a.export_key(info.key_id, 1)
    assert cluster.b.import_key(info.key_id, 1, blob) == info
    assert cluster.b.import_key(info.key_id, 1, blob) == info
    assert [k for k in cluster.b.list_keys() if k.key_id == info.key_id] == [info]
    with pytest.raises(OperationFailed) as refused:
        cluster.b.import_key(info.key_id, 1, blob, expected_kcv="000000")
    assert refused.value.reason is Reason.KCV_MISMATCH


def test_create_key_with_given_id_and_version(cluster: Cluster) -> None:
    """create_key takes the cluster's key id and version, and refuses a label already there."""
    key_id = str(uuid.uuid4())
    assert cluster.b.has_key(key_id, 3) is None
    info = cluster.b.create_key(key_id=key_id, version=3, replicable=True)
    assert (info.key_id, info.version) == (key_id, 3)
    assert raw_key(cluster.b, key_id, 3).label() == label_for(key_id, 3)
    assert cluster.b.has_key(key_id, 3) == info
    with pytest.raises(OperationFailed) as refused:
        cluster.b.create_key(key_id=key_id, version=3)
    assert refused.value.reason is Reason.KEY_EXISTS
    for version in (0, -1, 2**32, True):
        with pytest.raises(InvalidInput):
            cluster.b.create_key(key_id=key_id, version=version)
