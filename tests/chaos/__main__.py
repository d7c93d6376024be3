"""``python -m tests.chaos``: see ``tests.chaos.runner``."""

from tests.chaos import runner

raise SystemExit(runner.main())
