"""``python -m sync_worker`` is the same as the ``sync-worker`` console script."""

from sync_worker import cli

if __name__ == "__main__":
    raise SystemExit(cli.main())
