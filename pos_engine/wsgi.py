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
from typing import NoReturn

from pos_engine.api import create_app
from pos_engine.config import ConfigError
from pos_engine.rules_loader import RulebookError
from pos_engine.store.migrate import SchemaNotCurrent

WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts on it
RESPAWN_PAUSE_S = 5.0  # a worker that cannot load the rulebook waits this long before gunicorn starts another
SECOND_FAILURE_WAIT_S = 1.0  # another worker failed first: its report reaches gunicorn before this one exits


def _halt_gunicorn() -> NoReturn:
    """Exit with gunicorn's boot-error code, so that it halts; only the first worker to fail does.

    gunicorn stops its workers when one reports a boot error; a second one reporting it meanwhile
    raises gunicorn's HaltServer again inside its stop(), which prints a traceback of gunicorn's own.
    So the others (told by a mark file beside the serving mark, gunicorn.conf.py) exit plainly after
    a moment, while gunicorn halts on the first one's report.
    """
    mark = os.environ.get("POS_ENGINE_SERVING_MARK")
    if mark:
        try:
            os.close(os.open(mark + ".boot-failed", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            time.sleep(SECOND_FAILURE_WAIT_S)
            sys.exit(1)
        except OSError:
            pass  # no mark to be had: report it anyway
    sys.exit(WORKER_BOOT_ERROR)


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
    _halt_gunicorn()
except RulebookError as error:
    print(f"pos-engine cannot start: the rulebook is invalid:\n{error}", file=sys.stderr)
    mark = os.environ.get("POS_ENGINE_SERVING_MARK")
    if mark and os.path.exists(mark):
        print(f"the other workers keep the rulebook they had; this one is started again in {RESPAWN_PAUSE_S:g} s", file=sys.stderr)
        time.sleep(RESPAWN_PAUSE_S)
        sys.exit(1)
    _halt_gunicorn()
