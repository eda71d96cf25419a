from __future__ import annotations

import pytest

from chunkstore.errors import KeyFileError, WrongPassphraseError
from chunkstore.keys import KeyRing, new_master_key, unwrap_master_key, wrap_master_key


def test_wrap_round_trip() -> None:
    master = new_master_key()
    wrapped = wrap_master_key(master, "correct horse")
    assert master not in wrapped
    assert unwrap_master_key(wrapped, "correct horse") == master


def test_wrong_passphrase_is_one_clear_error() -> None:
    wrapped = wrap_master_key(new_master_key(), "right")
    with pytest.raises(WrongPassphraseError) as info:
        unwrap_master_key(wrapped, "wrong")
    assert str(info.value) == "wrong passphrase"


def test_tampered_wrapped_key_is_refused() -> None:
    wrapped = bytearray(wrap_master_key(new_master_key(), "pw"))
    wrapped[-1] ^= 1
    with pytest.raises(WrongPassphraseError):
        unwrap_master_key(bytes(wrapped), "pw")
    with pytest.raises(KeyFileError, match="expected"):
        unwrap_master_key(bytes(wrapped[:-2]), "pw")
    bad_magic = b"XXXXX" + bytes(wrapped[5:])
    with pytest.raises(KeyFileError, match="magic"):
        unwrap_master_key(bad_magic, "pw")


def test_empty_passphrase_refused() -> None:
    with pytest.raises(WrongPassphraseError):
        wrap_master_key(new_master_key(), "")


def test_weakened_kdf_is_recorded_and_strong_is_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import nacl.pwhash

    weak = wrap_master_key(new_master_key(), "pw")
    assert int.from_bytes(weak[6:14], "big") == nacl.pwhash.argon2id.OPSLIMIT_MIN
    monkeypatch.delenv("LANVAULT_TEST_WEAKEN_KDF")
    from chunkstore import keys

    assert keys.kdf_limits() == (
        nacl.pwhash.argon2id.OPSLIMIT_MODERATE,
        nacl.pwhash.argon2id.MEMLIMIT_MODERATE,
    )


def test_subkeys_are_distinct_and_deterministic() -> None:
    master = new_master_key()
    ring = KeyRing.from_master(master)
    again = KeyRing.from_master(master)
    assert ring == again
    subkeys = {ring.address_key, ring.data_key, ring.metadata_key, ring.catalog_mac_key}
    assert len(subkeys) == 4
    assert master not in subkeys
    assert KeyRing.from_master(new_master_key()).address_key != ring.address_key
    assert "secret" in repr(ring)
    assert ring.data_key.hex() not in repr(ring)
