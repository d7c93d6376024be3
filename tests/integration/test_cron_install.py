"""The cron deployment installed as documented (deploy/cron/install.sh) and its crontab line run as
the cron user: a throwaway system user, a scratch root for the files, the real worker against the
simulator and a real Postgres. Needs root (useradd, runuser); skipped otherwise."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_worker import simulator
from tests.reliability.proxy import PgProxy

ROOT = Path(__file__).resolve().parents[2]
CRON_FILE = ROOT / "deploy/cron/thingspace-sms-sync.cron"
ACCOUNT = "0252012345-00001"
# A python the throwaway user may execute (the venv's own interpreter may live under /root, 0700),
# of the same minor version, so the venv's compiled packages load.
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None,
    reason="needs root, useradd and runuser to create and act as a throwaway cron user",
)


@pytest.fixture
def cron_user() -> Iterator[str]:
    name = f"tsync-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["userdel", name], capture_output=True, check=False)
    subprocess.run(["groupdel", name], capture_output=True, check=False)


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are 0700 and the cron user must traverse them.
    root = Path(tempfile.mkdtemp(prefix="cron-root-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _cron_line(text: str) -> tuple[str, str]:
    """(user, command) of the one schedule line of a /etc/cron.d file."""
    (line,) = [ln for ln in text.splitlines() if ln and not ln.startswith("#") and "=" not in ln.split()[0]]
    fields = line.split(None, 6)
    assert len(fields) == 7, line
    return fields[5], fields[6]


def test_documented_cron_install_runs_a_pass_as_the_cron_user(
    cron_user: str,
    scratch_root: Path,
    simulator: simulator.Simulator,
    db_url: str,
    request: pytest.FixtureRequest,
) -> None:
    """install.sh creates the user, the config, secret and log modes; the installed crontab line, run as
    that user, reads the env file and both secrets, appends to the log and ends with the JSON summary."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} (an interpreter the cron user may run) is not installed")
    default_user, _ = _cron_line(CRON_FILE.read_text())
    assert default_user == "thingspace-sync"  # not Debian's `sync` system account

    installed = subprocess.run(
        ["sh", "deploy/cron/install.sh"],
        cwd=ROOT,
        env={**os.environ, "DESTDIR": str(scratch_root), "RUN_USER": cron_user},
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    user = pwd.getpwnam(cron_user)
    assert user.pw_shell == "/usr/sbin/nologin"
    etc = scratch_root / "etc/thingspace-sms-sync"
    # The secrets, written exactly as the install script says.
    secrets = {
        "password": simulator.config.password.reveal(),
        "client-secret": simulator.config.client_secret.reveal(),
    }
    for name, value in secrets.items():
        target = etc / "credentials" / name
        subprocess.run(
            ["install", "-m", "0440", "-o", "root", "-g", cron_user, "/dev/stdin", str(target)],
            input=value + "\n",
            text=True,
            check=True,
        )
    # Over TCP: the embedded server's socket directory is private to root.
    proxy = PgProxy(db_url)
    request.addfinalizer(proxy.close)
    env_lines = [
        f"{k}={shlex.quote(v)}"
        for k, v in simulator.worker_env(accounts=[ACCOUNT], database_url=proxy.conninfo()).items()
        if k not in ("THINGSPACE_PASSWORD", "THINGSPACE_CLIENT_SECRET")
    ]
    (etc / "env").write_text("\n".join([*env_lines, "SYNC_LOG_FORMAT=json", ""]))
    for path, mode, owner in (
        (etc, 0o750, "root"),
        (etc / "credentials", 0o750, "root"),
        (etc / "env", 0o640, "root"),
        (etc / "credentials/password", 0o440, "root"),
        (scratch_root / "var/log/thingspace-sms-sync", 0o750, cron_user),
        (scratch_root / "etc/cron.d/thingspace-sms-sync", 0o644, "root"),
    ):
        st = path.stat()
        assert (st.st_mode & 0o777, pwd.getpwuid(st.st_uid).pw_name) == (mode, owner), path
        if path.name != "thingspace-sms-sync" or "cron.d" not in str(path):
            assert st.st_gid == user.pw_gid or owner == cron_user, path
    assert not any("." in p.name for p in (scratch_root / "etc/cron.d").iterdir())  # cron skips dotted names

    # The worker executable the crontab names, placed in the scratch root.
    exe = scratch_root / "opt/thingspace-sms-sync/bin/sync-worker"
    exe.parent.mkdir(parents=True)
    site = next((ROOT / ".venv/lib").glob("python3.*/site-packages"))
    exe.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT}:{site} exec {SYSTEM_PYTHON} -m sync_worker "$@"\n')
    exe.chmod(0o755)

    run_user, command = _cron_line((scratch_root / "etc/cron.d/thingspace-sms-sync").read_text())
    assert run_user == cron_user
    for prefix in ("/etc/thingspace-sms-sync", "/var/log/thingspace-sms-sync", "/opt/thingspace-sms-sync"):
        command = command.replace(prefix, f"{scratch_root}{prefix}")
    assert re.search(r"\b(THINGSPACE_PASSWORD|THINGSPACE_CLIENT_SECRET)=[^/]", command) is None
    simulator.seed(ACCOUNT, 150, seed=4)
    cron_env = {
        "SHELL": "/bin/sh",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": user.pw_dir,
        "LOGNAME": cron_user,
    }
    ran = subprocess.run(
        [str(shutil.which("runuser")), "-u", cron_user, "--", "/bin/sh", "-c", command],
        env=cron_env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    log = (scratch_root / "var/log/thingspace-sms-sync/once.log").read_text()
    assert ran.returncode == 0, ran.stderr + log
    summary = json.loads(log.strip().splitlines()[-1])
    assert (summary["inserted"], summary["exit_code"]) == (150, 0), log
    for value in secrets.values():
        assert value not in log
