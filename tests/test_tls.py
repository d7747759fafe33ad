"""TLS: an https upstream signed by a private CA (`proxy.upstream_ca`, hostname checked),
TLS on both listeners with mTLS on the admin one (`proxy.tls`, `admin.tls`), certificate
files reloaded on SIGHUP without dropping a connection, and bad files refused at start-up.

Every CA and certificate is made in the test (trustme, on the `cryptography` package).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestServer

from gateway.demo_upstream import create_demo_app

from .conftest import GatewayFactory, Seed
from .helpers import gateway_command, make_config, sample, wait_for
from .topology import Replica

# -- the https upstream ------------------------------------------------------------------


async def tls_upstream(cert: trustme.LeafCert) -> TestServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server = TestServer(create_demo_app(), host="127.0.0.1")
    await server.start_server(ssl=context)
    return server


@pytest.fixture
async def https_upstreams() -> AsyncIterator[list[TestServer]]:
    servers: list[TestServer] = []
    yield servers
    for server in servers:
        await server.close()


async def test_https_upstream_signed_by_private_ca_is_trusted(
    start_gateway: GatewayFactory,
    https_upstreams: list[TestServer],
    database_url: str,
    seed: Seed,
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    upstream = await tls_upstream(ca.issue_cert("127.0.0.1"))
    https_upstreams.append(upstream)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    url = f"https://127.0.0.1:{upstream.port}"
    gateway = await start_gateway(
        make_config(database_url, url, proxy={"upstream_ca": str(ca_file)})
    )
    key = await seed.key()
    async with aiohttp.ClientSession() as session:
        async with session.get(
            gateway.make_url("/v1/echo"), headers={"Authorization": f"Bearer {key.key}"}
        ) as response:
            assert response.status == 200
            assert (await response.json())["method"] == "GET"


@pytest.mark.parametrize(
    ("case", "logged"),
    [
        ("wrong hostname", "Hostname mismatch"),
        ("untrusted CA", "unable to get local issuer certificate"),
    ],
)
async def test_upstream_certificate_not_accepted_is_a_502_with_a_clear_log_line(
    start_gateway: GatewayFactory,
    https_upstreams: list[TestServer],
    database_url: str,
    seed: Seed,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
    logged: str,
) -> None:
    trusted = trustme.CA()
    host = "localhost"
    if case == "wrong hostname":
        cert = trusted.issue_cert("api.growpanel.example")
    else:
        cert = trustme.CA().issue_cert(host)
    upstream = await tls_upstream(cert)
    https_upstreams.append(upstream)
    ca_file = tmp_path / "ca.pem"
    trusted.cert_pem.write_to_path(str(ca_file))
    url = f"https://{host}:{upstream.port}"
    gateway = await start_gateway(
        make_config(database_url, url, proxy={"upstream_ca": str(ca_file)})
    )
    key = await seed.key()
    before = sample("gateway_upstream_errors_total", kind="tls")
    with caplog.at_level(logging.ERROR, logger="gateway.upstream"):
        async with aiohttp.ClientSession() as session:
            async with session.get(
                gateway.make_url("/v1/customers"), headers={"Authorization": f"Bearer {key.key}"}
            ) as response:
                assert response.status == 502
                assert (await response.json())["error"]["code"] == "upstream_unavailable"
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.upstream"]
    assert len(lines) == 1, lines
    assert f"TLS with the upstream {host}:{upstream.port} failed" in lines[0]
    assert logged in lines[0]
    assert sample("gateway_upstream_errors_total", kind="tls") == before + 1


# -- TLS on the listeners ---------------------------------------------------------------


class Pki:
    """A server CA with a certificate for 127.0.0.1, and a client CA for the admin mTLS."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.client_ca = trustme.CA()
        self.cert = directory / "server.pem"
        self.key = directory / "server.key"
        self.issue(self.ca)
        self.client_ca.cert_pem.write_to_path(str(directory / "client-ca.pem"))
        self.client = self.client_ca.issue_cert("operator@growpanel.example")

    def issue(self, ca: trustme.CA) -> bytes:
        """Write a new server certificate and key; return the certificate (DER)."""
        leaf = ca.issue_cert("127.0.0.1")
        # Written in place: the files a deployment's renewal job overwrites.
        self.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        self.key.write_bytes(leaf.private_key_pem.bytes())
        return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())

    def env(self) -> dict[str, str]:
        return {
            "GATEWAY__PROXY__TLS__CERTIFICATE": str(self.cert),
            "GATEWAY__PROXY__TLS__KEY": str(self.key),
            "GATEWAY__ADMIN__TLS__CERTIFICATE": str(self.cert),
            "GATEWAY__ADMIN__TLS__KEY": str(self.key),
            "GATEWAY__ADMIN__TLS__CLIENT_CA": str(self.directory / "client-ca.pem"),
        }

    def client_context(self, *cas: trustme.CA, client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context()
        for ca in cas or (self.ca,):
            ca.configure_trust(context)
        if client_cert:
            self.client.configure_cert(context)
        return context


@pytest.fixture
async def tls_replica(
    database_url: str, upstream: TestServer, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Replica, Pki]]:
    """A `gateway serve` with TLS on both listeners (`--workers N` when parametrized)."""
    pki = Pki(tmp_path)
    env = {
        "DATABASE_URL": database_url,
        "GATEWAY__PROXY__UPSTREAM": str(upstream.make_url("")).rstrip("/"),
        **pki.env(),
    }
    replica = Replica("tls", env, tmp_path, workers=getattr(request, "param", 1))
    replica.scheme = "https"
    replica.start()
    try:
        await replica.wait_ready(ssl=pki.client_context())
        yield replica, pki
    finally:
        replica.kill()


async def test_listeners_serve_tls_and_the_admin_one_requires_a_client_certificate(
    tls_replica: tuple[Replica, Pki], seed: Seed
) -> None:
    replica, pki = tls_replica
    key = await seed.key()
    admin = f"https://127.0.0.1:{replica.admin_port}/healthz"
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{replica.proxy_url}/v1/customers",
            headers={"Authorization": f"Bearer {key.key}"},
            ssl=pki.client_context(),
        ) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{replica.proxy_url}/_gateway/ready")  # system CAs: untrusted
        with pytest.raises(aiohttp.ClientError):
            async with session.get(admin, ssl=pki.client_context()) as response:
                await response.read()  # TLS 1.3 reports the missing certificate here
        async with session.get(admin, ssl=pki.client_context(client_cert=True)) as response:
            assert response.status == 200
    with pytest.raises(aiohttp.ClientError):  # plain HTTP on a TLS listener
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{replica.proxy_port}/_gateway/ready") as r:
                await r.read()


async def ready_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """One keep-alive request for /_gateway/ready on an open connection; its status."""
    writer.write(b"GET /_gateway/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length:")
    )
    await reader.readexactly(length)
    return int(head.split(" ", 2)[1])


def peer_certificate(writer: asyncio.StreamWriter) -> bytes:
    der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return der


@pytest.mark.parametrize("tls_replica", [1, 2], indirect=True, ids=["one-process", "workers-2"])
async def test_sighup_reloads_certificates_without_dropping_connections(
    tls_replica: tuple[Replica, Pki],
) -> None:
    """With `--workers 2` the supervisor passes SIGHUP on to every worker: new
    connections, whichever worker takes them, get the new certificate."""
    replica, pki = tls_replica
    second_ca = trustme.CA()
    context = pki.client_context(pki.ca, second_ca)
    old_reader, old_writer = await asyncio.open_connection(
        "127.0.0.1", replica.proxy_port, ssl=context
    )
    try:
        assert await ready_over(old_reader, old_writer) == 200
        old_cert = peer_certificate(old_writer)

        new_cert = pki.issue(second_ca)
        assert replica.process is not None
        replica.process.send_signal(signal.SIGHUP)

        async def new_handshakes_get_the_new_certificate() -> bool:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", replica.proxy_port, ssl=context
            )
            try:
                assert await ready_over(reader, writer) == 200
                return peer_certificate(writer) == new_cert
            finally:
                writer.close()

        await wait_for(new_handshakes_get_the_new_certificate, timeout=10, interval=0.1)
        for _ in range(8):  # every worker, whichever takes the connection
            assert await new_handshakes_get_the_new_certificate()
        # The connection opened before the reload is still there, on the old certificate.
        assert await ready_over(old_reader, old_writer) == 200
        assert peer_certificate(old_writer) == old_cert

        # A broken file on the next SIGHUP is reported; the certificate in use stays.
        pki.cert.write_text("not a certificate\n")
        replica.process.send_signal(signal.SIGHUP)
        await wait_for(lambda: "TLS files not reloaded" in replica.logs(), timeout=10)
        assert await new_handshakes_get_the_new_certificate()
        assert replica.process.poll() is None
    finally:
        old_writer.close()


# -- bad files stop start-up --------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("proxy.tls.certificate", "missing"),
        ("proxy.tls.key", "missing"),
        ("proxy.tls.certificate", "not a certificate"),
        ("proxy.tls.certificate", "key of another certificate"),
        ("admin.tls.client_ca", "not a certificate"),
        ("proxy.upstream_ca", "missing"),
    ],
)
def test_bad_tls_file_stops_start_up_naming_the_setting(
    tmp_path: Path, setting: str, problem: str
) -> None:
    pki = Pki(tmp_path)
    env = {
        **pki.env(),
        "GATEWAY__PROXY__UPSTREAM": "https://127.0.0.1:9",
        "GATEWAY__PROXY__UPSTREAM_CA": str(tmp_path / "client-ca.pem"),
        # Unreachable on purpose: the files are checked before the database.
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
    }
    variable = "GATEWAY__" + setting.upper().replace(".", "__")
    if problem == "missing":
        env[variable] = str(tmp_path / "nowhere.pem")
    elif problem == "not a certificate":
        (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
        env[variable] = str(tmp_path / "junk.pem")
    else:
        other = trustme.CA().issue_cert("127.0.0.1")
        other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
        env["GATEWAY__PROXY__TLS__KEY"] = str(tmp_path / "other.key")
    result = subprocess.run(
        gateway_command("serve"),
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gateway: config error: {setting}: "), lines


def test_key_encrypted_with_a_passphrase_stops_start_up_without_a_prompt(
    tmp_path: Path,
) -> None:
    """Started from a terminal, OpenSSL would ask for the passphrase there and wait for
    ever (on SIGHUP, with the event loop): the gateway says it cannot use the key."""
    from cryptography.hazmat.primitives import serialization

    pki = Pki(tmp_path)
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    env = {
        **pki.env(),
        "GATEWAY__PROXY__UPSTREAM": "https://127.0.0.1:9",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    controller, terminal = os.openpty()
    try:
        # setsid -c: the terminal is the process's controlling one, as in a shell.
        process = subprocess.Popen(
            ["setsid", "-w", "-c", *gateway_command("serve")],
            env=env,
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError("start-up waited at a passphrase prompt") from None
    finally:
        os.close(terminal)
        os.close(controller)
    assert process.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: config error: proxy.tls.key: "), lines
    assert "passphrase" in lines[0]
