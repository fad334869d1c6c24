"""hsm.toml parsing: every problem is a ConfigError that names where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

import hsm
from hsm.config import find_config_path, load_config

GOOD = """
[cluster]
mode = "failover"
quorum = 1
deadline_ms = 1500

[[member]]
name = "hsm-a"
module = "lib/libsofthsm2.so"
token = "hsm-a"
pin = "file:pin"
env = { SOFTHSM2_CONF = "/x/softhsm2.conf" }

[store]
url = "sqlite:///hsm.db"
"""


def test_good_config(tmp_path: Path) -> None:
    """A valid file parses; relative module and PIN paths are anchored at the file."""
    path = tmp_path / "hsm.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.cluster.deadline_ms == 1500
    member = config.members[0]
    assert member.module == str(tmp_path / "lib/libsofthsm2.so")
    assert member.pin.where == str(tmp_path / "pin")
    assert member.token.label == "hsm-a"
    assert dict(member.env) == {"SOFTHSM2_CONF": "/x/softhsm2.conf"}
    assert config.store.url == "sqlite:///hsm.db"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('pin = "file:pin"', 'pin = "123456"'), "never goes in the config"),
        (('mode = "failover"', 'mode = "random"'), "mode must be"),
        (("quorum = 1", "quorum = 3"), "quorum"),
        (("deadline_ms = 1500", 'deadline_ms = "fast"'), "deadline_ms"),
        (('token = "hsm-a"', 'token = "hsm-a"\nserial = "1"'), "exactly one"),
        (('token = "hsm-a"', ""), "exactly one"),
        (('name = "hsm-a"', 'name = "hsm-a"\ncolour = "red"'), "unknown key"),
        (("[store]", "[stor]"), "unknown section"),
        (('module = "lib/libsofthsm2.so"', ""), "'module' is required"),
        (('env = { SOFTHSM2_CONF = "/x/softhsm2.conf" }', "env = { X = 1 }"),
         "'env' must be a table of strings"),
        (("[[member]]", "[[member]]\npool_size = 0"), "pool_size"),
        (("[cluster]", "[cluster"), "not valid TOML"),
    ],
)
def test_bad_configs(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    """Each mistake gives a ConfigError (a ValueError) that says what and where."""
    path = tmp_path / "hsm.toml"
    path.write_text(GOOD.replace(*change))
    with pytest.raises(hsm.ConfigError, match=message) as info:
        load_config(path)
    assert isinstance(info.value, ValueError)
    assert "123456" not in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    """A missing file, a directory or undecodable bytes each give ConfigError."""
    with pytest.raises(hsm.ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    with pytest.raises(hsm.ConfigError, match="can't be read"):
        load_config(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(hsm.ConfigError):
        load_config(bad)


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins over $HSM_CONFIG, which wins over ./hsm.toml; none is an error."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HSM_CONFIG", raising=False)
    with pytest.raises(hsm.ConfigError, match="no configuration"):
        find_config_path()
    (tmp_path / "hsm.toml").write_text(GOOD)
    assert find_config_path() == Path("hsm.toml")
    monkeypatch.setenv("HSM_CONFIG", "/env.toml")
    assert find_config_path() == Path("/env.toml")
    assert find_config_path("/explicit.toml") == Path("/explicit.toml")


def test_default_quorum_fits_the_members(tmp_path: Path) -> None:
    """Without a quorum line, a one-member cluster gets quorum 1 (2 needs two members)."""
    path = tmp_path / "hsm.toml"
    path.write_text(GOOD.replace("quorum = 1\n", ""))
    assert load_config(path).cluster.quorum == 1


@pytest.mark.parametrize(
    ("line", "key", "allowed"),
    [
        ("pool_size = 1000000000", "pool_size", "allowed 1 to 256"),
        ("pool_size = 257", "pool_size", "allowed 1 to 256"),
        ("pool_size = 0", "pool_size", "allowed 1 to 256"),
        ("pool_size = -3", "pool_size", "allowed 1 to 256"),
        ("deadline_ms = 0", "deadline_ms", "allowed 10 to 600000"),
        ("deadline_ms = 86400000", "deadline_ms", "allowed 10 to 600000"),
        ("quorum = 0", "quorum", "allowed 1 to the number of members (1)"),
    ],
)
def test_numbers_out_of_bounds_name_key_file_and_range(tmp_path: Path, line: str, key: str,
                                                      allowed: str) -> None:
    """Every number in the config is checked against sane bounds; the ConfigError names the
    key, the file and the allowed range (a billion sessions took 86 s and 7.8 GB before)."""
    path = tmp_path / "hsm.toml"
    if key == "pool_size":  # a member's key
        text = GOOD.replace('name = "hsm-a"', f'name = "hsm-a"\n{line}')
    else:  # a [cluster] key, replacing the one GOOD has
        text = "\n".join(line if old.startswith(f"{key} =") else old
                         for old in GOOD.splitlines())
    path.write_text(text)
    with pytest.raises(hsm.ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{line} is out of range" in message
    assert allowed in message


@pytest.mark.parametrize("line", ["pool_size = 8.5", 'pool_size = "8"', "pool_size = true"])
def test_numbers_must_be_integers(tmp_path: Path, line: str) -> None:
    """A number of the wrong type is a ConfigError naming the key."""
    path = tmp_path / "hsm.toml"
    path.write_text(GOOD.replace('name = "hsm-a"', f'name = "hsm-a"\n{line}'))
    with pytest.raises(hsm.ConfigError, match="'pool_size' must be an integer"):
        load_config(path)


def test_numbers_at_the_bounds_are_accepted(tmp_path: Path) -> None:
    """The bounds themselves are allowed."""
    path = tmp_path / "hsm.toml"
    path.write_text(GOOD.replace('name = "hsm-a"', 'name = "hsm-a"\npool_size = 256')
                    .replace("deadline_ms = 1500", "deadline_ms = 600000"))
    config = load_config(path)
    assert config.members[0].pool_size == 256
    assert config.cluster.deadline_ms == 600000


# -- key stores, [store], [kms] ----------------------------------------------------------------

STORES = GOOD + """
[kms]
account = "111122223333"
principal = "arn:hsm:iam::111122223333:user/alice"

[[keystore]]
name = "eu"
quorum = 2
deadline_ms = 900

[[keystore.member]]
name = "eu-a"
module = "lib/libsofthsm2.so"
token = "eu-a"
pin = "file:eu-pin"

[[keystore.member]]
name = "eu-b"
module = "lib/libsofthsm2.so"
token = "eu-b"
pin = "file:eu-pin"
"""


def test_keystores_kms_and_store_name(tmp_path: Path) -> None:
    """Top-level members are the default key store; each [[keystore]] has its own members
    and cluster settings; [kms] gives the account and principal; [store] a name."""
    path = tmp_path / "hsm.toml"
    path.write_text(STORES.replace('url = "sqlite:///hsm.db"',
                                   'url = "sqlite:///hsm.db"\nname = "lab-1"'))
    config = load_config(path)
    assert [k.name for k in config.keystores] == ["default", "eu"]
    assert config.keystore() == config.keystores[0]
    assert config.keystore().members == config.members
    eu = config.keystore("eu")
    assert [m.name for m in eu.members] == ["eu-a", "eu-b"]
    assert (eu.cluster.quorum, eu.cluster.deadline_ms, eu.cluster.mode) == (2, 900, "failover")
    assert eu.members[0].pin.where == str(tmp_path / "eu-pin")
    assert config.kms.account == "111122223333"
    assert config.kms.principal == "arn:hsm:iam::111122223333:user/alice"
    assert config.store.name == "lab-1"
    with pytest.raises(hsm.ConfigError, match="no key store named 'us'; key stores: default, eu"):
        config.keystore("us")


def test_defaults_without_kms_or_keystores(tmp_path: Path) -> None:
    """A config of today (no [kms], no [[keystore]]) has one key store, 'default', and the
    local account 000000000000."""
    path = tmp_path / "hsm.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert [k.name for k in config.keystores] == ["default"]
    assert config.kms.account == "000000000000"
    assert config.kms.principal is None
    assert config.store.name == "local"


def test_keystores_alone_make_the_first_the_default(tmp_path: Path) -> None:
    """Without top-level members the first [[keystore]] is the default key store."""
    path = tmp_path / "hsm.toml"
    path.write_text(STORES[STORES.index("[[keystore]]"):])
    config = load_config(path)
    assert [k.name for k in config.keystores] == ["eu"]
    assert [m.name for m in config.members] == ["eu-a", "eu-b"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('account = "111122223333"', 'account = "1234"'), "must be 12 digits"),
        (('name = "eu-a"', 'name = "hsm-a"'), "unique (across key stores too)"),
        (('name = "eu"', 'name = "default"'), "key store names must be unique"),
        (('name = "eu"', 'name = "e u"'), "name 'e u' must be"),
        (("quorum = 2", "quorum = 3"), "keystore 'eu': quorum = 3 is out of range"),
        (("quorum = 2", "quorum = 2\ncolour = 1"), "keystore 'eu': unknown key(s) colour"),
        (('principal = "arn', 'user = "arn'), "[kms]: unknown key(s) user"),
    ],
)
def test_bad_keystores_and_kms(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    """Each mistake in [[keystore]] or [kms] is one ConfigError that says where."""
    path = tmp_path / "hsm.toml"
    path.write_text(STORES.replace(*change, 1))
    with pytest.raises(hsm.ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)


def test_a_keystore_without_members_is_refused(tmp_path: Path) -> None:
    """A [[keystore]] needs its own [[keystore.member]] list."""
    path = tmp_path / "hsm.toml"
    path.write_text(GOOD + '\n[[keystore]]\nname = "eu"\n')
    with pytest.raises(hsm.ConfigError, match=r"keystore 'eu': at least one \[\[keystore.member"):
        load_config(path)
