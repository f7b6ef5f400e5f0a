"""Test certificates made with ``cryptography``: a CA, and certificates it signs, as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its unencrypted private key, as PEM files."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cad-node tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    folder.mkdir(parents=True, exist_ok=True)
    issued = Issued(folder / f"{stem}.crt", folder / f"{stem}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return issued


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, folder: Path, name: str = "cad-node test CA") -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.files = _write(folder, "ca", self.cert, self.key)

    @property
    def bundle(self) -> Path:
        """The CA certificate as a PEM bundle."""
        return self.files.cert

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        hosts: tuple[str, ...] = (),
        client: bool = False,
    ) -> Issued:
        """A certificate for a server (``hosts``: SAN DNS names and IP addresses), a client, or
        both (``hosts`` and ``client``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    ([ExtendedKeyUsageOID.SERVER_AUTH] if hosts or not client else [])
                    + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _write(self.folder, stem, builder.sign(self.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class TlsFiles:
    """A CA and what it signed, plus a stranger CA's client certificate."""

    ca: CertificateAuthority
    server: Issued
    """For 127.0.0.1 and localhost."""
    client: Issued
    other_host: Issued
    """A server certificate for another host name only."""
    stranger_ca: CertificateAuthority
    stranger_client: Issued
    """A client certificate the CA did not sign."""


def make_tls_files(folder: Path) -> TlsFiles:
    ca = CertificateAuthority(folder / "ca")
    stranger = CertificateAuthority(folder / "stranger", "someone else's CA")
    return TlsFiles(
        ca=ca,
        server=ca.issue("server", "cad-node", hosts=("127.0.0.1", "localhost")),
        client=ca.issue("client", "MODALITY", client=True),
        other_host=ca.issue("other", "pacs.example", hosts=("pacs.example",)),
        stranger_ca=stranger,
        stranger_client=stranger.issue("client", "INTRUDER", client=True),
    )
