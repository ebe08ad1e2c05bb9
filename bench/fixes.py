"""Fixes made where a figure missed its target, with the before/after measured while making them
(2 cores shared with other work, so the absolute numbers are noisy; each pair was measured
back to back). Printed under the table and written to results.json."""

from __future__ import annotations

FIXES = [
    {
        "figure": "1. purchase",
        "cause": (
            "check_low_stock, run after every purchase commits, took the plan's single "
            "LowStockAlert row lock and counted every available credential of the plan "
            "(O(stock)) inside it, so concurrent purchases queued on one row"
        ),
        "change": (
            "inventory/alerts.py: count available credentials only up to the threshold "
            "(exact below it), and settle the common case (at/above threshold, no alert armed) "
            "without the transaction and lock; subscriptions/purchase.py: the purchase passes "
            "the id of the BYOK entry it just created to subscription_json instead of "
            "querying it back"
        ),
        "before": "43-45 purchases/s (8 workers), 14.3 ms client CPU per purchase, ratio 0.06-0.07",
        "after": "66-67 purchases/s, 11.7 ms client CPU per purchase, ratio 0.09-0.10",
    },
    {
        "figure": "4. upload, 6. gateway baseline",
        "cause": (
            "the stand-in MiniMax server wrote headers and body as two TCP writes with Nagle "
            "on, so every keep-alive response waited ~40 ms for the client's delayed ACK"
        ),
        "change": "standins/minimax.py: TCP_NODELAY (disable_nagle_algorithm = True)",
        "before": (
            "direct stand-in call p50 47 ms; upload of 250 credentials at 200 ms x10: "
            "6.9 s for an ideal 5 s (x1.38)"
        ),
        "after": (
            "direct stand-in call p50 0.8-2.1 ms; upload x1.11 (250) and x1.04 (1,000 "
            "credentials, 20.7 s for an ideal 20 s)"
        ),
    },
    {
        "figure": "6. gateway, 7. web under ASGI",
        "cause": (
            "Django keeps cache objects per asyncio context, so under ASGI (uvicorn) every "
            "request built a new Redis connection pool and opened a new TCP connection to "
            "Redis for its rate-limit check"
        ),
        "change": (
            "codingplans/cache.py SharedPoolRedisCache (one redis-py pool per process) as "
            "the default cache backend in codingplans/settings.py"
        ),
        "before": "205 Redis connections opened for 206 gateway requests; p50 25.5 ms",
        "after": "0 Redis connections opened for 235 requests; p50 22.8 ms",
    },
    {
        "figure": "6. gateway",
        "cause": (
            "profiled with py-spy on the uvicorn process and timed per phase: a new database "
            "connection per request (CONN_MAX_AGE=0 under ASGI), auth, rate limit and route "
            "lookup as three thread hops with two ORM queries and two Redis round trips, a new "
            "httpx client (new TCP connection) per call, usage written before answering, and "
            "a synchronous middleware stack making about a dozen thread hops per request"
        ),
        "change": (
            "psycopg pool for the ASGI process (DATABASE_POOL_MAX_SIZE, default 20 there); "
            "gateway/views.py: one hop and one query for token + key (services.bearer_caller), "
            "one pipelined Redis round trip per rate-limit hit (codingplans/cache.py), one "
            "httpx client per event loop, usage recorded in the response's close() after the "
            "last byte; codingplans/middleware.py: dual-mode middleware and a fast path that "
            "applies security, session, frame and CSP handling in-line for the gateway route; "
            "uvicorn[standard] (uvloop, httptools)"
        ),
        "before": "+16.0 ms p50 non-streaming, +16.0 ms streaming; 80 req/s",
        "after": "+4.8 ms p50 non-streaming, +5.2 ms streaming; 176 req/s (this session's runs)",
    },
    {
        "figure": "2. sweep",
        "cause": (
            "pyinstrument on a serial sweep: ≈0.4 ms of ORM query building per statement "
            "against ≈0.1 ms to run it; a savepoint pair around every debit"
        ),
        "change": (
            "codingplans/sql.py: lean single-row INSERT/UPDATE/SELECT built once per model "
            "from its metadata and run prepared with server-side parameters on Django's "
            "connection; billing.post_entry debits and writes its ledger entry in one statement "
            "and leaves the transaction usable when short (no savepoint); the renewal's locks, "
            "term, period update and audit event use those statements"
        ),
        "before": "171 renewals/s vs 676/s raw SQL, ratio 0.25, 4.0 ms client CPU per renewal",
        "after": "396 renewals/s vs 723/s raw SQL, ratio 0.55, 1.19 ms client CPU per renewal",
    },
    {
        "figure": "1. purchase",
        "cause": "the same ORM query-building cost, over 26 statements per purchase",
        "change": (
            "subscriptions/purchase.py on the lean statements: one query for the refusal checks "
            "after the account lock, a one-statement SKIP LOCKED claim, ON CONFLICT for the "
            "installed entry instead of a savepoint, the debit naming its subscription (no "
            "follow-up UPDATE), one query for the low-stock fast path; the bench reads the "
            "buyers' User rows before the clock starts, as the raw side starts from ids"
        ),
        "before": "75 purchases/s vs 813/s raw SQL, ratio 0.09, 12.9 ms client CPU per purchase",
        "after": "335 purchases/s vs 928/s raw SQL, ratio 0.36, 2.4 ms client CPU per purchase",
    },
    {
        "figure": "1. purchase, 2. sweep",
        "cause": (
            "cProfile: 2.4 ms client CPU over 16 round trips per purchase; per-statement "
            "server CPU from /proc/<backend>/schedstat: the service's statements cost 2-4x the "
            "same statements prepared, because Django's prepare_threshold=None makes psycopg "
            "ignore prepare=True (nothing was prepared); server CPU per purchase 2.6 ms vs "
            "1.1 ms raw"
        ),
        "change": (
            "codingplans/sql.py sets prepare_threshold=1, so a lean statement is prepared "
            "the second time a connection runs it (the ORM's client-side-bound queries never "
            "are); purchase_plan in four statements: "
            "account lock (replacing the idempotency advisory lock), one read of the stored "
            "outcome + refusal checks + new ids, the claim, one activation statement "
            "(billing.entry_ctes, adminops.audit.events_insert) writing every row"
        ),
        "before": (
            "purchase 310/s vs 803/s raw, ratio 0.39, 2.56 ms client CPU; sweep 355/s vs "
            "727/s, ratio 0.49 (full make bench)"
        ),
        "after": (
            "purchase four statements, not prepared: 475/s vs 925/s, ratio 0.51, 1.40 ms; "
            "prepared: 584/s vs 918/s, ratio 0.64, 1.35 ms client + 1.67 ms server CPU (raw "
            "0.70 + 1.05); sweep 471/s vs 714/s, ratio 0.66 (bench --only runs)"
        ),
    },
    {
        "figure": "6. gateway",
        "cause": (
            "uvicorn CPU per streamed request 5.5 ms (from /proc) against 0.7 ms for the "
            "stand-in; py-spy: a new OS thread started and joined per request (Django enters "
            "a fresh ThreadSensitiveContext and asgiref gives it a new executor), httpcore "
            "retrying a failing `import sniffio` on every lock it sets up, usage written "
            "through the ORM, the bearer lookup unprepared; streamed answers from the stand-in "
            "closed their connection, so every streamed call opened a new one"
        ),
        "change": (
            "codingplans/asgi.py ReusedThreadASGIHandler (the same per-request thread "
            "semantics, threads kept for later requests); sniffio installed; bearer_caller "
            "and record_usage as prepared lean statements; the stand-in streams in chunked "
            "framing on a kept-alive connection"
        ),
        "before": (
            "+4.7 ms p50 non-streaming, +5.6 ms streaming (uvicorn CPU 5.5 ms per request); "
            "155 / 159 req/s"
        ),
        "after": (
            "+3.4 ms p50 non-streaming, +3.8 ms streaming (uvicorn CPU 3.5 ms per request); "
            "213 / 172 req/s (bench --only gateway)"
        ),
    },
    {
        "figure": "2. sweep",
        "cause": (
            "after the prepared statements, the renewal still made six round trips (two "
            "locks, debit + ledger, term, period, audit event) against the raw SQL's eight "
            "cheaper ones: 1.29 ms client CPU per renewal against 0.70"
        ),
        "change": (
            "subscriptions/sweep.py _renew in one statement after the two locks: "
            "billing.entry_ctes, then the term, the period update and the audit event "
            "(adminops.audit.events_insert with source='entry'), each written only if the "
            "debit was"
        ),
        "before": "414 renewals/s vs 687/s raw SQL, ratio 0.60, 1.29 ms client CPU (make bench)",
        "after": "632 renewals/s vs 677/s raw SQL, ratio 0.93, 0.75 ms client CPU (--only sweep)",
    },
    {
        "figure": "8. concurrent streams",
        "cause": (
            "issue 20, first run of the new figure (200 streams x 6 s): a stream kept the "
            "database connection its admission took until the request finished, so the "
            "process's pool of 20 admitted 20 streams and timed the rest out; at 1,000 the "
            "upstream pool's 200-connection cap queued the rest, and each stream held an idle "
            "request thread and a 64 KB tail copied on every chunk"
        ),
        "change": (
            "gateway/views.py hands the connection back after admission; gateway/proxy.py "
            "MAX_UPSTREAM_CONNECTIONS 4,096; gateway/asgi.py serves bearer gateway calls beside "
            "Django (codingplans/asgi.py), the request thread back to the pool once the "
            "response exists, each chunk sent straight to the server; gateway/relay.py keeps "
            "4 KB of the stream's end and the usage event"
        ),
        "before": (
            "200 x 6 s: 160 of 200 streams answered 500; 1,000 x 20 s: +72 ms p50 / +227 ms "
            "p99 per chunk, 60 s to relay 20 s streams, 285 threads, 50 KB RSS per stream"
        ),
        "after": (
            "1,000 x 20 s: no error, 1,000 of 1,000 metered once, +8.6 ms p50 / +101 ms p99 "
            "per chunk, 30 s wall, 37 threads, 8 database connections, 53 KB per stream "
            "(bench --only streams)"
        ),
    },
    {
        "figure": "1. purchase, 2. sweep",
        "cause": (
            "issue 20: with issue 19's e-mails in, the purchase fell to 0.24 of raw SQL and the "
            "sweep to 0.09; pyinstrument: 58 % of a purchase was the receipt's after-commit "
            "hook (get_or_create in its own transaction, five round trips and the ORM: 34 %; "
            "the Celery publish, 0.7 ms of CPU: 16 %), and every renewal paid the same"
        ),
        "change": (
            "subscriptions/emails.py records an e-mail with one prepared INSERT ... ON "
            "CONFLICT DO NOTHING RETURNING id (same row, same once-per-event rule, still after "
            "the commit); the sweep queues its receipts a hundred to a task "
            "(tasks.send_customer_emails, emails.batched_delivery)"
        ),
        "before": (
            "purchase 227/s vs 942/s raw SQL, ratio 0.24, 3.02 ms client CPU; sweep 243/s vs "
            "2,573/s raw (which wrote no e-mail row), ratio 0.09, 2.39 ms client CPU"
        ),
        "after": (
            "purchase 337/s vs 928/s, ratio 0.36, 1.90 ms; sweep 573/s vs 2,244/s, 0.26, "
            "0.79 ms; with the raw sides writing the e-mail rows too and 1 in 20 due short with "
            "auto top-up on: purchase 0.35, sweep 497 vs 1,239 due/s, 0.40 (bench --only "
            "purchase,sweep)"
        ),
    },
    {
        "figure": "1. purchase",
        "cause": (
            "issue 20: after the earlier fixes the purchase was 0.40-0.47 of raw SQL; taking "
            "its after-commit work out entirely gave 0.89, so that work was the gap: the "
            "receipt's own INSERT in autocommit after the commit, a Celery publish per "
            "purchase (about 0.5 ms of CPU under the GIL the 8 workers share, plus Redis's), "
            "and the low-stock check, one more statement per purchase; the catalog was also "
            "rebuilt from settings at each of three plan look-ups"
        ),
        "change": (
            "subscriptions/purchase.py writes the receipt's CustomerEmail row in its activation "
            "statement (emails.record_cte: an outbox row, committed with the purchase or not "
            "at all, which also closes the crash window the e-mails had); "
            "subscriptions/emails.py hands the id to one publisher thread per process that "
            "queues what arrives within 50 ms as one send_customer_emails task; "
            "inventory/services.py's claim statement also returns the available count it saw "
            "(up to threshold + max_connections + 2) and whether an alert is armed, and "
            "inventory.alerts.stock_check_needed runs the exact check after commit only when "
            "the claim may have reached the threshold (proof in its docstring, Hypothesis "
            "test); catalog/__init__.py builds the plans once per catalog setting; "
            "bench/purchase.py writes the raw side's receipt row inside its transaction too, "
            "and runs four rounds with the side that goes first alternating"
        ),
        "before": "0.40-0.47 of raw SQL (make bench, session 3); 0.42 at the start of this one",
        "after": (
            "0.80-0.89 of raw SQL with other work on both cores (bench --only purchase, "
            "4 rounds x 400 per side); client CPU 1.07-1.18 ms per purchase vs raw 0.75-0.81"
        ),
    },
    {
        "figure": "2. sweep",
        "cause": (
            "issue 20, ratio 0.39-0.58: (1) the raw side was not one transaction per "
            "subscription: its first statement opened an implicit transaction, so every "
            "`conn.transaction()` was a savepoint and the whole raw sweep one transaction, "
            "committed outside the clock, paying no per-subscription commit; (2) the product "
            "wrote each renewal's receipt after the commit as a statement and commit of its own; "
            "(3) cProfile with a CPU clock: a short subscription cost 3.1 ms of client CPU "
            "(ORM get of the account, exists() + create() of the top-up attempt, ORM save, one "
            "Celery publish) against 0.68 ms for a renewal, a quarter of the sweep's CPU at 1 "
            "in 20 short; the two lock statements were a round trip each"
        ),
        "change": (
            "bench/sweep.py: the raw side on an autocommit connection (each subscription its "
            "own committed transaction) and writing the receipt row in that transaction, as the "
            "product now does; subscriptions/sweep.py + emails.record_cte: the receipt's "
            "CustomerEmail row (same unique (kind, event_key), ON CONFLICT DO NOTHING) is a CTE "
            "of the renewal's statement, its id queued on commit in the batches "
            "(emails.deliver_after_commit), which also closes the crash window for renewal "
            "receipts; subscriptions/actions.lock_subscription: both locks in one statement "
            "(billing.account_lock_cte, read in a one-time condition evaluated before the "
            "subscription is scanned, so the order holds); billing.start_top_up: one INSERT ... "
            "ON CONFLICT DO NOTHING on the one-attempt-per-term constraint; save_transition: a "
            "lean UPDATE; the short customer's account by a lean select; codingplans/sql.py: "
            "the connection looked up once per statement"
        ),
        "before": (
            "back to back on a quiet machine (load ~1): original code 427 due/s vs 812/s raw "
            "SQL (one transaction), ratio 0.53, 1.26 ms client CPU; with only the raw side "
            "fixed 399 vs 497/s, 0.80, 1.36 ms. Earlier, under other engineers' test runs "
            "(load ~2.5): 0.39-0.57"
        ),
        "after": (
            "577-629 due/s vs 567-613/s raw SQL (receipt in the transaction on both sides), "
            "ratio 1.01-1.06, 0.83-0.91 ms client CPU (4 runs, load ~1); under load ~2.5: "
            "634-670 vs 850-855/s, 0.75-0.78, 0.80-0.85 ms. Against the old one-transaction "
            "raw figure of the same quiet hour (812/s) the product is at 0.71-0.77. "
            "(flock /tmp/bench.lock env DEBUG=1 BENCH_DATABASE_NAME=bench_sweep .venv/bin/python "
            "-m codingplans.devenv -- .venv/bin/python -m bench --only sweep)"
        ),
    },
    {
        "figure": "6. gateway",
        "cause": (
            "issue 20: a bearer call's admission (token + key query, rate limits) and its "
            "metering ran on threads through sync_to_async, each hop also paying the Django "
            "pool's checkout check; cProfile on a CPU clock in the uvicorn process then showed "
            "httpcore's anyio layer, a Django cache object built per call, the Fernet key set "
            "rebuilt per decrypt, the provider URL parsed per call, an INSERT per call, "
            "httpx's decoder chain and the scrubbing walk over every answer"
        ),
        "change": (
            "codingplans/asyncsql.py (the same statement texts on a psycopg "
            "AsyncConnectionPool of the loop's own, a dead connection seen without a round "
            "trip); accounts.tokens.bearer_lookup_async (the one bearer rule's statement), "
            "ratelimit.hit_pair_async (the same Lua script on redis.asyncio, failing open), "
            "usage queued and written with one multi-row INSERT per 20 ms "
            "(gateway.services.queue_usage); gateway/network.py (httpcore on asyncio "
            "streams); one cache object per loop, MultiFernet per key set, URL parsed once, "
            "a complete answer sent without the disconnect watcher, read raw and walked for the "
            "key only when its text could spell it (gateway.relay.may_spell_key)"
        ),
        "before": (
            "+2.9 ms p50, +3.6 ms p99 non-streaming, +2.9 / +4.3 ms streaming, 256 / 225 "
            "req/s (this session's run; earlier runs +2.7-2.9 / +3.7-4.6); uvicorn CPU 3.2 ms "
            "per non-streamed call (A/B probe at equal load)"
        ),
        "after": (
            "final code, three runs: +1.9 / +2.0 / +2.5 ms p50, +3.5 / +3.4 / +7.8 ms p99 "
            "non-streaming; +1.9 / +2.0 / +2.8 ms p50, +3.0 / +2.1 / +4.9 ms p99 streaming; "
            "515 / 498 / 359 req/s (the third at load average 2.8 from other work on the 2 "
            "cores); uvicorn CPU 1.7 ms per call; the A/B probe at equal load +3.4 -> +2.1 ms "
            "p50 (bench --only gateway)"
        ),
    },
    {
        "figure": "8. concurrent streams",
        "cause": (
            "cProfile (CPU clock) of the relay: per chunk, httpcore's anyio backend (a cancel "
            "scope per read) was a third of the gateway's CPU, more than parsing the chunk; "
            "Django's per-part async wrapper; httpcore's pool scans every connection each time "
            "a request is assigned or a response closes (1,000 streams: milliseconds per "
            "stream opened or ended); the relay itself is 3 us per chunk and passes events "
            "through unchanged unless their escapes could spell the key"
        ),
        "change": (
            "gateway/network.py (httpcore's network backend on asyncio streams, "
            "asyncio.timeout per read); gateway.asgi sends the relay's parts without Django's "
            "wrapper; the loop's upstream connections over up to 32 pools (the first with "
            "fewer than 32 requests in flight, else the least busy)"
        ),
        "before": (
            "1,000 x 20 s: +75-95 ms p99 per chunk, 120 us CPU per chunk (issue 20 brief); "
            "A/B probe 1,000 x 10 s at equal load: p50 20.6 / 29.0 ms, 130 / 141 us per chunk"
        ),
        "after": (
            "1,000 x 20 s: +0.24 ms p50, steady-window +5.0 ms p99, whole-run +100.5 ms p99 on a "
            "quiet machine (load 0.8), +153 / +178 / +201 ms p99 at load 2.5-4; 92-110 us CPU per"
            " chunk; probe p50 3.8 / 5.5 ms, 107 / 114 us; 750 streams +4.1 ms p99, 500 +1.3, 300"
            " +1.2 (target met). Floor: ~230 us of CPU per chunk across stand-in (75), gateway "
            "(100) and client (50) = 1.1 of the 2 cores at 5,000 chunks/s, the gateway's share on"
            " one thread; during the ramp 200 admissions/s (~1.7 ms each) take that thread to "
            "~0.9 of a core, so chunks queue behind them; any other load on the 2 cores starves "
            "it (bench --only streams, BENCH_STREAMS=300/500/750)"
        ),
    },
    {
        "figure": "8. concurrent streams",
        "cause": (
            "gc callbacks timing every collection in the uvicorn process: while the 1,000 "
            "streams open, the heap grows from ~105,000 tracked objects (Django and the app) to "
            "~250,000, and each time it has grown by a quarter a full collection walks all of "
            "it with the event loop stopped: 12, 29, 60 and 95 ms pauses (the run's worst "
            "per-chunk latency, 92-96 ms, was the last one); the middle generation, collected "
            "every 10 young collections, paused 3-11 ms about a hundred times a run"
        ),
        "change": (
            "codingplans/collector.py, applied at the ASGI lifespan's start (gateway.asgi): "
            "gc.freeze() of the start-up heap, thresholds 700,3,300 (the middle generation three "
            "times as often and a third as long, a full collection after 300 of those instead "
            "of 10); SERVER_GC_THRESHOLDS overrides them, off leaves Python's collector"
        ),
        "before": (
            "Python's defaults (700,10,10): whole-run added p99 +2.98 / +6.82 ms (MiniMax / "
            "BytePlus), +7.5 / +2.0, +12.7 / +3.7 in three runs this session; worst chunk "
            "92-96 ms; full collections during the ramp 60 and 95 ms, middle-generation pauses "
            "up to 8-12 ms"
        ),
        "after": (
            "four runs: whole-run added p99 +3.75 / +2.37, +3.97 / +3.03, +3.64 / +2.06, "
            "+1.28 / +1.58 ms (every one within 5 ms); worst chunk 13-19 ms (MiniMax), 55-61 ms "
            "(BytePlus); no full collection while streams were open; middle-generation pauses "
            "up to 4-11 ms but three times shorter on average; RSS 47 KB per stream and CPU "
            "per chunk unchanged (bench --only streams; freeze alone, or only the full "
            "collections deferred, left +6.8 / +6.2 and +6.41 / +2.74)"
        ),
    },
    {
        "figure": "1. purchase",
        "cause": (
            "pg_stat_statements (a PostgreSQL 15 with the extension, same schema): the claim was "
            "the dearest statement of both sides, 0.35-0.42 ms of database time single-threaded "
            "and 1.7-2.1 ms under 8 workers, growing as the plan sold: it took the lowest "
            "available id, and the partial index of available credentials keeps, at its low "
            "end, an entry for every credential sold since the last VACUUM (an update that ends "
            "a row's availability leaves the old entry behind), so every claim walked all of "
            "them; purchases/s fell round after round (801, 713, 553, 513 over 4 x 1,200)"
        ),
        "change": (
            "inventory.services.claim_cte: the claim looks above the last id this process "
            "claimed for the plan first and below it only when nothing is free there (one "
            "statement; PostgreSQL reads the second half only when the first is empty, so "
            "sold_out means what it meant); the low-stock count walks from the high end. The "
            "benchmark's raw SQL claims the same way, so the ratio still compares like with like"
        ),
        "before": (
            "ratio 0.67-0.71 against a raw side that also walked the dead entries (4 x 1,200 "
            "per side), product 628-645/s, server CPU 1.94-2.07 ms per purchase"
        ),
        "after": (
            "product 818-838/s with no decline over the rounds, server CPU 1.09-1.18 ms per "
            "purchase; against a raw side given the same claim the ratio is 0.70-0.72 in that "
            "setting: the product's own overhead, left for the next two entries"
        ),
    },
    {
        "figure": "1. purchase",
        "cause": (
            "profile of the client's CPU (cProfile with a CPU clock): four statements, each "
            "building a Column object per result column to ask whether it returned rows, and "
            "fifteen values run through their field's conversion, strings included"
        ),
        "change": (
            "subscriptions/purchase.py: the checks and the claim are one statement (the claim "
            "runs only when every check passes), three statements a purchase; codingplans.sql: "
            "execute reads the result's status instead of cursor.description, keeps one cursor "
            "per connection (52.6 -> 44 us of CPU for a bare statement), and prepared_value "
            "passes a str for a text column as it is"
        ),
        "before": "client CPU 832-843 us per purchase single-threaded (raw SQL 580-607)",
        "after": (
            "client CPU 720-800 us per purchase without the kept cursor, 658-672 us with it "
            "(raw SQL 532-608 over the same runs)"
        ),
    },
    {
        "figure": "1. purchase",
        "cause": (
            "pg_stat_statements with track_planning: after the pages figure (9,000 more "
            "available credentials of the plan) the checks-and-claim statement was planned at "
            "every execution, 2,004 plans for 2,000 calls at 0.31 ms each, more than running it "
            "(0.11 ms): the low-stock count's bound was a parameter in a LIMIT, for which the "
            "planner guesses a tenth of the rows, so with a large stock the generic plan looked "
            "dearer than planning afresh and PostgreSQL never settled on it. This was also why "
            "make bench, which runs the pages figure first, scored the purchase lower than "
            "bench --only purchase"
        ),
        "change": (
            "inventory.services.claim_cte: the plan's low-stock threshold is a literal in the "
            "statement (one text per threshold); tests/inventory/test_claim.py holds the "
            "generic plan with a 20,000-credential stock"
        ),
        "before": (
            "28 -> 2,004 plans per 2,000 calls after the pages figure; database CPU per purchase "
            "1.31-1.36 ms single-threaded (0.83 ms without the pages figure); bench --only "
            "pages,purchase 0.72-0.79"
        ),
        "after": (
            "28 plans per 2,000 calls, 0.83 ms per purchase with or without the pages figure; "
            "bench --only pages,purchase 0.84-0.86, --only purchase 0.89-0.95, make bench 0.95"
        ),
    },
    {
        "figure": "8. concurrent streams",
        "cause": (
            "gc.callbacks in the bench process, which is the client stamping each chunk's "
            "arrival: two or three full collections of its heap (Django, the bench, thousands "
            "of streams' state) per path, 66-104 ms each, stopped its event loop; every chunk "
            "that arrived meanwhile was stamped late, on the direct path as often as on the "
            "gateway's (an 80 ms stall seen on the direct path)"
        ),
        "change": (
            "bench/streams.py: both paths are read with the client's collector frozen and off "
            "(it runs again after each); the gateway and the stand-in are untouched"
        ),
        "before": (
            "worst chunk 55-117 ms on either path; whole-run added p99 +6.1 to +7.0 ms in 4 "
            "of 10 provider runs today"
        ),
        "after": (
            "worst chunk 9-37 ms; whole-run added p99 within 5 ms in 22 of 24 provider runs "
            "(16 of --only streams, 8 in four full make bench runs; +1.3 to +4.7 ms), +6.45 and "
            "+7.87 in the other two (the first with a steady window of +6.7 ms, the second "
            "+1.5 ms steady: its tail came from the ramp's last second and the first seconds "
            "of the streams ending; see docs/operations.md)"
        ),
    },
    {
        "figure": "8. concurrent streams",
        "cause": (
            "every event's latency second by second, with gc.callbacks in the stand-in: a "
            "full collection of the stand-in's heap (17-31 ms; one process, 1,000 threads) "
            "stopped every stream at once, each thread then slept its 200 ms from the same "
            "moment, and the chunks stayed bunched for seconds: bursts that queued in the "
            "gateway (95 us a chunk, twice the client's) as 700 late chunks a second for 5 s "
            "after one 31 ms stall, in the steady window"
        ),
        "change": (
            "bench/streams.py: the stand-in process the figure starts runs with its collector "
            "frozen and off (it is the upstream, a provider's fleet in production); the "
            "gateway and the stand-in's code are untouched"
        ),
        "before": (
            "whole-run added p99 over 5 ms in 2 of 24 provider runs after the client fix "
            "(+6.45, +7.87) and in 3 of 10 lightly instrumented ones; worst chunk up to 37 ms"
        ),
        "after": ("six provider runs: +1.7 to +4.4 ms whole-run, worst chunk 7.6-14.4 ms"),
    },
]
