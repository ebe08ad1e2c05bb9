"""gateway.network: httpcore's connections on asyncio streams (issue 20), over TLS as every real
provider is reached, with keep-alive reuse, a streamed (chunked) answer, and httpx's exceptions
for a timeout and a refused connection."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.network import AsyncioBackend


def _certificate(folder) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


EVENTS = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]


async def _serve(reader, writer, connections: list[int]) -> None:
    connections.append(1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /slow "):
                await asyncio.sleep(5)
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for event in EVENTS:
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def test_tls_keep_alive_chunked_and_errors(tmp_path):
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=cert)

    async def main():
        connections: list[int] = []
        server = await asyncio.start_server(
            lambda r, w: _serve(r, w, connections), "127.0.0.1", 0, ssl=server_context
        )
        port = server.sockets[0].getsockname()[1]
        transport = httpx.AsyncHTTPTransport(verify=client_context, trust_env=False)
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=client_context, network_backend=AsyncioBackend()
        )
        async with httpx.AsyncClient(transport=transport, timeout=2) as client:
            for _ in range(2):  # the second request reuses the first's connection
                async with client.stream("GET", f"https://127.0.0.1:{port}/") as response:
                    parts = [part async for part in response.aiter_raw()]
                assert response.status_code == 200
                assert b"".join(parts) == b"".join(EVENTS)
                assert len(parts) >= len(EVENTS)  # relayed as they came
            assert len(connections) == 1
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"https://127.0.0.1:{port}/slow", timeout=0.2)
        server.close()
        await server.wait_closed()
        async with httpx.AsyncClient(transport=transport, timeout=2) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{port}/")

    asyncio.run(main())


def test_a_certificate_that_does_not_verify_is_refused(tmp_path):
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def main():
        server = await asyncio.start_server(
            lambda r, w: _serve(r, w, []), "127.0.0.1", 0, ssl=server_context
        )
        port = server.sockets[0].getsockname()[1]
        context = ssl.create_default_context()  # the system's CAs: ours is unknown
        transport = httpx.AsyncHTTPTransport(verify=context, trust_env=False)
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, network_backend=AsyncioBackend()
        )
        async with httpx.AsyncClient(transport=transport, timeout=2) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{port}/")
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_upstream_calls_share_one_pool_until_it_is_busy(monkeypatch):
    # Issue 20: light traffic stays on the first pool (its kept-alive connections reused); with
    # many streams open a call goes to the next pool with room, then to the least busy.
    from gateway import proxy

    busy: dict[int, int] = {}
    monkeypatch.setattr(proxy, "_in_flight", lambda transport: busy.get(id(transport), 0))

    async def main():
        first = proxy._transport()
        assert proxy._transport() is first
        shards = proxy._transports[asyncio.get_running_loop()]
        assert len(shards) == proxy.POOL_SHARDS and shards[0] is first
        busy[id(first)] = proxy.SHARD_REQUESTS
        assert proxy._transport() is shards[1]
        for i, transport in enumerate(shards):
            busy[id(transport)] = proxy.SHARD_REQUESTS + (0 if i == 7 else 5)
        assert proxy._transport() is shards[7]

    asyncio.run(main())
