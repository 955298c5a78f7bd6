"""gunicorn settings for `gunicorn pos_engine.wsgi:app`, chosen by measurement (docs/performance.md).

On the 2-core reference machine, 3 workers of the gthread class with one thread each gave the best tail latency
at a moderate rate. With more threads a worker's swipes that reach PostgreSQL while another of its swipes is
being recorded are recorded together, by one statement and one commit (group commit,
`pos_engine.store.db.RecordGroup`): `--threads 4` served 10-18 % more swipes a second on the same host (four
threads without group commit about 12 %) and group commit cut PostgreSQL's CPU a swipe by a sixth to a third,
but the moderate-rate p99 was over 10 ms in two runs of four (never with one thread), and the bare ceiling
gained as much from the threads. Set it where capacity matters more than the tail. gthread rather than
sync keeps terminals' connections alive; behind a proxy that opens a connection per request, `-k sync` gives
the shorter tail (a sync worker accepts only when free; a gthread worker accepts while busy).
Override any of them on the command line or with GUNICORN_CMD_ARGS.
"""

import multiprocessing
import os

if __name__ == "__config__":  # read by gunicorn (not, say, by loadtests.bench for its defaults)
    # This process is gunicorn's master: an app it builds (`--preload`) starts no thread of its own (pos_engine.wsgi).
    os.environ["POS_ENGINE_GUNICORN_MASTER_PID"] = str(os.getpid())

workers = max(2, multiprocessing.cpu_count() + 1)
worker_class = "gthread"
threads = 1
keepalive = 30
backlog = 2048
graceful_timeout = 10


def when_ready(server: object) -> None:
    """Name, for every worker, the file that says the server has served (post_worker_init writes it).

    A worker started again later (killed, timed out, HUP) that finds the rulebook on disk broken since
    then exits plainly after a pause (pos_engine.serving), so gunicorn starts it again later while the
    other workers keep serving the rulebook they had, instead of halting the whole server as it does
    for a worker that cannot boot at start-up. POS_ENGINE_SERVING_MARK may name the file beforehand.
    """
    import os
    import tempfile

    if not os.environ.get("POS_ENGINE_SERVING_MARK"):
        os.environ["POS_ENGINE_SERVING_MARK"] = os.path.join(tempfile.mkdtemp(prefix="pos-engine-"), "serving")
    else:
        _remove_marks(os.environ["POS_ENGINE_SERVING_MARK"])  # left by a master that did not exit cleanly


def _remove_marks(mark: str) -> None:
    """Remove the serving mark and, beside it, the mark of a worker that failed to boot (pos_engine.serving)."""
    import contextlib
    import os

    for left in (mark, mark + ".boot-failed"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(left)


def post_worker_init(worker: object) -> None:
    """A worker has loaded the engine: the server is serving (one line per worker that did).

    With `--preload` the master built the app, starting nothing: the worker starts its card directory, registry
    snapshot and rulebook watcher now, and loads a rulebook changed since (without it, the worker built the app
    itself, and they run already).
    """
    app = getattr(worker, "wsgi", None)
    if "pos_engine" in getattr(app, "extensions", {}):  # not the bench's ceiling and baseline apps
        from pos_engine.serving import start_forked_worker

        start_forked_worker(app)
    mark = os.environ.get("POS_ENGINE_SERVING_MARK")
    if mark:
        with open(mark, "a") as serving:
            serving.write(f"{os.getpid()}\n")


def on_exit(server: object) -> None:
    import contextlib
    import os

    mark = os.environ.get("POS_ENGINE_SERVING_MARK")
    if mark:
        with contextlib.suppress(OSError):
            _remove_marks(mark)
            if os.path.basename(os.path.dirname(mark)).startswith("pos-engine-"):
                os.rmdir(os.path.dirname(mark))
