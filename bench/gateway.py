"""Figure 6: the gateway (uvicorn, ASGI) vs calling the stand-in MiniMax directly, non-streaming
and streaming: requests/s with client threads, and the latency the gateway adds (p50/p99 of
one client at a time, gateway minus direct)."""

from __future__ import annotations

import json
import os
import subprocess

import httpx

from bench.common import (
    BIN,
    PY,
    SERVER_PIDS,
    Figure,
    analyze,
    connect,
    drive,
    encrypted_blob,
    free_port,
    log,
    pct,
    refresh_tokens,
    seed_tokens,
    seed_users,
    server_env,
    server_process,
    uvicorn,
)

USERS = 8
LATENCY_REQUESTS = 150
THROUGHPUT_THREADS = 8
THROUGHPUT_SECONDS = 4.0
TARGET_ADDED_P50_MS = 2.0  # issue 20 (was 5 ms)
TARGET_ADDED_P99_MS = 5.0
MESSAGES = [{"role": "user", "content": "Write a haiku about row locks."}]


def _client() -> httpx.Client:
    return httpx.Client(timeout=30, trust_env=False)


def _seed() -> tuple[list[str], list[str]]:
    """USERS customers, each with a personal token and a MiniMax BYOK entry."""
    keys = [f"sk-bench-gateway-{i:04d}" for i in range(USERS)]
    with connect() as conn:
        users = seed_users(conn, "gateway", USERS)
        tokens = seed_tokens(conn, users, "gateway")
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO byok_byokkey (provider_id, encrypted_key, key_hint, enabled,
                   created_at, updated_at, user_id) VALUES ('minimax', %s, %s, true, now(),
                   now(), %s)""",
                [
                    (encrypted_blob(key), key[-4:], uid)
                    for key, uid in zip(keys, users, strict=True)
                ],
            )
    analyze("byok_byokkey", "accounts_apitoken")
    return tokens, keys


def _requester(url: str, secrets: list[str], *, stream: bool, model: str):
    def call(client: httpx.Client, i: int) -> int:
        body = {"model": model, "messages": MESSAGES, "max_tokens": 64}
        headers = {"Authorization": f"Bearer {secrets[i % len(secrets)]}"}
        if not stream:
            response = client.post(url, json=body, headers=headers)
            if response.status_code == 200:
                json.loads(response.content)
            return response.status_code
        body["stream"] = True
        with client.stream("POST", url, json=body, headers=headers) as response:
            data = response.read()
        if response.status_code == 200 and not data.rstrip().endswith(b"data: [DONE]"):
            return 599  # a stream that did not finish
        return response.status_code

    return call


def run(scale: float, standin=None) -> list[Figure]:
    tokens, keys = _seed()
    standin_port, web_port = free_port(), free_port()
    standin_argv = [PY, "-m", "standins.minimax", "--port", str(standin_port)]
    results: dict[str, dict] = {}
    requests = max(50, int(LATENCY_REQUESTS * min(1.0, scale * 2)))
    with server_process(standin_argv, standin_port, server_env()) as upstream_url:
        env = server_env(MINIMAX_API_BASE_URL=upstream_url, CONN_MAX_AGE="0")
        with uvicorn(web_port, env) as web:
            direct_url = f"{upstream_url}/v1/chat/completions"
            gateway_url = f"{web}/api/v1/gateway/chat/completions"
            modes = {}
            for stream in (False, True):
                kind = "streaming" if stream else "non-streaming"
                modes[kind] = {
                    "direct": _requester(direct_url, keys, stream=stream, model="MiniMax-M2"),
                    "gateway": _requester(
                        gateway_url, tokens, stream=stream, model="minimax/MiniMax-M2"
                    ),
                }
            # Warm both paths (imports, connections, the token and key caches of a first call).
            for calls in modes.values():
                for call in calls.values():
                    drive(call, threads=2, count=20, make_client=_client)
            with connect(autocommit=True) as conn:
                refresh_tokens(conn, "gateway")
            profile = os.environ.get("BENCH_GATEWAY_PYSPY")  # a file: py-spy's collapsed stacks
            if profile:  # the uvicorn process while one client calls the gateway in a loop
                spy = subprocess.Popen(
                    [
                        str(BIN / "py-spy"),
                        "record",
                        "-p",
                        str(SERVER_PIDS[web_port]),
                        "-r",
                        "500",
                        "-d",
                        "8",
                        "-f",
                        "raw",
                        "-o",
                        profile,
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                drive(modes["non-streaming"]["gateway"], threads=1, duration=9, make_client=_client)
                spy.wait()
            for kind, calls in modes.items():
                entry: dict[str, dict] = {}
                # Latency: one request at a time, the two paths interleaved in two halves.
                lat: dict[str, list[float]] = {"direct": [], "gateway": []}
                errors = {"direct": 0, "gateway": 0}
                for _ in range(2):
                    for path, call in calls.items():
                        load = drive(call, threads=1, count=requests // 2, make_client=_client)
                        lat[path] += load.latencies
                        errors[path] += load.errors
                for path, call in calls.items():
                    load = drive(
                        call,
                        threads=THROUGHPUT_THREADS,
                        duration=THROUGHPUT_SECONDS,
                        make_client=_client,
                    )
                    entry[path] = {
                        "p50_ms": round(pct(lat[path], 50) * 1000, 2),
                        "p99_ms": round(pct(lat[path], 99) * 1000, 2),
                        "latency_requests": len(lat[path]),
                        "latency_errors": errors[path],
                        "throughput": load.summary(),
                    }
                results[kind] = entry
                log(f"gateway {kind}: {entry}")
    figures = []
    for letter, (kind, entry) in zip("ab", results.items(), strict=True):
        direct, gateway = entry["direct"], entry["gateway"]
        added_p50 = gateway["p50_ms"] - direct["p50_ms"]
        added_p99 = gateway["p99_ms"] - direct["p99_ms"]
        errors = (
            direct["latency_errors"]
            + gateway["latency_errors"]
            + direct["throughput"]["errors"]
            + gateway["throughput"]["errors"]
        )
        figures.append(
            Figure(
                key=f"gateway.{kind}",
                name=f"6{letter}. Gateway {kind} (uvicorn)",
                measured=(
                    f"{gateway['throughput']['rate_per_s']:.0f} req/s, p50 "
                    f"{gateway['p50_ms']:.1f} / p99 {gateway['p99_ms']:.1f} ms"
                ),
                baseline=(
                    f"direct {direct['throughput']['rate_per_s']:.0f} req/s, p50 "
                    f"{direct['p50_ms']:.1f} / p99 {direct['p99_ms']:.1f} ms"
                ),
                value=f"+{added_p50:.1f} ms p50, +{added_p99:.1f} ms p99",
                target=(
                    f"added p50 <= {TARGET_ADDED_P50_MS:g} ms, p99 <= {TARGET_ADDED_P99_MS:g} ms"
                ),
                met=(
                    added_p50 <= TARGET_ADDED_P50_MS
                    and added_p99 <= TARGET_ADDED_P99_MS
                    and errors == 0
                ),
                details={
                    **entry,
                    "added_p50_ms": round(added_p50, 2),
                    "added_p99_ms": round(added_p99, 2),
                    "throughput_ratio": round(
                        gateway["throughput"]["rate_per_s"]
                        / max(direct["throughput"]["rate_per_s"], 0.001),
                        3,
                    ),
                    "errors": errors,
                },
            )
        )
    figures[0].notes.append(
        f"gateway: latency from {requests} sequential requests per path; req/s from "
        f"{THROUGHPUT_THREADS} client threads for {THROUGHPUT_SECONDS:g} s; one uvicorn process "
        "(DEBUG off, CONN_MAX_AGE=0 as Django advises under ASGI); stand-in in its own process"
    )
    return figures
