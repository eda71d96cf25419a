"""A host that is not a member poses as a peer to ``lanvault recover`` and tries to turn what
it hears into a passphrase oracle (docs/security.md). It chooses every parameter: the Argon2id
limits, the salt, its SPAKE2 message. The real ``lanvault recover`` runs as a process against
it over real TLS, with the production KDF minimum (the test suite's weakening off)."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nacl.pwhash
import pytest
import trio

from chunkstore.keys import KdfParams, derive_wrapping_key
from chunkstore.kitexchange import KitOffer, confirmation
from chunkstore.recovery import kit_verifier
from node.identity import create_network_ca
from node.messages import (
    SUPPORTED_VERSIONS,
    Error,
    ErrorCode,
    Hello,
    KitChallenge,
    KitProof,
    KitRequest,
)
from node.transport import Authenticated, Channel
from tests.node.test_transport import network_for
from tests.system.procs import ROOT, env

pytestmark = pytest.mark.slow

PASSPHRASE = "correct horse battery staple"
DICTIONARY = ["password", "letmein", "123456", PASSPHRASE, "dragon"]
ARGON = nacl.pwhash.argon2id


def verifier(guess: str, params: KdfParams) -> bytes:
    return kit_verifier(derive_wrapping_key(guess, params))


@dataclass
class Rogue:
    """A server with a certificate from its own CA (no join code) that answers KITREQUEST."""

    params: KdfParams
    committed: str  # the one guess its SPAKE2 message is made with
    offers: list[KitOffer] = field(default_factory=list)
    proofs: list[KitProof] = field(default_factory=list)

    async def handle(self, auth: Authenticated) -> None:
        channel = Channel(auth, Hello(SUPPORTED_VERSIONS, 99, "rogue", ""))
        try:
            await channel.handshake()
            request = await channel.receive()
            assert isinstance(request, KitRequest)
            offer = KitOffer(verifier(self.committed, self.params), request.owner, self.params)
            self.offers.append(offer)
            p = self.params
            await channel.send(
                KitChallenge(request.req, p.opslimit, p.memlimit, p.salt, bytes(32), offer.message)
            )
            proof = await channel.receive()
            assert isinstance(proof, KitProof)
            self.proofs.append(proof)
            await channel.send(Error(proof.req, ErrorCode.FORBIDDEN, "wrong passphrase"))
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client walked away
        finally:
            await channel.aclose()

    def offline_attack(self, guesses: list[str]) -> list[str]:
        """Every guess the kept transcript confirms, computed as the rogue best can: SPAKE2's
        finish with its own secret scalar and the guessed passphrase's verifier."""
        (offer,), (proof,) = self.offers, self.proofs
        found = []
        for guess in guesses:
            spake = copy.copy(offer._spake)
            spake.pw = verifier(guess, self.params)
            spake.pw_scalar = spake.params.group.password_to_scalar(spake.pw)
            spake._finished = False
            session = spake.finish(proof.pake)
            expected = confirmation(session, proof.owner, self.params, offer.message, proof.pake)
            if expected == proof.confirm:
                found.append(guess)
        return found


async def recover_against(rogue: Rogue, tmp_path: Path) -> tuple[int, str]:
    """Run the real ``lanvault recover`` against the rogue; its exit code and stderr."""
    network = network_for(tmp_path, create_network_ca(), 99)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(network.serve, "127.0.0.1:0", rogue.handle)
        (tmp_path / "pass").write_text(PASSPHRASE + "\n")
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "lanvault.cli",
                "recover",
                "--dir",
                str(tmp_path / "new"),
                "--id",
                "1",
                "--peer",
                str(address),
                "--passphrase-file",
                str(tmp_path / "pass"),
            ],
            cwd=ROOT,
            env={**env(), "LANVAULT_TEST_WEAKEN_KDF": "0"},  # the production minimum
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    return result.returncode, result.stderr.decode()


async def test_limits_below_the_minimum_get_no_answer_at_all(tmp_path: Path) -> None:
    # Cheap limits would make each offline guess ~1,000 times cheaper: refused before any
    # derivation, and nothing derived from the passphrase is sent.
    rogue = Rogue(KdfParams(ARGON.OPSLIMIT_MIN, ARGON.MEMLIMIT_MIN, b"rogue-salt-16byt"), "x")
    code, stderr = await recover_against(rogue, tmp_path)
    assert code != 0 and "below lanvault's minimum" in stderr
    assert len(rogue.offers) == 1 and rogue.proofs == []


@pytest.mark.parametrize("committed", ["letmein", PASSPHRASE])
async def test_a_rogue_peer_gets_one_online_guess_and_nothing_to_test_offline(
    tmp_path: Path, committed: str
) -> None:
    # The lowest limits the client takes (libsodium's "moderate": what every kit is made with),
    # the rogue's own salt, its message made with one guess. It keeps the client's answer.
    params = KdfParams(ARGON.OPSLIMIT_MODERATE, ARGON.MEMLIMIT_MODERATE, b"rogue-salt-16byt")
    rogue = Rogue(params, committed)
    code, stderr = await recover_against(rogue, tmp_path)
    assert code != 0 and "wrong passphrase" in stderr and "nothing was written" in stderr
    assert len(rogue.proofs) == 1
    matches = rogue.offline_attack(DICTIONARY)  # the real passphrase is in the dictionary
    if committed == PASSPHRASE:
        # The guess it committed to is confirmed: the one online guess per attempt. (It also
        # shows the client derived with these limits: the real Argon2id cost of a guess.)
        assert matches == [PASSPHRASE]
    else:
        assert matches == []  # no other guess, the right one included, can be tested
