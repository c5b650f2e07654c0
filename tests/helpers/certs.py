"""A private CA and the certificates made from it, for tests of TLS to the NATS cluster.

Made with ``cryptography`` (locked, through the http extra's pyjwt[crypto]); EC P-256
keys, valid from an hour ago for a day: nothing of it is kept after the test.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: str
    key: str


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate as a PEM file, and what it signs with."""

    cert: str
    _key: ec.EllipticCurvePrivateKey
    _name: x509.Name
    directory: str

    @classmethod
    def make(cls, directory: str, name: str = "engram test CA") -> Authority:
        os.makedirs(directory, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .sign(key, hashes.SHA256()))
        path = os.path.join(directory, "ca.pem")
        _write(path, cert.public_bytes(serialization.Encoding.PEM))
        return cls(path, key, subject, directory)

    def issue(self, name: str, *, server: bool) -> Issued:
        """A certificate for *name*: a server's (for 127.0.0.1 and localhost, usable by
        the routes between servers too) or a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                  if server else [ExtendedKeyUsageOID.CLIENT_AUTH])
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self._name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(os.path.join(self.directory, f"{name}.pem"),
                        os.path.join(self.directory, f"{name}-key.pem"))
        _write(issued.cert, cert.public_bytes(serialization.Encoding.PEM))
        _write(issued.key, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        return issued


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
    os.chmod(path, 0o600)
