"""The passphrase exchange (SPAKE2 + key confirmation) that hands a recovery kit over."""

from __future__ import annotations

import copy

import nacl.pwhash
import pytest

from chunkstore.errors import ChunkstoreError, WrongPassphraseError
from chunkstore.keys import KdfParams, derive_wrapping_key
from chunkstore.kitexchange import (
    KitOffer,
    KitRequestor,
    check_offered_kdf,
    confirmation,
    decoy_params,
)
from chunkstore.recovery import kit_verifier

WEAK = KdfParams(nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN, bytes(16))
DICTIONARY = ["password", "letmein", "123456", "correct horse battery staple", "dragon", "qwerty"]


def verifier(passphrase: str, params: KdfParams = WEAK) -> bytes:
    return kit_verifier(derive_wrapping_key(passphrase, params))


def test_the_same_passphrase_opens_the_kit_and_nothing_else_does() -> None:
    right = verifier("correct horse battery staple")
    offer = KitOffer(right, 7, WEAK)
    client = KitRequestor(right, 7, WEAK, offer.message)
    assert offer.check(client.message, client.confirm)
    assert client.open(offer.seal(b"the kit")) == b"the kit"

    wrong = KitOffer(right, 7, WEAK)
    guess = KitRequestor(verifier("dragon"), 7, WEAK, wrong.message)
    assert not wrong.check(guess.message, guess.confirm)
    with pytest.raises(WrongPassphraseError):
        wrong.seal(b"the kit")  # nothing to hand over
    with pytest.raises(ChunkstoreError):
        wrong.check(guess.message, guess.confirm)  # one answer per exchange

    other_owner = KitOffer(right, 8, WEAK)  # the owner id is bound into the exchange
    client = KitRequestor(right, 7, WEAK, other_owner.message)
    assert not other_owner.check(client.message, client.confirm)

    # A kit sealed by a holder that did not know the verifier does not open.
    liar = KitOffer(verifier("dragon"), 7, WEAK)
    client = KitRequestor(right, 7, WEAK, liar.message)
    liar._seal_key = bytes(32)  # as if it had passed the check
    liar._transcript = b"x"
    with pytest.raises(WrongPassphraseError):
        client.open(liar.seal(b"forged kit"))


def test_malformed_messages_are_refused_not_crashes() -> None:
    right = verifier("pw")
    offer = KitOffer(right, 7, WEAK)
    for message in (bytes(33), b"A" + bytes(32), offer.message, b"\xff" * 33):
        assert not KitOffer(right, 7, WEAK).check(message, bytes(32))
    with pytest.raises(ChunkstoreError):
        KitOffer(right, 7, WEAK).check(b"short", bytes(32))
    with pytest.raises(ChunkstoreError):
        KitRequestor(right, 7, WEAK, b"B" + b"\xff" * 32)
    with pytest.raises(ChunkstoreError):
        KitRequestor(right, 7, WEAK, offer.message).open(b"too short")


def offline_guess(rogue: KitOffer, guess: str, message_a: bytes, params: KdfParams) -> bytes:
    """What a rogue server that kept the transcript computes for a guess: SPAKE2's finish with
    its own secret scalar (the one its message was made with) and the guessed password."""
    spake = copy.copy(rogue._spake)
    spake.pw = verifier(guess, params)
    spake.pw_scalar = spake.params.group.password_to_scalar(spake.pw)
    spake._finished = False
    session = spake.finish(message_a)
    return confirmation(session, rogue.owner, params, rogue.message, message_a)


@pytest.mark.parametrize("committed", ["letmein", "correct horse battery staple"])
def test_a_rogue_server_can_test_only_the_guess_it_committed_to(committed: str) -> None:
    # The rogue chooses everything: the limits (the lowest the client takes here), its salt,
    # and a SPAKE2 message made with its one guess. It keeps the client's answer and tries a
    # dictionary offline. Only the guess inside its message can ever match.
    params = KdfParams(WEAK.opslimit, WEAK.memlimit, b"rogue-salt-16byt")
    rogue = KitOffer(verifier(committed, params), 7, params)
    victim = KitRequestor(
        verifier("correct horse battery staple", params), 7, params, rogue.message
    )
    matches = [
        guess
        for guess in DICTIONARY
        if offline_guess(rogue, guess, victim.message, params) == victim.confirm
    ]
    if committed == "correct horse battery staple":
        assert matches == [committed]  # the one online guess, when it is right
    else:
        assert matches == []  # the real passphrase is in the dictionary, and does not match


def test_the_client_refuses_limits_below_lanvaults_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANVAULT_TEST_WEAKEN_KDF", raising=False)
    with pytest.raises(WrongPassphraseError, match="minimum"):
        check_offered_kdf(WEAK)
    moderate = nacl.pwhash.argon2id
    check_offered_kdf(KdfParams(moderate.OPSLIMIT_MODERATE, moderate.MEMLIMIT_MODERATE, WEAK.salt))
    with pytest.raises(WrongPassphraseError):
        check_offered_kdf(KdfParams(moderate.OPSLIMIT_MODERATE, moderate.MEMLIMIT_MIN, WEAK.salt))


def test_a_decoy_looks_like_a_kit_and_stays_the_same() -> None:
    a = decoy_params(b"s" * 32, 5)
    assert a == decoy_params(b"s" * 32, 5)
    assert a.salt != decoy_params(b"s" * 32, 6).salt != decoy_params(b"t" * 32, 5).salt
    assert len(a.salt) == 16
