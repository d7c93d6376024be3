"""``python -m bench.raw_read``: what reading ``sms_history.raw_json`` / ``raw`` costs per row, before and
after migration 0016 (issue 27, item 6), on the same rows of the same server in one run.

A database migrated up to 0015 gets ``--messages`` of the simulator's traffic (``simulator.seed_messages``,
blocks of 100 through ``store.commit_block``), then ``VACUUM (ANALYZE)``; each read is the server's
execution time of ``SELECT sum(length(<column>)) FROM sms_history`` (``EXPLAIN (ANALYZE, TIMING OFF)``,
the fastest of ``--reps``); the cost of raw_json or raw is its time minus that of ``message``, per row.
Then 0016 is applied in place and the same is measured again. Splits the rebuilt rows into those whose
fields are all plain printable ASCII and the others. Server: embedded, or ``$SYNC_BENCH_DATABASE_URL``.
Prints one JSON object (and the load average).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, LiteralString

import psycopg

from bench import pg

_PLAIN: Final = "device_id || device_kind || message || timestamp_raw ~ '^[ !#-\\[\\]-~]*$'"
_REBUILD: Final = (
    "coalesce(raw_kept, sms_history_rebuild_raw(device_id, device_kind, message, timestamp_raw))"
)


def _ms(
    conn: psycopg.Connection[Any], expression: LiteralString, reps: int, source: LiteralString = "sms_history"
) -> float:
    best = math.inf
    for _ in range(reps):
        row = conn.execute(
            "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) SELECT sum(length(" + expression + ")) FROM " + source
        ).fetchone()
        assert row is not None
        document = row[0] if isinstance(row[0], list) else json.loads(row[0])
        best = min(best, float(document[0]["Execution Time"]))
    return best


def _measure(conn: psycopg.Connection[Any], rows: int, reps: int) -> dict[str, float]:
    message = _ms(conn, "message", reps)
    out = {
        "message_us_per_row": message * 1000 / rows,
        "raw_json_us_per_row": (_ms(conn, "raw_json", reps) - message) * 1000 / rows,
        "raw_us_per_row": (_ms(conn, "raw::text", reps) - message) * 1000 / rows,
    }
    # The rebuilt rows apart, by whether every field is plain printable ASCII.
    for label, table in (("plain_ascii", "raw_read_plain"), ("other_text", "raw_read_other")):
        n = conn.execute("SELECT count(*) FROM " + table).fetchone()
        count = int(n[0]) if n else 0
        base = _ms(conn, "message", reps, table)
        out[f"rebuilt_{label}_us_per_row"] = (_ms(conn, _REBUILD, reps, table) - base) * 1000 / max(1, count)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_read", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages stored (%(default)s)")
    parser.add_argument("--reps", type=int, default=5, help="reads per figure, fastest kept (%(default)s)")
    args = parser.parse_args(argv)
    from sync_worker import migrations, models, simulator, store
    from tests.fixtures import store_0016

    load = [os.getloadavg()[0]]
    out: dict[str, Any] = {"command": " ".join(["python -m bench.raw_read", *(argv or sys.argv[1:])])}
    with pg.server(None) as admin, tempfile.TemporaryDirectory() as tmp:
        for m in migrations.available():
            if m.version < "0016":
                shutil.copy(m.path, tmp)
        dsn = pg.fresh_database(admin, "raw_read", template="template0")
        raw = simulator.seed_messages(max(100, args.messages), seed=5)
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrations.migrate(conn, Path(tmp))
            run_id = store.start_run(conn, "acct-read")
            # The schema is 0015 here: rows are written as the code of that schema wrote them.
            with store_0016.writing():
                for b in range(0, len(raw), 100):
                    wires = raw[b : b + 100]
                    page = models.HistoryPage(
                        "acct-read", tuple(models.SMSMessage.from_wire(w) for w in wires), True, 202, f"t{b}"
                    )
                    store.commit_block(conn, run_id, page)
            conn.execute(
                "CREATE TABLE raw_read_plain AS SELECT * FROM sms_message WHERE raw_kept IS NULL AND "
                + _PLAIN
            )
            conn.execute(
                "CREATE TABLE raw_read_other AS SELECT * FROM sms_message WHERE raw_kept IS NULL AND NOT ("
                + _PLAIN
                + ")"
            )
            conn.execute("VACUUM (ANALYZE)")
            row = conn.execute(
                "SELECT count(*), (SELECT count(*) FROM raw_read_plain),"
                " count(*) FILTER (WHERE raw_kept IS NULL) FROM sms_message"
            ).fetchone()
            assert row is not None
            rows = int(row[0])
            out["rows"] = rows
            out["rebuilt_plain_ascii_share"] = int(row[1]) / rows
            out["rebuilt_share"] = int(row[2]) / rows
            out["before_0016"] = _measure(conn, rows, args.reps)
            # 0016 alone: the figures are 0016's (0017 changes which rows are rebuilt).
            shutil.copy(next(m.path for m in migrations.available() if m.version == "0016"), tmp)
            migrations.migrate(conn, Path(tmp))
            out["after_0016"] = _measure(conn, rows, args.reps)
        pg.drop_database(admin, "raw_read")
    load.append(os.getloadavg()[0])
    out["load_average_1min"] = load
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
