"""`quarantine show ID --body FILE` writes a new file only: never over an existing one without
--force, never through a symlink, and a path it cannot write is a usage error (exit 2)."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_worker import cli, models, store

ACCOUNT = "0252012345-00082"
BODY = b'{"messages": [{"message": "kept \\u00e9"}], "hasMoreData": tru'


@pytest.fixture
def kept(db: psycopg.Connection[Any]) -> int:
    run_id = store.start_run(db, ACCOUNT)
    block = models.KeptBlock(
        http_status=202,
        request_token=None,
        next_token="TokShowBody1",
        problem="test",
        body=BODY,
        body_size=len(BODY),
        body_sha256=hashlib.sha256(BODY).hexdigest(),
        received_at=datetime.datetime.now(datetime.UTC),
    )
    return store.quarantine_block(db, run_id, ACCOUNT, block).quarantine_id


def _show(db_url: str, quarantine_id: int, target: Path, *extra: str) -> int:
    env = {"SYNC_DATABASE_URL": db_url, "SYNC_LOG_FORMAT": "console"}
    return cli.main(["quarantine", "show", str(quarantine_id), "--body", str(target), *extra], env=env)


def test_body_goes_to_a_new_file(db_url: str, kept: int, tmp_path: Path) -> None:
    """A new path gets the exact kept bytes."""
    target = tmp_path / "block.json"
    assert _show(db_url, kept, target) == 0
    assert target.read_bytes() == BODY


def test_an_existing_file_is_kept_without_force_and_replaced_with_it(
    db_url: str, kept: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing file is left as it was (exit 2, one error line saying --force); --force replaces it."""
    target = tmp_path / "precious.txt"
    target.write_bytes(b"precious")
    capsys.readouterr()
    assert _show(db_url, kept, target) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("sync-worker: error: --body ") and "--force" in line
    assert target.read_bytes() == b"precious"
    assert _show(db_url, kept, target, "--force") == 0
    assert target.read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]  # no temporary file left


def test_a_symlink_is_never_written_through(
    db_url: str, kept: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A symlink at FILE (to a file, or dangling) is refused; with --force the link itself is
    replaced by a file and its target is untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    link = tmp_path / "link"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert _show(db_url, kept, link) == 2
    assert _show(db_url, kept, dangling) == 2
    assert not (tmp_path / "nowhere").exists()
    assert _show(db_url, kept, link, "--force") == 0
    assert victim.read_bytes() == b"victim"
    assert not link.is_symlink() and link.read_bytes() == BODY


@pytest.mark.parametrize(
    ("where", "force"),
    [("directory", False), ("directory", True), ("missing_directory", False), ("missing_directory", True)],
)
def test_an_unwritable_path_is_a_usage_error(
    db_url: str, kept: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], *, where: str, force: bool
) -> None:
    """A directory, or a file in a directory that does not exist: exit 2 with one error line naming
    the path (no traceback), nothing written."""
    target = tmp_path if where == "directory" else tmp_path / "no" / "such" / "block.json"
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    assert _show(db_url, kept, target, *(["--force"] if force else [])) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sync-worker: error: --body {target}: ")
    assert sorted(tmp_path.rglob("*")) == before
