"""Test-time X.509 material: a CA plus server and client certificates, made with `cryptography`.

    certs = make_certs(tmp_dir)            # a fresh CA and leaf certs, written as PEM files
    certs.ca_cert, certs.server_cert, certs.server_key, certs.client_cert, certs.client_key
    certs.server_key_encrypted             # same server key, encrypted with certs.passphrase

Server certificates carry an IP SAN 127.0.0.1 (and ::1) and a DNS SAN localhost, so
clients can verify them whether they dial the IP or the name. `make_certs(dir, name="other")`
makes a second, unrelated CA for "wrong CA" and reload tests. Nothing here touches the
network; keys are EC P-256 so generation takes milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PASSPHRASE = "correct horse"


@dataclass
class CertSet:
    dir: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    server_key_encrypted: str
    client_cert: str
    client_key: str
    dns_only_cert: str  # server cert with only a DNS SAN (no IP SAN)
    dns_only_key: str
    passphrase: str = PASSPHRASE

    def serial_of(self, which: str = "server_cert") -> int:
        with open(getattr(self, which), "rb") as f:
            return x509.load_pem_x509_certificate(f.read()).serial_number


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey, passphrase: str | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _leaf(ca_key, ca_name: x509.Name, cn: str, *, server: bool, ip_san: bool = True):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if ip_san:
        sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.IPAddress(ipaddress.ip_address("::1"))]
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # AKI: Python 3.13's default contexts (VERIFY_X509_STRICT) require it
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_certs(directory: str, name: str = "cfproxy-test") -> CertSet:
    """Create a CA and server/client certificates under `directory`; return their paths."""
    os.makedirs(directory, exist_ok=True)
    p = lambda f: os.path.join(directory, f"{name}-{f}")  # noqa: E731
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{name} CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    skey, scert = _leaf(ca_key, ca_name, "localhost", server=True)
    ckey, ccert = _leaf(ca_key, ca_name, f"{name} client", server=False)
    dkey, dcert = _leaf(ca_key, ca_name, "localhost", server=True, ip_san=False)
    return CertSet(
        dir=directory,
        ca_cert=_write(p("ca.pem"), _cert_pem(ca)),
        ca_key=_write(p("ca.key"), _key_pem(ca_key)),
        server_cert=_write(p("server.pem"), _cert_pem(scert)),
        server_key=_write(p("server.key"), _key_pem(skey)),
        server_key_encrypted=_write(p("server-enc.key"), _key_pem(skey, PASSPHRASE)),
        client_cert=_write(p("client.pem"), _cert_pem(ccert)),
        client_key=_write(p("client.key"), _key_pem(ckey)),
        dns_only_cert=_write(p("dnsonly.pem"), _cert_pem(dcert)),
        dns_only_key=_write(p("dnsonly.key"), _key_pem(dkey)),
    )
