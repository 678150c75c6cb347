#!/usr/bin/env python3
"""Server time per row of the worker's claim and settle statements, against the SQL
floor's on the same server: one connection, 500-row batches, prepared statements with
generic plans, results left undecoded (libpq through psycopg's `pq` layer), so that what
is measured is PostgreSQL plus a few round trips per batch. pgc's rows go the way of
handlers that finish within the claim window: CLAIM locks them in a transaction and
SETTLE_CLAIMED records them as completed before the commit.

Usage: bench/statement-cost.py [N] [ROUNDS] [VARIANT_SQL]
  N rows per round (default 100000), ROUNDS alternating rounds (default 2); VARIANT_SQL
  runs on pgc's schema before each pgc round (e.g. "drop index
  pgconductor._private_executions_lease") to see what one part of it costs.
Needs: pip install "psycopg[binary]", the release binary (for `pgc migrate`).
Server: BENCH_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres); it
creates and drops the database pgc_stmt_bench.
"""
import os, re, subprocess, sys, time, uuid

import psycopg
from psycopg import pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
URL = ADMIN.rsplit("/", 1)[0] + "/pgc_stmt_bench"
BATCH = 500
SRC = open(os.path.join(ROOT, "src", "sql.rs")).read()


def const(name):
    """The text of `pub const NAME` in src/sql.rs: a string literal, or a `concat!` of
    literals and `name!()` macros that each expand to one literal."""
    m = re.search(r'pub const %s: &str = (?:"(.*?)";|concat!\((.*?)\n\);)' % name, SRC, re.S)
    if m.group(1) is not None:
        return m.group(1)
    macros = dict(re.findall(r'macro_rules! (\w+) \{\s*\(\) => \{\s*"(.*?)"\s*\};', SRC, re.S))
    return "".join(lit if lit else macros[mac]
                   for lit, mac in re.findall(r'"(.*?)"|(\w+)!\(\)', m.group(2), re.S))


def fresh():
    with psycopg.connect(ADMIN, autocommit=True) as a:
        a.execute("drop database if exists pgc_stmt_bench with (force)")
        a.execute("create database pgc_stmt_bench")
    subprocess.run([os.path.join(ROOT, "target", "release", "pgc"), "migrate"],
                   env={**os.environ, "DATABASE_URL": URL}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def check(r):
    if r.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        raise SystemExit(r.error_message.decode())
    return r


TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def pgc_round(n, variant):
    fresh()
    c = psycopg.connect(URL, autocommit=True)
    c.execute("set plan_cache_mode = force_generic_plan")
    for stmt in variant.split(";"):
        if stmt.strip():
            c.execute(stmt)
    # Time-ordered ids, as pgc writes them (UUID v7): random ones would scatter the claim
    # order (priority, run_at, id) over the whole table.
    c.execute(f"""insert into pgconductor._private_executions (id, queue, task_key, payload, trace_context)
      select (lpad(to_hex(i), 12, '0') || '7' || substr(md5(i::text), 1, 19))::uuid, 'default',
             'noop', '{{}}', jsonb_build_object('traceparent', '{TP}')
      from generate_series(1, {n}) i""")
    c.execute("vacuum analyze pgconductor._private_executions")
    pg = c.pgconn
    check(pg.prepare(b"claim", const("CLAIM").encode()))
    check(pg.prepare(b"settle", const("SETTLE_CLAIMED").encode()))
    worker = str(uuid.uuid4()).encode()
    claim = complete = 0.0
    done = 0
    while True:
        # As the worker does with handlers that finish within the claim window: the
        # claim's transaction records every attempt as completed and commits.
        t0 = time.perf_counter()
        check(pg.exec_(b"begin"))
        r = check(pg.exec_prepared(b"claim", [b"{default}", str(BATCH).encode(), None,
                                              b"{NULL}", b"{NULL}", b"{NULL}"]))
        t1 = time.perf_counter()
        k = r.ntuples
        if k == 0:
            check(pg.exec_(b"commit"))
            break
        tids = b"{" + b",".join(b'"' + r.get_value(i, 13) + b'"' for i in range(k)) + b"}"
        ids = b"{" + b",".join(r.get_value(i, 0) for i in range(k)) + b"}"
        spans = b"{" + b",".join(r.get_value(i, 8) for i in range(k)) + b"}"
        results = b"{" + b",".join([b"NULL"] * k) + b"}"
        t2 = time.perf_counter()
        check(pg.exec_prepared(b"settle", [worker, b"60", tids, ids, spans, results,
                                           b"{}", b"{}", b"{}"]))
        check(pg.exec_(b"commit"))
        t3 = time.perf_counter()
        claim += t1 - t0
        complete += t3 - t2
        done += k
    c.close()
    return 1e6 * claim / done, 1e6 * complete / done


def floor_round(n):
    fresh()
    c = psycopg.connect(URL, autocommit=True)
    # shared/bench/sql-floor.sh's table, insert and statements.
    c.execute("""create table floor_jobs(id bigserial primary key, queue text not null, task_key text not null,
      payload jsonb, status text not null default 'pending', priority int not null default 0,
      run_at timestamptz not null default now(), attempts int not null default 0, locked_by text,
      locked_until timestamptz, trace_context jsonb, result jsonb, finished_at timestamptz);
    create index on floor_jobs(queue, priority, run_at, id) where status = 'pending'""")
    c.execute(f"""insert into floor_jobs(queue, task_key, payload, trace_context)
      select 'default', 'noop', jsonb_build_object('id', i), jsonb_build_object('traceparent', '{TP}')
      from generate_series(1, {n}) i""")
    c.execute("vacuum analyze floor_jobs")
    pg = c.pgconn
    check(pg.prepare(b"claim", b"""with claimed as (
      update floor_jobs set status = 'running', attempts = attempts + 1,
             locked_by = pg_backend_pid()::text, locked_until = now() + interval '5 min'
      where id in (select id from floor_jobs
                   where queue = 'default' and status = 'pending' and run_at <= now()
                   order by priority, run_at, id limit 500 for update skip locked)
      returning id) select array_agg(id) from claimed"""))
    check(pg.prepare(b"complete", b"""update floor_jobs set status = 'completed', finished_at = now(),
      locked_by = null, locked_until = null where id = any($1::bigint[])"""))
    claim = complete = 0.0
    done = 0
    while True:
        t0 = time.perf_counter()
        r = check(pg.exec_prepared(b"claim", []))
        t1 = time.perf_counter()
        ids = r.get_value(0, 0)
        if ids is None:
            break
        check(pg.exec_prepared(b"complete", [ids]))
        t2 = time.perf_counter()
        claim += t1 - t0
        complete += t2 - t1
        done += ids.count(b",") + 1
    c.close()
    return 1e6 * claim / done, 1e6 * complete / done


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    variant = sys.argv[3] if len(sys.argv) > 3 else ""
    try:
        for i in range(rounds):
            fc, fco = floor_round(n)
            pc, pco = pgc_round(n, variant)
            print(f"round {i + 1}: floor claim {fc:.2f} + complete {fco:.2f} = {fc + fco:.2f} us/row; "
                  f"pgc claim {pc:.2f} + settle {pco:.2f} = {pc + pco:.2f} us/row; "
                  f"floor/pgc {(fc + fco) / (pc + pco):.2f}"
                  + (f" [{variant}]" if variant else ""))
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as a:
            a.execute("drop database if exists pgc_stmt_bench with (force)")


main()
