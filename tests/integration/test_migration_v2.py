"""Migration 0006 (history store v2) in place on a database holding v1 data.

The v1 data is written the way v1 wrote it: today's ``rows.build_rows`` rows through v1's own
``commit_block`` statement (frozen in tests/fixtures/v1_commit_block.sql), real simulator blocks
and hostile messages first, then bulked up to ``SYNC_TEST_MIGRATION_ROWS`` rows by copying those
rows with new keys and timestamps. ``make test-migration-1m`` runs it with 1,000,000 rows and
prints the migration time as a JSON line.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from sync_worker import client, migrations, models, retry, rows, simulator
from tests.fixtures import database
from tests.reliability import crash, inproc

ROWS = int(os.environ.get("SYNC_TEST_MIGRATION_ROWS", "20000"))
# Appends the timing line here too (make test-migration-1m sets it).
REPORT = os.environ.get("SYNC_TEST_MIGRATION_REPORT")
V1_COMMIT_BLOCK = Path(__file__).resolve().parents[1] / "fixtures" / "v1_commit_block.sql"

RESUME = "0252012345-00061"  # real simulator blocks only: compared exactly with what was delivered
HOSTILE = "0252012345-00062"
BULK = (HOSTILE, "0252012345-00063")
RESUME_MESSAGES = 450  # five blocks of 100: v1 stores two, the worker resumes for the rest
# A server configured with a local time zone (initdb takes the OS's): the migration must place
# rows by UTC month whatever the session's TimeZone is.
LOCAL_ZONE = "Asia/Tokyo"

_NAN = float("nan")
_DEV = [{"id": "00351756051523999", "kind": "imei"}]
HOSTILE_WIRE: list[Any] = [
    # Several devices, kinds in upper case, key orders v2 cannot rebuild.
    {
        "deviceIds": [
            {"id": "89148000000000000001", "kind": "ICCID"},
            {"id": "5551234567", "kind": "mdn"},
            {"kind": "imei", "id": "00351756051523001"},
        ],
        "message": "three devices",
        "timestamp": "2024-05-02T10:00:00Z",
    },
    {
        "deviceIds": [{"id": "00351756051523002", "kind": "IMEI"}],
        "message": "upper",
        "timestamp": "2024-05-02T10:00:01Z",
    },
    {"timestamp": "2024-05-02T10:00:02Z", "message": "keys reordered", "deviceIds": _DEV},
    {
        "deviceIds": [{"kind": "imei", "id": "00351756051523003"}],
        "message": "kind first",
        "timestamp": "2024-05-02T10:00:03Z",
    },
    # Undated: no timestamp, an unreadable one, a non-string one.
    {"deviceIds": _DEV, "message": "no timestamp"},
    {"deviceIds": _DEV, "message": "bad timestamp", "timestamp": "yesterday at noon"},
    {"deviceIds": _DEV, "message": "numeric timestamp", "timestamp": 1714564800},
    {"deviceIds": _DEV, "message": "no offset", "timestamp": "2024-05-02T10:00:04"},
    # Text v2 rebuilds character by character: non-ASCII, astral, escapes, controls.
    {
        "deviceIds": _DEV,
        "message": "Grüße — 温度 22度 🔋𝄞 \U0010ffff",
        "timestamp": "2024-05-02T10:00:05+09:00",
    },
    {
        "deviceIds": _DEV,
        "message": 'q"uote \\ back\nnew\ttab\r\b\f \x7f \x01 \u2028',
        "timestamp": "2024-05-02T10:00:06Z",
    },
    {
        "deviceIds": [{"id": 'id with "quote" é', "kind": "msisdn"}],
        "message": "",
        "timestamp": "2024-05-02T10:00:07Z",
    },
    # NUL and lone surrogates: replaced in the fields, with problems; raw NULL (not jsonb).
    {"deviceIds": _DEV, "message": "nul\x00inside", "timestamp": "2024-05-02T10:00:08Z"},
    {
        "deviceIds": [{"id": "lone\ud800", "kind": "imei"}],
        "message": "surrogate \udfff",
        "timestamp": "2024-05-02T10:00:09Z",
    },
    # NaN in raw: raw NULL, raw_json keeps the NaN.
    {"deviceIds": _DEV, "message": "nan", "timestamp": "2024-05-02T10:00:10Z", "value": _NAN},
    # Not the documented shape at all.
    "just a string",
    [1, 2, 3],
    None,
    {"deviceIds": [], "message": "no devices", "timestamp": "2024-05-02T10:00:11Z"},
    {
        "deviceIds": [{"id": 7, "kind": "imei"}, {"id": "ok", "kind": "eid"}],
        "message": 5,
        "timestamp": "2024-05-02T10:00:12Z",
    },
    {
        "deviceIds": [{"id": "x", "kind": "toaster"}],
        "message": "unknown kind",
        "timestamp": "2024-05-02T10:00:13Z",
    },
    # Months far from the traffic, each alone in its month: device clocks set wrong.
    {"deviceIds": _DEV, "message": "epoch clock", "timestamp": "1970-01-01T00:00:00Z"},
    {"deviceIds": _DEV, "message": "lone month", "timestamp": "2019-06-15T12:00:00Z"},
    {"deviceIds": _DEV, "message": "month edge", "timestamp": "2021-03-01T00:30:00Z"},
    {"deviceIds": _DEV, "message": "far future", "timestamp": "2150-01-01T00:00:00Z"},
    {"deviceIds": _DEV, "message": "new year east", "timestamp": "2023-01-01T05:00:00+09:00"},
    # Exact repeats in one block: occurrences 0 and 1.
    {"deviceIds": _DEV, "message": "twice", "timestamp": "2024-05-02T10:00:14Z"},
    {"deviceIds": _DEV, "message": "twice", "timestamp": "2024-05-02T10:00:14Z"},
]

# Copies of the seed rows with new keys; a copy of a dated row with a plain ISO timestamp moves
# back by up to 14 months, its timestamp text and raw_json following. Explicit ids keep the
# device rows' join a plain computation.
BULK_SEED_SQL: LiteralString = """
CREATE TEMP TABLE seed AS
SELECT row_number() OVER (ORDER BY id) - 1 AS i, h.*,
       received_at IS NOT NULL
       AND timestamp_raw ~ '^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d(\\.\\d+)?(Z|[+-]\\d\\d:\\d\\d)$'
       AND strpos(raw_json, '"timestamp":"' || timestamp_raw || '"') > 0 AS movable
FROM sms_history h
"""
BULK_ROWS_SQL: LiteralString = """
INSERT INTO sms_history (id, account_name, message_key, occurrence, device_ids, device_kind, device_id,
                         device_count, message, received_at, timestamp_raw, raw_json, raw, problems,
                         first_stored_at, run_id)
OVERRIDING SYSTEM VALUE
SELECT %(base)s + g, (%(accounts)s::text[])[1 + g %% cardinality(%(accounts)s::text[])],
       encode(sha256(convert_to(s.message_key || ':' || g, 'UTF8')), 'hex'), s.occurrence, s.device_ids,
       s.device_kind, s.device_id, s.device_count, s.message, m.received_at, m.timestamp_raw, m.raw_json,
       CASE WHEN s.raw IS NOT NULL THEN m.raw_json::jsonb END, s.problems, s.first_stored_at, s.run_id
FROM generate_series(0, %(extra)s - 1) g
JOIN seed s ON s.i = g %% %(seeds)s
CROSS JOIN LATERAL (
    SELECT CASE WHEN s.movable THEN s.received_at - make_interval(days => (g * 7) %% 420, secs => g %% 86400)
           ELSE s.received_at END AS received_at
) t
CROSS JOIN LATERAL (
    SELECT t.received_at,
           CASE WHEN s.movable THEN to_char(t.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
           ELSE s.timestamp_raw END AS timestamp_raw
) u
CROSS JOIN LATERAL (
    SELECT u.received_at, u.timestamp_raw,
           CASE WHEN s.movable
                THEN replace(s.raw_json, '"timestamp":"' || s.timestamp_raw || '"',
                             '"timestamp":"' || u.timestamp_raw || '"')
           ELSE s.raw_json END AS raw_json
) m
"""
BULK_DEVICES_SQL: LiteralString = """
INSERT INTO sms_history_device (history_id, position, account_name, device_kind, device_id, received_at)
SELECT n.id, d.position, n.account_name, d.device_kind, d.device_id, n.received_at
FROM generate_series(0, %(extra)s - 1) g
JOIN seed s ON s.i = g %% %(seeds)s
JOIN sms_history_device d ON d.history_id = s.id
JOIN sms_history n ON n.id = %(base)s + g
"""
BULK_SEQUENCE_SQL: LiteralString = """
SELECT setval(pg_get_serial_sequence('sms_history', 'id'), (SELECT max(id) FROM sms_history))
"""

# The v1 rows as analysts read them, kept through the migration (v1's tables are gone after it).
SNAPSHOT_SQL: LiteralString = """
CREATE UNLOGGED TABLE v1_rows AS
SELECT account_name, message_key, occurrence, device_kind, device_id, device_count, message, received_at,
       timestamp_raw, raw_json, raw::text AS raw_text, problems, first_stored_at, run_id
FROM sms_history;
CREATE UNLOGGED TABLE v1_devices AS
SELECT h.account_name, h.message_key, d.position, d.device_kind, d.device_id, d.received_at,
       h.message, h.timestamp_raw, h.problems, h.first_stored_at
FROM sms_history_device d JOIN sms_history h ON h.id = d.history_id;
CREATE UNLOGGED TABLE v1_cursor AS SELECT * FROM sync_cursor;
CREATE UNLOGGED TABLE v1_runs AS SELECT * FROM sync_run;
ANALYZE v1_rows, v1_devices;
"""

# Every v1 row against the v2 view, column by column: (what differs, account, key, v1 value, v2 value).
ROW_DIFFS_SQL: LiteralString = """
WITH v2 AS (
    SELECT account_name, message_key, occurrence, device_kind, device_id, device_count, message,
           received_at, timestamp_raw, raw_json, raw::text AS raw_text, problems, first_stored_at, run_id
    FROM sms_history
),
diffs AS (
    SELECT coalesce(a.account_name, b.account_name) AS account_name,
           coalesce(a.message_key, b.message_key) AS message_key,
           array_remove(ARRAY[
               CASE WHEN b.message_key IS NULL THEN 'lost' END,
               CASE WHEN a.message_key IS NULL THEN 'added' END,
               CASE WHEN a.raw_json IS DISTINCT FROM b.raw_json THEN 'raw_json' END,
               CASE WHEN a.raw_text IS DISTINCT FROM b.raw_text THEN 'raw' END,
               CASE WHEN a.occurrence IS DISTINCT FROM b.occurrence THEN 'occurrence' END,
               CASE WHEN a.device_kind IS DISTINCT FROM b.device_kind THEN 'device_kind' END,
               CASE WHEN a.device_id IS DISTINCT FROM b.device_id THEN 'device_id' END,
               CASE WHEN a.device_count IS DISTINCT FROM b.device_count THEN 'device_count' END,
               CASE WHEN a.message IS DISTINCT FROM b.message THEN 'message' END,
               CASE WHEN a.received_at IS DISTINCT FROM b.received_at THEN 'received_at' END,
               CASE WHEN a.timestamp_raw IS DISTINCT FROM b.timestamp_raw THEN 'timestamp_raw' END,
               CASE WHEN a.problems IS DISTINCT FROM b.problems THEN 'problems' END,
               CASE WHEN a.first_stored_at IS DISTINCT FROM b.first_stored_at THEN 'first_stored_at' END,
               CASE WHEN a.run_id IS DISTINCT FROM b.run_id THEN 'run_id' END
           ], NULL) AS differs,
           left(a.raw_json, 200) AS v1_raw, left(b.raw_json, 200) AS v2_raw
    FROM v1_rows a
    FULL JOIN v2 b ON b.account_name = a.account_name AND b.message_key = a.message_key
)
SELECT (SELECT count(*) FROM diffs WHERE differs <> '{}') AS differing,
       (SELECT coalesce(json_agg(e), '[]') FROM (
            SELECT * FROM diffs WHERE differs <> '{}' ORDER BY account_name, message_key LIMIT 5
        ) e) AS examples
"""

DEVICE_DIFFS_SQL: LiteralString = """
WITH diffs AS (
    SELECT coalesce(a.account_name, b.account_name) AS account_name,
           coalesce(a.message_key, b.message_key) AS message_key,
           coalesce(a.position, b.position) AS position,
           a.message_key IS NULL AS added, b.message_key IS NULL AS lost,
           (a.device_kind, a.device_id, a.received_at, a.message, a.timestamp_raw, a.problems,
            a.first_stored_at)
           IS DISTINCT FROM
           (b.device_kind, b.device_id, b.received_at, b.message, b.timestamp_raw, b.problems,
            b.first_stored_at) AS changed
    FROM v1_devices a
    -- A message without a device appears once in sms_by_device with NULL device columns; v1 had no row.
    FULL JOIN (SELECT * FROM sms_by_device WHERE device_id IS NOT NULL) b
      ON b.account_name = a.account_name AND b.message_key = a.message_key AND b.position = a.position
)
SELECT (SELECT count(*) FROM diffs WHERE added OR lost OR changed),
       (SELECT coalesce(json_agg(e), '[]') FROM (
            SELECT * FROM diffs WHERE added OR lost OR changed ORDER BY 1, 2, 3 LIMIT 5
        ) e)
"""

# Key sets as hex, one fingerprint per account: equal sets give equal digests.
KEY_SETS_SQL: LiteralString = """
SELECT account_name, count(*), md5(string_agg(message_key, ',' ORDER BY message_key))
FROM {} GROUP BY account_name ORDER BY account_name
"""


def _v1_commit_sql() -> LiteralString:
    # A test fixture file, as trusted as the literals around it.
    return V1_COMMIT_BLOCK.read_text(encoding="utf-8")


def _v1_device_ids(row: rows.Row) -> str | None:
    # v1 stored the received device list with kinds lowered; the same list from the row's devices.
    if not row.devices:
        return None
    return json.dumps(
        [{"id": i, "kind": k} for k, i in row.devices], ensure_ascii=True, separators=(",", ":")
    )


def _v1_commit(
    conn: psycopg.Connection[Any],
    account: str,
    messages: list[models.SMSMessage],
    *,
    run_id: int,
    next_token: str | None,
    move_cursor: bool = True,
) -> int:
    """One block through v1's statement, with v1's parameters (store._block_params at 9cc31ed)."""
    built = rows.build_rows(account, messages)
    dev_key: list[str] = []
    dev_position: list[int] = []
    dev_kind: list[str] = []
    dev_id: list[str] = []
    for r in built:
        for position, (kind, ident) in enumerate(r.devices):
            dev_key.append(r.message_key)
            dev_position.append(position)
            dev_kind.append(kind)
            dev_id.append(ident)
    params = {
        "account_name": account,
        "run_id": run_id,
        "next_token": next_token,
        "move_cursor": move_cursor,
        "received": len(built),
        "malformed": sum(1 for r in built if r.problems),
        "message_key": [r.message_key for r in built],
        "occurrence": [r.occurrence for r in built],
        "device_ids": [_v1_device_ids(r) for r in built],
        "device_kind": [r.device_kind for r in built],
        "device_id": [r.device_id for r in built],
        "device_count": [len(r.devices) for r in built],
        "message": [r.message for r in built],
        "received_at": [r.received_at for r in built],
        "timestamp_raw": [r.timestamp_raw for r in built],
        "raw_json": [r.raw_json for r in built],
        "raw_is_jsonb": [r.raw_is_jsonb for r in built],
        "problems": [rows.PROBLEM_SEPARATOR.join(r.problems) for r in built],
        "dev_message_key": dev_key,
        "dev_position": dev_position,
        "dev_kind": dev_kind,
        "dev_id": dev_id,
    }
    with conn.transaction():
        row = conn.execute(_v1_commit_sql(), params).fetchone()
    assert row is not None
    return int(row[0])


def _v1_run(conn: psycopg.Connection[Any], account: str, outcome: str = "succeeded") -> int:
    row = conn.execute(
        "INSERT INTO sync_run (account_name, worker_host, worker_pid, outcome, finished_at)"
        " VALUES (%s, 'v1-host', 4242, %s, now()) RETURNING id",
        (account, outcome),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _database_at_0005(make_database: Callable[..., str], tmp_path: Path) -> str:
    url = make_database(migrated=False)
    v1 = database.migrations_before(tmp_path, "0006")
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrations.migrate(conn, v1) == ["0001", "0002", "0003", "0004", "0005"]
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET timezone TO {}").format(
                sql.Identifier(conn.info.dbname), sql.Literal(LOCAL_ZONE)
            )
        )
    return url


def _client(sim: simulator.Simulator) -> client.ThingSpaceClient:
    return client.ThingSpaceClient(
        client.ClientConfig(
            base_url=sim.base_url,
            client_id=sim.config.client_id,
            client_secret=sim.config.client_secret,
            username=sim.config.username,
            password=sim.config.password,
            timeout=(2.0, 10.0),
            retry=retry.RetryPolicy(max_attempts=1, sleep=lambda _: None),
            allow_insecure_loopback=True,
        )
    )


def _distinct_traffic(n: int) -> list[dict[str, Any]]:
    # The simulator's realistic traffic without its exact repeats: a repeat in a later block is a
    # replay by design (stored once), which would blur the exact comparison.
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for message in simulator.seed_messages(n * 2, seed=13):
        key = json.dumps(message, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(message)
    return out[:n]


def _fill_v1(conn: psycopg.Connection[Any], sim: simulator.Simulator) -> str:
    """v1 data: two real blocks of RESUME (cursor after the second), hostile and plain messages of
    HOSTILE, then copies up to ROWS. Returns RESUME's stored cursor."""
    api = _client(sim)
    try:
        blocks = api.sms.iter_history_blocks(RESUME)
        token: str | None = None
        for _ in range(2):
            page = next(blocks)
            run_id = _v1_run(conn, RESUME)
            token = page.next
            assert token is not None
            _v1_commit(conn, RESUME, list(page.messages), run_id=run_id, next_token=token)
            assert page.ticket is not None
            page.ticket.acknowledge_unstored()  # stored by the v1 statement, which knows no tickets
    finally:
        api.close()
    assert token is not None

    run_id = _v1_run(conn, HOSTILE, outcome="failed")
    hostile = [models.SMSMessage.from_wire(m) for m in HOSTILE_WIRE]
    assert _v1_commit(conn, HOSTILE, hostile, run_id=run_id, next_token="hostile-token") == len(hostile)
    plain = [models.SMSMessage.from_wire(m) for m in simulator.seed_messages(300, seed=14)]
    _v1_commit(conn, HOSTILE, plain, run_id=_v1_run(conn, HOSTILE), next_token="plain-token")

    seeds_row = conn.execute("SELECT count(*), max(id) FROM sms_history").fetchone()
    assert seeds_row is not None
    seeds, top = int(seeds_row[0]), int(seeds_row[1])
    extra = max(0, ROWS - seeds)
    if extra:
        with conn.transaction():
            params = {"base": top + 1, "extra": extra, "seeds": seeds, "accounts": list(BULK)}
            conn.execute(BULK_SEED_SQL)
            conn.execute(BULK_ROWS_SQL, params)
            conn.execute(BULK_DEVICES_SQL, params)
            conn.execute(BULK_SEQUENCE_SQL)
    conn.execute("ANALYZE")
    return token


def _key_sets(conn: psycopg.Connection[Any], relation: str) -> list[tuple[Any, ...]]:
    query = sql.SQL(KEY_SETS_SQL).format(sql.Identifier(relation))
    return conn.execute(query).fetchall()


def _backend_cpu(conn: psycopg.Connection[Any], pid: int | None = None) -> tuple[int, float] | None:
    """(backend pid, its CPU seconds so far) when the server runs on this machine, else None.

    Wall time on a shared 2-core machine measures the neighbours too; the backend's own CPU time
    does not (parallel index-build workers, if any, are not counted)."""
    if pid is None:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        pid = int(row[0]) if row else 0
    try:
        if b"postgres" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None  # a server elsewhere: that pid is not its backend
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of /proc/PID/stat, in clock ticks.
    return pid, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report_timing(conn: psycopg.Connection[Any], count: int, seconds: float, cpu: float | None) -> None:
    version = conn.execute("SHOW server_version").fetchone()
    line = json.dumps(
        {
            "test": "migration_0006",
            "rows": count,
            "seconds": round(seconds, 2),
            "seconds_per_million_rows": round(seconds * 1_000_000 / count, 1),
            "backend_cpu_seconds_per_million_rows": None
            if cpu is None
            else round(cpu * 1_000_000 / count, 1),
            "load_average": os.getloadavg()[0],
            "server_version": version[0] if version else None,
            "cpus": os.cpu_count(),
        }
    )
    print(line)  # the measurement, visible with pytest -s
    if REPORT:
        Path(REPORT).parent.mkdir(parents=True, exist_ok=True)
        with Path(REPORT).open("a", encoding="utf-8") as out:
            out.write(line + "\n")


def _history_queries(sim: simulator.Simulator) -> list[str]:
    return [r.query for r in sim.stats.requests if r.kind == "history"]


def test_v1_history_migrates_in_place_and_the_worker_resumes(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """0006 on v1 data keeps every row, key, original, device row, cursor and run; the worker resumes."""
    url = _database_at_0005(make_database, tmp_path)
    sim = crash.HookedSimulator(
        crash.crash_sim_config((RESUME,), final_ack="on_delivery", token_mode="reusable")
    )
    traffic = _distinct_traffic(RESUME_MESSAGES)
    with sim, psycopg.connect(url, autocommit=True) as conn:
        sim.inject(RESUME, traffic)
        token = _fill_v1(conn, sim)
        counted = conn.execute("SELECT count(*) FROM sms_history").fetchone()
        assert counted is not None
        count = int(counted[0])
        assert count >= ROWS
        assert conn.execute("SHOW TimeZone").fetchone() == (LOCAL_ZONE,)
        keys_before = _key_sets(conn, "sms_history")
        conn.execute(SNAPSHOT_SQL)

        backend = _backend_cpu(conn)
        started = time.perf_counter()
        applied = migrations.migrate(conn)
        assert applied[0] == "0006" and applied == sorted(m.version for m in migrations.available()[5:])
        seconds = time.perf_counter() - started
        cpu = None if backend is None else _backend_cpu(conn, backend[0])
        _report_timing(conn, count, seconds, None if cpu is None or backend is None else cpu[1] - backend[1])
        migrations.check_schema(conn)

        assert conn.execute("SELECT to_regclass('sms_history_v1')").fetchone() == (None,)
        assert _key_sets(conn, "sms_history") == keys_before
        differing, examples = _one(conn, ROW_DIFFS_SQL)
        assert differing == 0, f"{differing} rows differ after 0006, e.g. {examples}"
        differing, examples = _one(conn, DEVICE_DIFFS_SQL)
        assert differing == 0, f"{differing} device rows differ after 0006, e.g. {examples}"
        assert _one(conn, "SELECT count(*) FROM sms_message_undated") == _one(
            conn, "SELECT count(*) FROM v1_rows WHERE received_at IS NULL"
        )
        cursors = "SELECT * FROM {} ORDER BY account_name"
        assert _rows(conn, cursors, "sync_cursor") == _rows(conn, cursors, "v1_cursor")
        runs = "SELECT * FROM {} ORDER BY id"
        assert _rows(conn, runs, "sync_run") == _rows(conn, runs, "v1_runs")

        asked_before = len(_history_queries(sim))
        result, _, _ = inproc.run_pass(sim, url, (RESUME,))
        assert result.exit_code == 0, result.summary()
        asked = _history_queries(sim)[asked_before:]
        assert asked[0] == f"next={token}", asked[:3]
        (account,) = result.accounts
        stored_by_v1 = 200
        assert (account.inserted, account.replays) == (RESUME_MESSAGES - stored_by_v1, 0), account
        assert sim.queued(RESUME) == []
        stored = conn.execute(
            "SELECT raw_json FROM sms_history WHERE account_name = %s", (RESUME,)
        ).fetchall()
        canonical = collections.Counter(json.dumps(json.loads(r[0]), sort_keys=True) for r in stored)
        assert canonical == collections.Counter(json.dumps(m, sort_keys=True) for m in traffic)


def _one(conn: psycopg.Connection[Any], query: LiteralString) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else tuple(row)


def _rows(conn: psycopg.Connection[Any], query: LiteralString, relation: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql.SQL(query).format(sql.Identifier(relation))).fetchall()


def _migrate_into(url: str, results: list[Any]) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            results.append(migrations.migrate(conn))
    except Exception as exc:  # handed to the test thread, which fails on it
        results.append(exc)


def test_two_migrates_at_once_apply_0006_once_on_v1_data(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """Two migrates racing on v1 data: one applies 0006, the other waits and finds it applied."""
    url = _database_at_0005(make_database, tmp_path)
    hostile = [models.SMSMessage.from_wire(m) for m in HOSTILE_WIRE]
    lock = (migrations.LOCK_NAMESPACE, migrations.LOCK_KEY)
    with psycopg.connect(url, autocommit=True) as holder:
        _v1_commit(holder, HOSTILE, hostile, run_id=_v1_run(holder, HOSTILE), next_token="t")
        # Hold the migration lock so both calls queue behind it, then let them race.
        holder.execute("SELECT pg_advisory_lock(%s, %s)", lock)
        results: list[Any] = []
        threads = [threading.Thread(target=_migrate_into, args=(url, results)) for _ in range(2)]
        for thread in threads:
            thread.start()

        def both_waiting() -> bool:
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                (migrations.LOCK_KEY,),
            ).fetchone()
            return waiting == (2,)

        crash.wait_until(both_waiting, 60, "both migrate calls waiting on the migration lock")
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", lock)
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive()
        assert all(isinstance(r, list) for r in results), results
        later = sorted(m.version for m in migrations.available()[5:])
        assert sorted(results, key=len) == [[], later] and later[0] == "0006", results
        assert _one(holder, "SELECT count(*) FROM schema_migrations WHERE version = '0006'") == 1
        assert _one(holder, "SELECT count(*) FROM sms_history") == len(hostile)
