"""`make bench`: set up a fresh benchmark database, run every figure, print the table and write
bench/results.json.

Runs inside `codingplans.devenv` (embedded PostgreSQL + Redis, or DATABASE_URL / REDIS_URL).
The benchmark database (`codingplans_bench`, or BENCH_DATABASE_NAME) is dropped and created
afresh on the same server, so concurrent test runs on their own databases are left alone.
Everything listens on loopback only; MiniMax is the stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

FIGURES = ("pages", "purchase", "http", "upload", "gateway", "streams", "sweep", "scaleout")
# Rough seconds each figure needs at least, for the time budget (the sweep and the scale-out
# size themselves to what is left of it).
ESTIMATES = {
    "pages": 25,
    "purchase": 40,
    "http": 40,
    "upload": 30,
    "gateway": 40,
    # Per provider ~60 s: two 20 s holds (direct, gateway), the ramps, the servers.
    "streams": 130,
    "sweep": 60,
    "scaleout": 40,
}
RESULTS = Path(__file__).resolve().parent / "results.json"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help=f"comma-separated figures to run ({', '.join(FIGURES)})"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE", "1")),
        help="multiply the data sizes (1 = the issue's sizes; BENCH_SCALE)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=float(os.environ.get("BENCH_BUDGET_SECONDS", "540")),
        help="skip figures that would not finish within this many seconds in total",
    )
    parser.add_argument("--keep-db", action="store_true", help="leave the benchmark database")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile each figure in this process with pyinstrument (.local/bench-profile-*.txt)",
    )
    parser.add_argument("--output", default=str(RESULTS))
    return parser.parse_args(argv)


def _setup() -> tuple[str, str]:
    """Point Django at a fresh benchmark database and migrate it. Returns (server URL, bench
    URL)."""
    from bench.common import BENCH_DB, log, recreate_database, server_url

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codingplans.settings")
    os.environ["PURCHASE_RATE_LIMIT_PER_MINUTE"] = "1000000"
    os.environ["GATEWAY_RATE_LIMIT_PER_MINUTE"] = "1000000"
    os.environ["GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE"] = "1000000"
    base = server_url()
    bench_url = recreate_database(base, BENCH_DB)
    os.environ["DATABASE_URL"] = bench_url

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    # Measure the code, not Django's debug query log (the servers run with DEBUG off too).
    if settings.DATABASES["default"]["NAME"] != BENCH_DB:
        raise SystemExit("bench: settings were loaded before the benchmark database was set")
    settings.DEBUG = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    started = time.perf_counter()
    call_command("migrate", interactive=False, verbosity=0)
    log(f"database {BENCH_DB} created and migrated in {time.perf_counter() - started:.1f} s")
    return base, bench_url


def _table(figures, elapsed: float, scale: float) -> str:
    headers = ("figure", "measured", "baseline", "ratio/value", "target", "met")
    rows = [
        (
            f.name,
            f.measured,
            f.baseline,
            f.value,
            f.target,
            "-" if f.met is None else ("yes" if f.met else "NO"),
        )
        for f in figures
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        line,
        *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows),
        line,
    ]
    judged = [f for f in figures if f.met is not None]
    out.append(
        f"{sum(1 for f in judged if f.met)} of {len(judged)} targets met; "
        f"total {elapsed:.0f} s; scale {scale:g}"
    )
    notes = [(f.name.split(" ", 1)[0], n) for f in figures for n in f.notes]
    if notes:
        out.append("")
        out.extend(f"{key} {note}" for key, note in notes)
    return "\n".join(out)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    wanted = [f.strip() for f in args.only.split(",") if f.strip()] or list(FIGURES)
    unknown = set(wanted) - set(FIGURES)
    if unknown:
        print(f"unknown figures: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    from bench.common import SHARED

    SHARED["deadline"] = time.monotonic() + args.budget
    base, _ = _setup()

    from django.conf import settings

    from bench.common import BENCH_DB, ROOT, Figure, drop_database, log, settle
    from bench.fixes import FIXES
    from standins.minimax import StandinServer

    standin = StandinServer().start()
    settings.MINIMAX_API_BASE_URL = standin.url
    os.environ["MINIMAX_API_BASE_URL"] = standin.url

    import importlib

    figures: list[Figure] = []
    failed = False
    try:
        for name in wanted:
            elapsed = time.perf_counter() - t0
            estimate = ESTIMATES[name] * max(args.scale, 0.2)
            if elapsed + estimate > args.budget:
                log(f"skipping {name}: {elapsed:.0f} s spent, ~{estimate:.0f} s more")
                figures.append(
                    Figure(key=name, name=name, measured="not run (time budget)", met=False)
                )
                continue
            log(f"--- {name} (database settled in {settle():.1f} s)")
            started = time.perf_counter()
            module = importlib.import_module(f"bench.{name}")
            profiler = None
            if args.profile:
                from pyinstrument import Profiler

                profiler = Profiler()
                profiler.start()
            try:
                result = module.run(args.scale, standin)
            except Exception as exc:
                failed = True
                traceback.print_exc()
                result = Figure(
                    key=name, name=name, measured=f"failed: {type(exc).__name__}: {exc}", met=False
                )
            if profiler is not None:
                profiler.stop()
                out = ROOT / ".local" / f"bench-profile-{name}.txt"
                out.write_text(profiler.output_text(unicode=False, color=False))
                log(f"profile of {name} in {out}")
            for figure in result if isinstance(result, list) else [result]:
                figure.details.setdefault("seconds", round(time.perf_counter() - started, 1))
                figures.append(figure)
            log(f"{name} took {time.perf_counter() - started:.0f} s")
    finally:
        standin.stop()
        from django.db import connections

        connections.close_all()
        if not args.keep_db:
            drop_database(base, BENCH_DB)

    elapsed = time.perf_counter() - t0
    table = _table(figures, elapsed, args.scale)
    fixes = "\n".join(
        ["", "Fixes made for missed targets (before -> after, measured while fixing):"]
        + [f"- {f['figure']}: {f['change']}\n  {f['before']} -> {f['after']}" for f in FIXES]
    )
    print(table + "\n" + fixes, flush=True)
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "make bench",
        "scale": args.scale,
        "total_seconds": round(elapsed, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "figures": [f.as_json() for f in figures],
        "fixes": FIXES,
        "table": table.splitlines(),
    }
    Path(args.output).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    log(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
