"""A private PostgreSQL server for the TLS tests: TLS only, password (SCRAM) logins only, and a
server certificate for ``localhost`` signed by a certificate authority made here.

The machine's own PostgreSQL (127.0.0.1:5432) trusts every local login and may not speak TLS, so
it cannot show that a client verifies the server or that a refused password is retried. This one
is made with the machine's initdb and pg_ctl on a free port in a temporary folder, run as the
``postgres`` user when the tests run as root (PostgreSQL refuses to run as root), and removed
afterwards.
"""

from __future__ import annotations

import datetime
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SUPERUSER = "fma_admin"


@dataclass(frozen=True)
class PrivatePostgres:
    port: int
    ca_file: Path  # the authority that signed the server's certificate
    other_ca_file: Path  # an authority that signed nothing of this server's
    superuser_password: str

    def admin_dsn(self) -> str:
        return (
            f"host=localhost port={self.port} dbname=postgres user={SUPERUSER} "
            f"password={self.superuser_password} sslmode=verify-full sslrootcert={self.ca_file}"
        )


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def make_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, host: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def private_postgres(bin_dir: Path) -> Iterator[PrivatePostgres]:
    root = Path(tempfile.mkdtemp(prefix="fma-pg-tls-"))
    as_root = os.geteuid() == 0
    owner = pwd.getpwnam("postgres") if as_root else None
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []

    def run(*args: str | Path) -> None:
        done = subprocess.run([*prefix, *map(str, args)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}{server_log}"[-4000:])

    data, log = root / "data", root / "server.log"
    password = "admin-" + os.urandom(8).hex()
    (root / "password").write_text(password)
    ca_key, ca = make_ca("FMA test RDS CA")
    _, other_ca = make_ca("FMA test other CA")
    (root / "ca.pem").write_bytes(_pem(ca))
    (root / "other-ca.pem").write_bytes(_pem(other_ca))
    if owner:
        for path in (root, root / "password"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    started = False
    try:
        run(
            bin_dir / "initdb",
            "-D",
            data,
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "--pwfile",
            root / "password",
            "--no-sync",
        )
        server_key, server = make_server_certificate(ca_key, ca, "localhost")
        (data / "server.crt").write_bytes(_pem(server))
        (data / "server.key").write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        os.chmod(data / "server.key", 0o600)
        port = _free_port()
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {port}\nlisten_addresses = 'localhost'\nunix_socket_directories = '{root}'\n"
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = off\n"
            )
        # TLS and a password, or nothing: no plain connections, no trusted local logins
        (data / "pg_hba.conf").write_text(
            "hostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n"
        )
        if owner:
            for path in [data, *data.rglob("*")]:
                os.chown(path, owner.pw_uid, owner.pw_gid)
            os.chown(root, owner.pw_uid, owner.pw_gid)
        run(bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start")
        started = True
        yield PrivatePostgres(port, root / "ca.pem", root / "other-ca.pem", password)
    finally:
        if started:
            run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
