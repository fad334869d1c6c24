"""The client over the cluster's seam, against a real SoftHSM token."""

from __future__ import annotations

from pathlib import Path

import pytest

import hsm


def test_generate_random_through_the_seam(hsm_client: hsm.Client) -> None:
    """``client.generate_random`` returns fresh bytes from the HSM, of the size asked."""
    one, two = hsm_client.generate_random(32), hsm_client.generate_random(32)
    assert len(one) == len(two) == 32
    assert one != two
    with pytest.raises(hsm.InvalidInput):
        hsm_client.generate_random(0)


def test_describe_a_member_through_the_seam(hsm_client: hsm.Client) -> None:
    """``client.describe(member)`` names the member's token, its probed mechanisms and its
    keys, with no PIN in it."""
    hsm_client.create_key()
    name = hsm_client.config.members[0].name
    info = hsm_client.describe(name)
    assert info["token_label"]
    assert info["mechanisms"]["aes_gcm"]
    assert info["keys"] == 1
    assert "pin" not in repr(info).lower()
    with pytest.raises(hsm.OperationFailed):
        hsm_client.describe("no-such-member")


def test_open_sets_no_methods_on_instances(hsm_client: hsm.Client) -> None:
    """The data-key calls are the class's own methods while open: nothing is patched onto
    the client or its members (a reader and mypy see what runs)."""
    assert not {"generate_data_key", "wrap", "unwrap"} & set(vars(hsm_client))
    for member in hsm_client.members:
        assert not {"generate_data_key", "wrap", "unwrap"} & set(vars(member))


def test_a_closed_client_says_so(hsm_config: Path) -> None:
    """Every call on a client that is not open (or no longer) says how to open it."""
    client = hsm.open(hsm_config)
    key = client.create_key()
    client.close()
    for call in (lambda: client.generate_data_key(key.key_id),
                 lambda: client.unwrap(b"x" * 100),
                 lambda: client.list_keys()):
        with pytest.raises(hsm.OperationFailed) as caught:
            call()
        assert caught.value.reason is hsm.Reason.NOT_OPEN
        assert "hsm.open" in str(caught.value)
