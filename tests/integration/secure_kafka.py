"""A Kafka node with a SASL_SSL listener (SCRAM-SHA-512 users, a keytool-made CA) for tests.

The node keeps its PLAINTEXT listener for the controller link, inter-broker
traffic and the readiness probe; clients of the tests reach it on the
SASL_SSL listener only (``client_bootstrap``). Certificates are made with the
JDK's keytool: a throwaway CA (``ca.pem``, what ``GRAYSCOPE_KAFKA_SSL_CA_FILE``
points at) signs the broker's key for ``127.0.0.1``/``localhost``. SCRAM users
are created at format time (``StorageTool format --add-scram``).

Making them takes seven keytool runs (a JVM each, ~15 s on a busy two-core box):
:func:`cached_certificates` and :func:`cached_ca` keep them in the service cache,
one folder per UTC day (they are valid for three), so a run makes them once a day.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.dev.stack.fetch import java_binary
from pipeline.dev.stack.kafka import KafkaNode
from pipeline.dev.stack.process import free_port
from tests.integration.conftest import new_kafka

STORE_PASSWORD = "keystore-pass"  # a throwaway keystore's
MECHANISM = "SCRAM-SHA-512"
COMMON = ("-storetype", "PKCS12", "-storepass", STORE_PASSWORD)


@dataclass(frozen=True)
class Certificates:
    ca_pem: Path
    broker_keystore: Path


def _keytool(*args: str, cwd: Path) -> None:
    keytool = str(Path(java_binary()).resolve().parent / "keytool")
    result = subprocess.run([keytool, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"keytool {args[0]} failed: {result.stdout}{result.stderr}")


def make_ca(folder: Path) -> Path:
    """A self-signed CA in ``folder/ca.p12``; returns its certificate, ``folder/ca.pem``."""
    folder.mkdir(parents=True, exist_ok=True)
    _keytool(
        "-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048",
        "-dname", "CN=grayscope test CA", "-ext", "bc:c", "-validity", "3",
        "-keystore", "ca.p12", *COMMON, cwd=folder,
    )  # fmt: skip
    _keytool(
        "-exportcert", "-rfc", "-alias", "ca", "-keystore", "ca.p12", *COMMON,
        "-file", "ca.pem", cwd=folder,
    )  # fmt: skip
    return folder / "ca.pem"


def make_certificates(folder: Path) -> Certificates:
    """A CA and a broker keystore signed by it (PKCS12), valid for loopback."""
    make_ca(folder)
    common = COMMON
    _keytool(
        "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
        "-dname", "CN=localhost", "-validity", "3", "-keystore", "broker.p12", *common,
        cwd=folder,
    )  # fmt: skip
    _keytool(
        "-certreq", "-alias", "broker", "-keystore", "broker.p12", *common,
        "-file", "broker.csr", cwd=folder,
    )  # fmt: skip
    _keytool(
        "-gencert", "-alias", "ca", "-keystore", "ca.p12", *common, "-rfc",
        "-infile", "broker.csr", "-outfile", "broker.pem", "-validity", "3",
        "-ext", "SAN=ip:127.0.0.1,dns:localhost", "-ext", "KU=digitalSignature,keyEncipherment",
        "-ext", "EKU=serverAuth", cwd=folder,
    )  # fmt: skip
    _keytool(
        "-importcert", "-noprompt", "-alias", "ca", "-file", "ca.pem",
        "-keystore", "broker.p12", *common, cwd=folder,
    )  # fmt: skip
    _keytool(
        "-importcert", "-noprompt", "-alias", "broker", "-file", "broker.pem",
        "-keystore", "broker.p12", *common, cwd=folder,
    )  # fmt: skip
    return Certificates(ca_pem=folder / "ca.pem", broker_keystore=folder / "broker.p12")


def secure_node(
    data_dir: Path, lib: Path, certificates: Certificates, users: dict[str, str]
) -> tuple[KafkaNode, str]:
    """A KafkaNode with a SASL_SSL listener; returns it and the clients' bootstrap."""
    sasl_port = free_port()
    node = new_kafka(data_dir, lib)
    plain = f"PLAINTEXT://{node.host}:{node.port}"
    secure = f"SASL_SSL://{node.host}:{sasl_port}"
    login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    node.extra_properties.update(
        {
            "listeners": f"{plain},{secure},CONTROLLER://{node.host}:{node.controller_port}",
            "advertised.listeners": f"{plain},{secure}",
            "listener.security.protocol.map": (
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL"
            ),
            "sasl.enabled.mechanisms": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": login,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(certificates.broker_keystore),
            "ssl.keystore.password": STORE_PASSWORD,
            "ssl.key.password": STORE_PASSWORD,
            "ssl.client.auth": "none",
        }
    )
    node.format_options = [
        arg
        for name, password in users.items()
        for arg in ("--add-scram", f"{MECHANISM}=[name={name},password={password}]")
    ]
    return node, f"{node.host}:{sasl_port}"


def _cached(root: Path, name: str, make: Callable[[Path], object]) -> Path:
    """``root/<UTC day>/name``, made by ``make(folder)`` unless today's exists. Made in a
    temporary sibling and renamed into place: a parallel run never sees half of it."""
    day = time.strftime("%Y%m%d", time.gmtime())
    folder = root / day / name
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Older days' folders: certificates valid for three days are not used after one.
    yesterday = time.strftime("%Y%m%d", time.gmtime(time.time() - 86_400))
    for old in root.iterdir():
        if old.name < yesterday:
            shutil.rmtree(old, ignore_errors=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
    try:
        make(fresh)
        fresh.rename(folder)
    except OSError:
        if not folder.is_dir():  # not a parallel run's folder taking the name first
            raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return folder


def cached_certificates(root: Path) -> Certificates:
    """:func:`make_certificates` once a day, kept under ``root``."""
    folder = _cached(root, "broker", make_certificates)
    return Certificates(ca_pem=folder / "ca.pem", broker_keystore=folder / "broker.p12")


def cached_ca(root: Path, name: str) -> Path:
    """:func:`make_ca` (a CA of its own, named ``name``) once a day, kept under ``root``."""
    return _cached(root, name, make_ca) / "ca.pem"
