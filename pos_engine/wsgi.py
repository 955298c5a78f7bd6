"""The one module-level app, for `gunicorn pos_engine.wsgi:app`.

A setting or rulebook the engine cannot start with stops the worker with a
plain message and gunicorn's boot-error exit code, so gunicorn stops too
instead of restarting workers that cannot start. Once the server is serving
(a worker has loaded the engine: gunicorn.conf.py's hooks leave a mark file
named by POS_ENGINE_SERVING_MARK), a worker started again that finds the
rulebook on disk broken exits plainly after a pause instead: gunicorn starts
it again later, and the other workers keep serving the rulebook they had.
"""

import os
import sys
import time

from pos_engine.api import create_app
from pos_engine.config import ConfigError
from pos_engine.rules_loader import RulebookError

WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts on it
RESPAWN_PAUSE_S = 5.0  # a worker that cannot load the rulebook waits this long before gunicorn starts another

try:
    app = create_app()
except ConfigError as error:
    print(f"pos-engine cannot start: {error}", file=sys.stderr)
    sys.exit(WORKER_BOOT_ERROR)
except RulebookError as error:
    print(f"pos-engine cannot start: the rulebook is invalid:\n{error}", file=sys.stderr)
    mark = os.environ.get("POS_ENGINE_SERVING_MARK")
    if mark and os.path.exists(mark):
        print(f"the other workers keep the rulebook they had; this one is started again in {RESPAWN_PAUSE_S:g} s", file=sys.stderr)
        time.sleep(RESPAWN_PAUSE_S)
        sys.exit(1)
    sys.exit(WORKER_BOOT_ERROR)
