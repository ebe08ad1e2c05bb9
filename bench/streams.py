"""Figure 8: concurrent streams (issue 20). N streamed chat completions held open for D seconds
at once through ONE uvicorn process, the provider's stand-in sending a chunk every 200 ms,
against N streams straight to the same stand-in, run just before in the same way (one path at a
time: the direct streams first, then the gateway's, each with the stand-in and the client
sharing the 2 cores with it).

The stand-in runs in its own process, started by this module (`python -m bench.streams standin`)
with its listen backlog and file limit raised, and with the time it built each event stamped in
the event (`"x_sent_at"`, wall clock); the client (asyncio, raw HTTP/1.1, chunked framing read by
hand so 2,000 streams cost it little) timestamps each event on arrival. Reported:

- added latency per chunk: p50/p99 of (arrival - sent) through the gateway minus the same
  percentiles straight to the stand-in;
- CPU per chunk of the uvicorn process (/proc/<pid>/stat): over the steady window (relaying
  only), and over the whole run (admission and metering included);
- RSS growth per open stream (/proc/<pid>/status VmRSS, idle after a warm-up vs the peak while
  all N are open);
- errors (a status other than 200, a stream without `data: [DONE]` or with chunks missing), and
  that every stream was metered exactly once (one GatewayRequest row per stream: each stream is
  its own customer);
- the database connections the process held while streaming (a stream must hold none: N
  streams are admitted through a pool of DATABASE_POOL_MAX_SIZE connections).

A provider is one entry of PROVIDERS (issue 18 adds BytePlus as a second one).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    BENCH_DB,
    PY,
    SERVER_PIDS,
    Figure,
    analyze,
    connect,
    encrypted_blob,
    free_port,
    log,
    pct,
    process_cpu_seconds,
    seed_tokens,
    seed_users,
    server_env,
    server_process,
    uvicorn,
)

STREAMS = 1_000  # per path (gateway, direct): the figure
HOLD_SECONDS = 20.0
CHUNK_INTERVAL_MS = 200
RAMP_SECONDS = 5.0  # the streams are opened evenly over this long (an agent fleet starting)
WARM_STREAMS = 20
TARGET_ADDED_P99_MS = 5.0
TARGET_RSS_PER_STREAM_KB = 64.0
STAMP = re.compile(rb'"x_sent_at": +([0-9.]+)')
MESSAGES = [{"role": "user", "content": "Stream me a long answer."}]


@dataclass(frozen=True)
class Provider:
    """What the figure needs to know of a provider: its stand-in module (with `main(argv)` and
    an `_sse(payload)` that builds each event), the URL setting the gateway reads, the model
    names, and the BYOK provider id."""

    key: str
    standin_module: str
    url_setting: str
    model: str  # as the gateway's callers name it
    upstream_model: str  # as the stand-in is called directly
    base_path: str = ""  # the API's base under the stand-in's root (the URL setting's path)
    # The stamped events after the content chunks: MiniMax puts the usage on the finishing
    # chunk (one); an OpenAI-style provider finishes, then sends the usage on its own (two).
    final_events: int = 1


PROVIDERS = [
    Provider(
        key="minimax",
        standin_module="standins.minimax",
        url_setting="MINIMAX_API_BASE_URL",
        model="minimax/MiniMax-M2",
        upstream_model="MiniMax-M2",
    ),
]
if importlib.util.find_spec("standins.byteplus") is not None:  # issue 18
    PROVIDERS.append(
        Provider(
            key="byteplus",
            standin_module="standins.byteplus",
            url_setting="BYTEPLUS_API_BASE_URL",
            model="byteplus/ark-code-latest",
            upstream_model="ark-code-latest",
            base_path="/api/coding/v3",
            final_events=2,
        )
    )


# -- the stand-in process ----------------------------------------------------------------------


MARK = "S" * 17  # the stamp's place in an event: f"{time:19.6f}" once quoted, same width


def _standin_main(argv: list[str]) -> None:
    """`python -m bench.streams standin <module> <port>`: the provider's stand-in, able to hold
    thousands of connections, each event stamped with the wall-clock time its bytes were
    handed to the socket (a placeholder the event is built with, overwritten at the write, so
    time a thread spends waiting for the GIL in between is not counted as delivery)."""
    import importlib
    import socketserver
    import threading

    module_name, port = argv[0], argv[1]
    # The stand-in is the upstream: in production a provider's fleet, here one process whose
    # 1,000 threads share one collector. A full collection of its heap (17-31 ms, seen with
    # gc.callbacks) stopped every stream at once; each thread then slept its 200 ms from the
    # same moment, so their chunks stayed bunched for seconds, and the bursts queued in the
    # gateway (a slower reader per chunk than the client) as thousands of late chunks. Its
    # collector stays off for the figure (the process lives for one provider's run).
    gc.collect()
    gc.freeze()
    gc.disable()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socketserver.TCPServer.request_queue_size = 4096  # the listen backlog (5 by default)
    threading.stack_size(256 * 1024)  # a thread per connection: thousands of them
    module = importlib.import_module(module_name)
    mark = b'"' + MARK.encode() + b'"'

    def marking(original):
        def marked(payload: Any) -> bytes:
            if isinstance(payload, dict):
                payload = {**payload, "x_sent_at": MARK}
            return original(payload)

        return marked

    class StampingWriter:
        def __init__(self, raw) -> None:
            self._raw = raw

        def write(self, data: bytes) -> int:
            if mark in data:
                data = data.replace(mark, b"%19.6f" % time.time())
            return self._raw.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._raw, name)

    original_setup = socketserver.StreamRequestHandler.setup

    def setup(handler) -> None:
        original_setup(handler)
        handler.wfile = StampingWriter(handler.wfile)

    # The provider's stand-in builds its events with `_sse`, its own or one it shares with
    # another stand-in (a subclassed handler): mark them all; and a server class of theirs
    # may set its own backlog.
    for loaded in [m for name, m in sys.modules.items() if name.startswith("standins.")]:
        if callable(getattr(loaded, "_sse", None)):
            loaded._sse = marking(loaded._sse)
        for value in vars(loaded).values():
            if isinstance(value, type) and issubclass(value, socketserver.TCPServer):
                value.request_queue_size = 4096
    socketserver.StreamRequestHandler.setup = setup
    module.main(["--port", port])


# -- the client --------------------------------------------------------------------------------


@dataclass
class PathResult:
    delays: list[float] = field(default_factory=list)  # arrival - sent, seconds, every event
    steady: list[float] = field(default_factory=list)  # those sent while all streams were open
    events: int = 0
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _one_stream(
    host: str,
    port: int,
    path: str,
    secret: str,
    model: str,
    expected_events: int,
    result: PathResult,
    steady: list[float],
) -> None:
    body = json.dumps(
        {
            "model": model,
            "messages": MESSAGES,
            "max_tokens": 4096,
            "stream": True,
            "stream_options": {"include_usage": True},  # an OpenAI-style provider's usage
        }
    ).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            result.error(f"http {status}")
            return
        if b"transfer-encoding: chunked" not in head.lower():
            result.error("not chunked")
            return
        events = 0
        done = False
        while True:
            size = int((await reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            arrived = time.time()
            for match in STAMP.finditer(data):
                sent = float(match.group(1))
                delay = arrived - sent
                result.delays.append(delay)
                if steady[0] <= sent <= steady[1]:
                    result.steady.append(delay)
                events += 1
            if b"data: [DONE]" in data:
                done = True
        result.events += events
        if not done:
            result.error("no [DONE]")
        elif events != expected_events:
            result.error("chunks missing" if events < expected_events else "extra chunks")
        else:
            result.completed += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        result.error(type(exc).__name__)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.contextmanager
def _instrument_without_collector():
    """This process is the measuring instrument: its arrival stamps are the latencies. It holds
    Django, the bench and thousands of streams' state, and a full collection of that heap
    stopped its event loop for 66-104 ms, two or three times per path (seen with gc.callbacks),
    stamping every chunk that arrived meanwhile late, on whichever path ran then: noise of
    the client's own, on the direct path as often as on the gateway's. Both paths are read
    with the collector frozen and off; it runs again after each."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def _run_streams(
    plan: list[tuple[str, str, int, str, str, str]],
    expected_events: int,
    ramp: float,
    hold: float,
    on_steady,
) -> dict[str, PathResult]:
    """Open every stream of `plan` ((path name, host, port, url path, secret, model)) evenly
    over `ramp` seconds; `on_steady()` is called once all are open (and again just before the
    first ones end) to sample the server."""
    results = {name: PathResult() for name in {p[0] for p in plan}}
    t0 = time.time()
    # Events sent in [all open + 1 s, first close - 1 s] are the steady window.
    steady = [t0 + ramp + 1.0, t0 + hold - 1.0]

    async def start(i: int, entry) -> None:
        await asyncio.sleep(i * ramp / len(plan))
        name, host, port, path, secret, model = entry
        await _one_stream(host, port, path, secret, model, expected_events, results[name], steady)

    async def sampler() -> None:
        await asyncio.sleep(max(0.0, steady[0] - time.time()))
        on_steady("start")
        await asyncio.sleep(max(0.0, steady[1] - time.time()))
        on_steady("end")

    sampling = asyncio.ensure_future(sampler())
    await asyncio.gather(*(start(i, entry) for i, entry in enumerate(plan)))
    await sampling
    return results


# -- the uvicorn process, from /proc -----------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def _rss_kb(pid: int) -> int:
    return int(_status(pid)["VmRSS"].split()[0])


def _threads(pid: int) -> int:
    return int(_status(pid)["Threads"].strip())


def _nofile(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return "/".join(line.split()[3:5])
    return "?"


def _db_connections() -> int:
    """Connections to the benchmark database other than this process's own."""
    with connect(autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (BENCH_DB,),
        ).fetchone()[0]


# -- the figure --------------------------------------------------------------------------------


def _seed(provider: Provider, n: int) -> tuple[list[int], list[str], list[str]]:
    """n customers, each with a personal token and a BYOK entry for the provider: one stream
    each, so "metered once" is one row per customer."""
    tag = f"streams-{provider.key}"
    keys = [f"sk-bench-stream-{i:05d}" for i in range(n)]
    with connect() as conn:
        users = seed_users(conn, tag, n)
        tokens = seed_tokens(conn, users, tag)
        blob = encrypted_blob(keys[0])  # the stand-in accepts any key; one ciphertext will do
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO byok_byokkey (provider_id, encrypted_key, key_hint, enabled,
                   created_at, updated_at, user_id) VALUES (%s, %s, %s, true, now(), now(), %s)""",
                [(provider.key, blob, keys[0][-4:], uid) for uid in users],
            )
    analyze("byok_byokkey", "accounts_apitoken", "accounts_user")
    return users, tokens, keys


def _metered(users: list[int]) -> dict[int, int]:
    """Streamed GatewayRequest rows per customer of `users`."""
    with connect(autocommit=True) as conn:
        rows = conn.execute(
            """SELECT user_id, count(*) FROM gateway_gatewayrequest
               WHERE user_id = ANY(%s) AND streamed GROUP BY user_id""",
            (users,),
        ).fetchall()
    return dict(rows)


def _configure(url: str, chunks: int, delay_ms: int) -> None:
    response = httpx.post(
        f"{url}/_standin/config",
        json={"stream_chunks": chunks, "stream_chunk_delay_ms": delay_ms},
        trust_env=False,
    )
    response.raise_for_status()


def _run_provider(provider: Provider, n: int, hold: float, ramp: float) -> Figure:
    chunks = max(1, round(hold * 1000 / CHUNK_INTERVAL_MS))
    # the content chunks and the final chunk(s), each stamped
    expected_events = chunks + provider.final_events
    users, tokens, keys = _seed(provider, n + WARM_STREAMS)
    warm_users, users = users[:WARM_STREAMS], users[WARM_STREAMS:]
    warm_tokens, tokens = tokens[:WARM_STREAMS], tokens[WARM_STREAMS:]
    standin_port, web_port = free_port(), free_port()
    argv = [PY, "-m", "bench.streams", "standin", provider.standin_module, str(standin_port)]
    with server_process(argv, standin_port, server_env()) as upstream_url:
        env = server_env(
            **{provider.url_setting: upstream_url + provider.base_path, "CONN_MAX_AGE": "0"}
        )
        with uvicorn(web_port, env):
            pid = SERVER_PIDS[web_port]
            pool = int(env.get("DATABASE_POOL_MAX_SIZE", "20"))
            gateway_path = "/api/v1/gateway/chat/completions"
            direct_path = (provider.base_path or "/v1") + "/chat/completions"
            # Warm up: a few short streams through both paths (imports, caches, connections).
            _configure(upstream_url, 3, 10)
            warm = [
                ("gateway", "127.0.0.1", web_port, gateway_path, t, provider.model)
                for t in warm_tokens
            ]
            warm += [
                ("direct", "127.0.0.1", standin_port, direct_path, keys[0], provider.upstream_model)
            ] * 4
            warmed = asyncio.run(
                _run_streams(warm, 3 + provider.final_events, 0.5, 1.0, lambda _: None)
            )
            if any(r.errors for r in warmed.values()):
                raise RuntimeError(f"warm-up streams failed: {[r.errors for r in warmed.values()]}")
            time.sleep(1.0)
            _configure(upstream_url, chunks, CHUNK_INTERVAL_MS)
            # The two paths one after the other, through the same stand-in: the direct streams
            # measure what the stand-in and this client add at this many streams (the floor),
            # the gateway's the same plus the gateway. At once, the two would double the
            # stand-in's thousands of threads and starve the 2-core machine.
            direct_plan = [
                ("direct", "127.0.0.1", standin_port, direct_path, keys[i], provider.upstream_model)
                for i in range(n)
            ]
            gateway_plan = [
                ("gateway", "127.0.0.1", web_port, gateway_path, tokens[i], provider.model)
                for i in range(n)
            ]
            log(
                f"streams {provider.key}: {n} direct, then {n} via the gateway, {hold:g} s each "
                f"({chunks} chunks at {CHUNK_INTERVAL_MS} ms), opened over {ramp:g} s"
            )
            standin_pid = SERVER_PIDS[standin_port]
            standin_cpu_start = process_cpu_seconds(standin_pid)
            with _instrument_without_collector():
                results = asyncio.run(
                    _run_streams(direct_plan, expected_events, ramp, hold, lambda _: None)
                )
            direct_standin_cpu = process_cpu_seconds(standin_pid) - standin_cpu_start
            time.sleep(1.0)
            rss_idle = _rss_kb(pid)
            cpu_start = process_cpu_seconds(pid)
            standin_cpu_start, client_cpu_start = (
                process_cpu_seconds(standin_pid),
                time.process_time(),
            )
            samples: dict[str, dict[str, Any]] = {}

            profile = os.environ.get("BENCH_STREAMS_PYSPY")  # a file: py-spy's collapsed stacks

            def on_steady(moment: str) -> None:
                if profile and moment == "start":
                    import subprocess

                    subprocess.Popen(
                        [
                            str(Path(PY).parent / "py-spy"),
                            "record",
                            "-p",
                            str(pid),
                            "-r",
                            "200",
                            "-d",
                            str(max(1, int(hold - ramp - 3))),
                            "-f",
                            "raw",
                            "-o",
                            profile,
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                samples[moment] = {
                    "cpu": process_cpu_seconds(pid),
                    "rss_kb": _rss_kb(pid),
                    "threads": _threads(pid),
                    "db_connections": _db_connections(),
                    "at": time.time(),
                }

            started = time.monotonic()
            with _instrument_without_collector():
                results.update(
                    asyncio.run(_run_streams(gateway_plan, expected_events, ramp, hold, on_steady))
                )
            wall = time.monotonic() - started
            cpu_total = process_cpu_seconds(pid) - cpu_start
            standin_cpu = process_cpu_seconds(standin_pid) - standin_cpu_start
            client_cpu = time.process_time() - client_cpu_start
            rss_end = _rss_kb(pid)
            nofile = _nofile(pid)
            # Metering happens after each stream's last byte: give the last ones a moment.
            metered: dict[int, int] = {}
            for _ in range(20):
                metered = _metered(users)
                if len(metered) >= results["gateway"].completed:
                    break
                time.sleep(0.5)
            time.sleep(0.5)
            metered = _metered(users)
            warm_metered = _metered(warm_users)

    gateway, direct = results["gateway"], results["direct"]

    def q(values: list[float], p: float) -> float:
        return pct(values, p) * 1000

    steady_chunks = len(gateway.steady)
    start, end = samples.get("start", {}), samples.get("end", {})
    window = (end.get("at", 0) - start.get("at", 0)) or 1
    # Chunks relayed in the steady window: every open stream sends one per interval.
    relayed_in_window = n * window * 1000 / CHUNK_INTERVAL_MS
    cpu_relay_us = (end.get("cpu", 0) - start.get("cpu", 0)) / relayed_in_window * 1e6
    cpu_all_us = cpu_total / max(gateway.events, 1) * 1e6
    rss_peak = max(start.get("rss_kb", 0), end.get("rss_kb", 0))
    rss_per_stream = (rss_peak - rss_idle) / n
    added_p50 = q(gateway.delays, 50) - q(direct.delays, 50)
    added_p99 = q(gateway.delays, 99) - q(direct.delays, 99)
    steady_p99 = q(gateway.steady, 99) - q(direct.steady, 99)
    errors = sum(gateway.errors.values()) + sum(direct.errors.values())
    once = sum(1 for c in metered.values() if c == 1)
    twice = sum(1 for c in metered.values() if c > 1)
    metered_ok = once == n and twice == 0 and all(c == 1 for c in warm_metered.values())
    met = (
        added_p99 <= TARGET_ADDED_P99_MS
        and rss_per_stream <= TARGET_RSS_PER_STREAM_KB
        and errors == 0
        and metered_ok
    )
    details = {
        "streams_per_path": n,
        "hold_s": hold,
        "chunk_interval_ms": CHUNK_INTERVAL_MS,
        "ramp_s": ramp,
        "wall_s": round(wall, 1),
        "gateway": {
            "events": gateway.events,
            "completed": gateway.completed,
            "errors": gateway.errors,
            "p50_ms": round(q(gateway.delays, 50), 2),
            "p99_ms": round(q(gateway.delays, 99), 2),
            "max_ms": round(q(gateway.delays, 100), 2),
            "steady_p50_ms": round(q(gateway.steady, 50), 2),
            "steady_p99_ms": round(q(gateway.steady, 99), 2),
        },
        "direct": {
            "events": direct.events,
            "completed": direct.completed,
            "errors": direct.errors,
            "p50_ms": round(q(direct.delays, 50), 2),
            "p99_ms": round(q(direct.delays, 99), 2),
            "max_ms": round(q(direct.delays, 100), 2),
            "steady_p50_ms": round(q(direct.steady, 50), 2),
            "steady_p99_ms": round(q(direct.steady, 99), 2),
        },
        "added_p50_ms": round(added_p50, 2),
        "added_p99_ms": round(added_p99, 2),
        "steady_added_p99_ms": round(steady_p99, 2),
        "steady_events": steady_chunks,
        "cpu_us_per_chunk_relaying": round(cpu_relay_us, 1),
        "cpu_us_per_chunk_all": round(cpu_all_us, 1),
        "cpu_s_total": round(cpu_total, 2),
        "standin_cpu_s": round(standin_cpu, 2),
        "client_cpu_s": round(client_cpu, 2),
        "standin_cpu_s_direct_phase": round(direct_standin_cpu, 2),
        "rss_idle_kb": rss_idle,
        "rss_open_kb": rss_peak,
        "rss_end_kb": rss_end,
        "rss_kb_per_stream": round(rss_per_stream, 1),
        "threads_while_open": start.get("threads"),
        "db_connections_while_open": start.get("db_connections"),
        "db_pool_max_size": pool,
        "nofile_limit": nofile,
        "metered_once": once,
        "metered_more_than_once": twice,
        "not_metered": n - once - twice,
    }
    log(f"streams {provider.key}: {details}")
    return Figure(
        key=f"streams.{provider.key}",
        name=f"8. {n:,} streams x {hold:g} s ({provider.key})",
        measured=(
            f"p50 {q(gateway.delays, 50):.1f} / p99 {q(gateway.delays, 99):.1f} ms per chunk, "
            f"{cpu_relay_us:.0f} us CPU/chunk, {rss_per_stream:.0f} KB/stream, "
            f"{errors} errors, {once}/{n} metered once"
        ),
        baseline=(f"direct p50 {q(direct.delays, 50):.1f} / p99 {q(direct.delays, 99):.1f} ms"),
        value=(f"+{added_p50:.1f} ms p50, +{added_p99:.1f} ms p99; {rss_per_stream:.0f} KB/stream"),
        target=(
            f"added p99 <= {TARGET_ADDED_P99_MS:g} ms, <= {TARGET_RSS_PER_STREAM_KB:g} "
            "KB/stream, no error, metered once"
        ),
        met=met,
        details=details,
    )


def run(scale: float, standin=None) -> list[Figure]:
    n = max(50, int(os.environ.get("BENCH_STREAMS", STREAMS * min(scale, 1.0))))
    hold = float(os.environ.get("BENCH_STREAM_SECONDS", max(4.0, HOLD_SECONDS * min(scale, 1.0))))
    ramp = min(RAMP_SECONDS, hold / 4)
    # Room for the client's 2n sockets (and the servers', which inherit the limit).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 4 * n + 256:
        log(f"streams: the file limit ({hard}) is low for {n} streams per path")
    figures = [_run_provider(p, n, hold, ramp) for p in PROVIDERS]
    figures[0].notes.append(
        f"streams: {n} straight to the stand-in, then {n} via one uvicorn process, "
        f"{hold:g} s each, a chunk every {CHUNK_INTERVAL_MS} ms, opened over {ramp:g} s; "
        "per-chunk latency is arrival minus the stand-in's send stamp; CPU from /proc over the "
        "window all streams were open; RSS idle (after a warm-up) vs all open; the "
        "client's and the stand-in's collectors are off while the streams run (their pauses "
        "are not the gateway's; the gateway runs with its own, codingplans.collector)"
    )
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["standin"]:
        _standin_main(sys.argv[2:])
