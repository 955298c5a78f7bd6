"""How a gunicorn worker of the engine stops when it cannot serve, and starts when its master built the app.

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
from typing import Any, NoReturn

WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts on it
RESPAWN_PAUSE_S = 5.0  # a worker that cannot load the rulebook waits this long before gunicorn starts another
SECOND_FAILURE_WAIT_S = 1.0  # another worker failed first: its report reaches gunicorn before this one exits


def halt_gunicorn() -> NoReturn:
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


def rulebook_refused(error: object, unreadable: bool = False) -> NoReturn:
    """A worker that cannot load the rulebook: gunicorn halts at start-up; once serving, the worker is started again later.

    `unreadable`: the files could not be read (permissions, a lost mount), rather than the rulebook refused.
    """
    why = "cannot be read" if unreadable else "is invalid"
    print(f"pos-engine cannot start: the rulebook {why}:\n{error}", file=sys.stderr)
    mark = os.environ.get("POS_ENGINE_SERVING_MARK")
    if mark and os.path.exists(mark):
        print(f"the other workers keep the rulebook they had; this one is started again in {RESPAWN_PAUSE_S:g} s", file=sys.stderr)
        time.sleep(RESPAWN_PAUSE_S)
        sys.exit(1)
    halt_gunicorn()


def start_forked_worker(app: Any) -> None:
    """gunicorn.conf.py's post_worker_init, in each worker: one forked from a master that built the app
    (`--preload`) starts its card directory, registry snapshot and rulebook watcher before it serves.

    The master built the app once, perhaps days ago: files changed since are loaded now, and if they are
    broken the worker exits as one that cannot load the rulebook does (started again later), rather than
    serve the master's old one beside workers that replaced it.
    """
    if app.extensions.get("pos_engine_started", True):
        return  # the worker built the app itself, and started them then
    watcher = app.extensions.get("pos_engine_rules_watcher")
    if watcher is not None:
        watcher.catch_up()  # the rulebook first: a worker that cannot serve loads no cards
        if watcher.refused_at_start:
            rulebook_refused(watcher.last_error, unreadable=watcher.last_error_unreadable)
    app.extensions["pos_engine"].start()
