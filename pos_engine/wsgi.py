"""The one module-level app, for `gunicorn pos_engine.wsgi:app`.

A setting or rulebook the engine cannot start with stops the worker with a
plain message and gunicorn's boot-error exit code, so gunicorn stops too
instead of restarting workers that cannot start.
"""

import sys

from pos_engine.api import create_app
from pos_engine.config import ConfigError
from pos_engine.rules_loader import RulebookError

WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts on it

try:
    app = create_app()
except ConfigError as error:
    print(f"pos-engine cannot start: {error}", file=sys.stderr)
    sys.exit(WORKER_BOOT_ERROR)
except RulebookError as error:
    print(f"pos-engine cannot start: the rulebook is invalid:\n{error}", file=sys.stderr)
    sys.exit(WORKER_BOOT_ERROR)
