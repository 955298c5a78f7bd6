"""The one module-level app, for `gunicorn pos_engine.wsgi:app` (pos_engine.serving: how a worker that
cannot start stops)."""

import os
import sys

from pos_engine.api import create_app
from pos_engine.config import ConfigError
from pos_engine.rules_loader import RulebookError
from pos_engine.serving import halt_gunicorn, rulebook_refused
from pos_engine.store.migrate import SchemaNotCurrent

# gunicorn.conf.py names the master's process: with `--preload` the master builds this app and forks the
# workers from it, and a thread it started would run in the master alone (gunicorn.conf.py's post_worker_init
# starts them in each worker).
GUNICORN_MASTER_ENV = "POS_ENGINE_GUNICORN_MASTER_PID"


def _in_gunicorn_master() -> bool:
    return os.environ.get(GUNICORN_MASTER_ENV) == str(os.getpid())


try:
    app = create_app(start=not _in_gunicorn_master())
except (ConfigError, SchemaNotCurrent) as error:
    print(f"pos-engine cannot start: {error}", file=sys.stderr)
    halt_gunicorn()
except RulebookError as error:
    rulebook_refused(error)
