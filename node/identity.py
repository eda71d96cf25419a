"""Network membership credentials: the network's CA, node certificates, join codes, TLS contexts.

Every network has its own certificate authority, made by ``lanvault init``; its key stays on
the administrator node(s) (the first one, in its state directory and its passphrase-wrapped
recovery kit). A join code carries the CA's certificate, a one-time enrolment secret and the
administrator's address: the joining computer sends a certificate request that the
administrator signs (``node/enrolment.py``) and records in the signed roster
(``node/roster.py``). Peers also pin the first certificate they see for an id.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import ssl
from dataclasses import dataclass

import msgpack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

JOIN_CODE_PREFIX = "lvjoin2-"
_OLD_PREFIX = "lvjoin1-"
_CN = re.compile(r"^lanvault-node-([0-9]{1,10})$")
_VALIDITY = datetime.timedelta(days=365 * 100)


class IdentityError(Exception):
    """A credential is malformed or does not belong to this network."""


@dataclass(frozen=True, slots=True)
class NetworkCA:
    network_id: str
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    node_id: int
    cert_pem: bytes
    key_pem: bytes
    ca_cert_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_network_ca() -> NetworkCA:
    key = ec.generate_private_key(ec.SECP256R1())
    network_id = hashlib.sha256(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).hexdigest()[:16]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"lanvault-ca-{network_id}"))
        .issuer_name(_name(f"lanvault-ca-{network_id}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return NetworkCA(
        network_id=network_id,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def issue_node_credentials(ca: NetworkCA, node_id: int) -> NodeCredentials:
    """A key and certificate binding ``node_id``, signed by the network's CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    return NodeCredentials(
        node_id=node_id,
        cert_pem=issue_certificate(ca, node_id, key.public_key()),
        key_pem=private_pem(key),
        ca_cert_pem=ca.cert_pem,
    )


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_certificate(ca: NetworkCA, node_id: int, public_key: ec.EllipticCurvePublicKey) -> bytes:
    """A node certificate (PEM) binding ``node_id`` to ``public_key``, signed by the CA."""
    if not 0 <= node_id < 2**32:
        raise IdentityError(f"node id {node_id} outside 0..{2**32 - 1}")
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise IdentityError("the network CA key is not an EC key")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"lanvault-node-{node_id}"))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_request(node_id: int) -> tuple[bytes, bytes]:
    """A new key (PEM) and a certificate request for ``node_id`` signed by it (DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(f"lanvault-node-{node_id}"))
        .sign(key, hashes.SHA256())
    )
    return private_pem(key), csr.public_bytes(serialization.Encoding.DER)


def requested_key(csr_der: bytes, node_id: int) -> ec.EllipticCurvePublicKey:
    """The public key of a well-formed, self-signed request for ``node_id``."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
        valid = csr.is_signature_valid
        key = csr.public_key()
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise IdentityError(f"the certificate request cannot be read: {exc}") from None
    if not valid or not isinstance(key, ec.EllipticCurvePublicKey):
        raise IdentityError("the certificate request is not signed by an EC key")
    if [str(n.value) for n in names] != [f"lanvault-node-{node_id}"]:
        raise IdentityError("the certificate request names another node")
    return key


@dataclass(frozen=True, slots=True)
class Invitation:
    """What a join code carries: the network's CA certificate (never its key), a one-time
    enrolment secret, and where the administrator node that made it listens."""

    network_id: str
    ca_cert_pem: bytes
    secret: bytes
    addresses: tuple[str, ...]

    @property
    def invite_id(self) -> bytes:
        return invite_id(self.secret)


def invite_id(secret: bytes) -> bytes:
    return hashlib.sha256(b"lanvault-invite" + secret).digest()


def encode_join_code(invitation: Invitation) -> str:
    der = x509.load_pem_x509_certificate(invitation.ca_cert_pem).public_bytes(
        serialization.Encoding.DER
    )
    payload = msgpack.packb(
        [2, invitation.network_id, der, invitation.secret, list(invitation.addresses)],
        use_bin_type=True,
    )
    return JOIN_CODE_PREFIX + base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_join_code(code: str) -> Invitation:
    code = code.strip()
    if code.startswith(_OLD_PREFIX):
        raise IdentityError(
            "this join code is from an older lanvault and carries the network's key: make a new"
            " one with 'lanvault invite' on the first computer"
        )
    if not code.startswith(JOIN_CODE_PREFIX):
        raise IdentityError(f"not a lanvault join code (it starts with {JOIN_CODE_PREFIX!r})")
    body = code[len(JOIN_CODE_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        version, network_id, der, secret, addresses = msgpack.unpackb(raw, raw=False)
        cert_pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        valid = (
            version == 2
            and isinstance(network_id, str)
            and isinstance(secret, bytes)
            and len(secret) == 32
            and isinstance(addresses, list)
            and all(isinstance(a, str) for a in addresses)
        )
    except Exception:  # any decoding failure means the same thing to the user
        raise IdentityError("the join code is damaged (copy it again, whole)") from None
    if not valid:
        raise IdentityError("the join code is damaged (copy it again, whole)")
    return Invitation(network_id, cert_pem, secret, tuple(addresses))


def decode_legacy_join_code(code: str) -> NetworkCA:
    """A join code of the first lanvault (CA certificate and key): kits made then hold one."""
    body = code.strip()[len(_OLD_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        version, network_id, cert_pem, key_pem = msgpack.unpackb(raw, raw=False)
        x509.load_pem_x509_certificate(cert_pem)
        serialization.load_pem_private_key(key_pem, password=None)
    except Exception:
        raise IdentityError("the join code is damaged") from None
    if version != 1 or not isinstance(network_id, str):
        raise IdentityError("the join code is from an unsupported lanvault version")
    return NetworkCA(network_id, cert_pem, key_pem)


def network_id_of(ca_cert_pem: bytes) -> str:
    """The network id a CA certificate names (``lanvault-ca-ID``)."""
    cert = x509.load_pem_x509_certificate(ca_cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    if not name.startswith("lanvault-ca-"):
        raise IdentityError("not a lanvault network authority")
    return name[len("lanvault-ca-") :]


def _context(
    creds: NodeCredentials, purpose: ssl.Purpose, cert_file: str, key_file: str
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cadata=creds.ca_cert_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # peers are named by the node id in their certificate, checked after
    # Mutual authentication: a server still accepts a client with *no* certificate, for the
    # recovery-kit exchange only (docs/protocol.md); a client with a bad one is refused.
    server = purpose == ssl.Purpose.CLIENT_AUTH
    ctx.verify_mode = ssl.CERT_OPTIONAL if server else ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def tls_contexts(
    creds: NodeCredentials, cert_file: str, key_file: str
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for this node. The files hold ``creds`` in PEM form."""
    return (
        _context(creds, ssl.Purpose.CLIENT_AUTH, cert_file, key_file),
        _context(creds, ssl.Purpose.SERVER_AUTH, cert_file, key_file),
    )


def node_id_from_certificate(der: bytes | None) -> int:
    """The node id bound in a verified peer certificate."""
    if not der:
        raise IdentityError("peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:  # a stranger's certificate is input like any other
        raise IdentityError(f"peer certificate cannot be read: {exc}") from None
    match = _CN.match(str(names[0].value)) if names else None
    if match is None:
        raise IdentityError("peer certificate does not name a lanvault node")
    node_id = int(match.group(1))
    if node_id >= 2**32:
        raise IdentityError("peer certificate names an out-of-range node id")
    return node_id


def issued_by(der: bytes, ca_cert_pem: bytes) -> bool:
    """Whether the certificate ``der`` was signed by this CA (checked after an anonymous TLS)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
        cert.verify_directly_issued_by(ca)
    except Exception:  # any failure means: not one of ours
        return False
    return True


def certificate_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(cert_pem: bytes) -> str:
    """The fingerprint of a PEM certificate (as ``certificate_fingerprint`` of its DER)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise IdentityError(f"the certificate cannot be read: {exc}") from None
    return certificate_fingerprint(cert.public_bytes(serialization.Encoding.DER))
