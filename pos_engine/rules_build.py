"""Build a rulebook in a child process at the lowest CPU priority, for a reload that takes little from the swipes.

A worker that reads and checks 5,000 rules itself spends about 0.8 s of CPU in
a thread that shares the GIL with its swipes, and its swipes wait for the GIL
(docs/performance-rounds.md, twentieth round). `build_in_child` runs
`load_rulebook` in a new Python process at nice 19 instead: the kernel gives it
the cores mostly from what the swipes leave idle, and the worker only
unpickles the child's answer and indexes it (about 60-90 ms of CPU for 5,000
rules, in Python code that lets a swipe waiting for the GIL take it at the
switch interval).

The child runs this worker's interpreter with this worker's import path, this
package first, and writes one pickle to its standard output: (code version,
kind, payload), where the code version is a hash of the package's source files
when the process imported this module, and kind and payload are
- "rulebook", (version, campaigns, funders, examples): the worker builds the
  Rulebook (its indexes) itself;
- "refused", the RulebookError's problems, each (file, line, path, reason);
- "unreadable", (errno, strerror, filename, filename2): the files could not be read (an OSError).

What gives no verdict raises RulebookBuildFailed, and `load_rulebook_quietly`
then loads the rulebook in the worker, as before: a child that cannot start,
crashes or answers what cannot be read, and a child that ran other code than
the worker's (the package changed on disk since the worker started: its
classes may not unpickle into the worker's, field for field). A child that
runs over RULES_BUILD_TIMEOUT_S is killed and raises RulebookBuildTimedOut,
which the watcher tries again at a later poll: loading in the worker would
hang on the same file, or starve the swipes of a saturated host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO

from pos_engine.domain.rulebook import Rulebook
from pos_engine.limits import RULES_BUILD_TIMEOUT_S
from pos_engine.rules_loader import Problem, RulebookError, load_rulebook
from pos_engine.rules_watch import ReloadDeferred

log = logging.getLogger(__name__)

CHILD_NICENESS = 19
_STDERR_CHARS_MAX = 2000
_PACKAGE_DIR = Path(__file__).resolve().parent
# At nice 19 from its first line (its imports, marshmallow and PyYAML, cost CPU too); isolated (-I), with the
# worker's import path, this package's root first.
_CHILD_CODE = (
    f"import json, os, sys; os.nice({CHILD_NICENESS}); sys.path[:] = json.loads(sys.argv[1]); "
    "from pos_engine.rules_build import main; sys.exit(main(sys.argv[2:]))"
)


class RulebookBuildFailed(RuntimeError):
    """The child that builds the rulebook gave no verdict on the files: the worker loads them itself."""


class RulebookBuildTimedOut(RulebookBuildFailed, ReloadDeferred):
    """The child ran over RULES_BUILD_TIMEOUT_S and was killed: the watcher tries again at a later poll."""


def _code_version() -> str | None:
    """A hash of the package's source files as they are on disk now; None if they cannot be read."""
    digest = hashlib.sha256()
    try:
        for path in sorted(_PACKAGE_DIR.rglob("*.py")):
            digest.update(path.relative_to(_PACKAGE_DIR).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    except OSError:
        return None
    return digest.hexdigest()


# Taken when this process imported the module, with the rest of its code (the app imports it as it is built).
CODE_VERSION = _code_version()


def load_rulebook_quietly(directory: Path) -> Rulebook:
    """The rulebook watcher's load: `build_in_child`, or `load_rulebook` in this process if the child gave no verdict.

    Raises what `build_in_child` raises, but RulebookBuildFailed only as RulebookBuildTimedOut.
    """
    try:
        return build_in_child(directory)
    except RulebookBuildTimedOut:
        raise
    except RulebookBuildFailed as error:
        log.warning("%s; loading the rulebook in this process instead", error)
        return load_rulebook(directory)


def build_in_child(directory: Path) -> Rulebook:
    """`load_rulebook(directory)`, run in a child process at nice 19.

    Raises:
        RulebookError: the rulebook was refused (the same problems `load_rulebook` lists).
        OSError: the files could not be read.
        RulebookBuildTimedOut: the child ran over RULES_BUILD_TIMEOUT_S (killed).
        RulebookBuildFailed: otherwise no verdict (the child could not start, crashed, ran other code).
    """
    try:
        completed = subprocess.run(  # noqa: S603  # this interpreter, this package's code, a path
            _child_command(directory),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=RULES_BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RulebookBuildTimedOut(
            f"the rulebook build for {directory} took longer than {RULES_BUILD_TIMEOUT_S:.0f} s and was killed; "
            "trying again at the next poll"
        ) from None
    except OSError as error:  # the child could not be started (no memory for it, no interpreter at sys.executable)
        raise RulebookBuildFailed(f"the rulebook build for {directory} could not start: {error}") from error
    stderr = completed.stderr.decode("utf-8", "replace").strip()[-_STDERR_CHARS_MAX:]
    if completed.returncode != 0:
        status = completed.returncode
        raise RulebookBuildFailed(f"the rulebook build for {directory} failed (exit status {status}): {stderr or 'no message'}")
    return _read_answer(completed.stdout, directory)


def _child_command(directory: Path) -> list[str]:
    # The worker's import path as it is now ('' is the working directory, which the child shares), with this
    # package's root first: the same pos_engine whatever the directory, PYTHONPATH or gunicorn --pythonpath.
    path = [str(_PACKAGE_DIR.parent), *(entry or os.getcwd() for entry in sys.path)]
    return [sys.executable, "-I", "-c", _CHILD_CODE, json.dumps(path), str(directory)]


def _read_answer(answer: bytes, directory: Path) -> Rulebook:
    outcome: Rulebook | Exception
    try:
        code_version, kind, payload = pickle.loads(answer)  # noqa: S301  # our own child's output, through a pipe
        if code_version != CODE_VERSION or CODE_VERSION is None:
            raise RulebookBuildFailed(
                f"the rulebook build for {directory} ran other code than this worker's (pos_engine changed on disk since it started)"
            )
        if kind == "rulebook":
            version, campaigns, funders, examples = payload
            outcome = Rulebook(version, campaigns, funders, examples)
        elif kind == "refused":
            outcome = RulebookError([Problem(*problem) for problem in payload])
        elif kind == "unreadable":
            errno, strerror, filename, filename2 = payload
            outcome = OSError(strerror) if errno is None else OSError(errno, strerror, filename, None, filename2)
        else:
            raise ValueError(f"an answer of unknown kind {kind!r}")
    except RulebookBuildFailed:
        raise
    except Exception as error:  # whatever the answer could not be read as, the child gave no verdict
        raise RulebookBuildFailed(f"the rulebook build for {directory} gave an answer that could not be read: {error!r}") from error
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def write_answer(directory: Path, out: BinaryIO) -> None:
    """What the child writes: the rulebook in `directory`, or why there is none."""
    answer: tuple[str, Any]
    try:
        rulebook = load_rulebook(directory)
    except RulebookError as error:
        answer = ("refused", [(p.file, p.line, p.path, p.reason) for p in error.details])
    except OSError as error:
        strerror = error.strerror if error.errno is not None else str(error)
        answer = ("unreadable", (error.errno, strerror, error.filename, error.filename2))
    else:
        campaigns = list(rulebook.campaigns.values())
        answer = ("rulebook", (rulebook.version, campaigns, list(rulebook.funders.values()), list(rulebook.examples)))
    pickle.dump((CODE_VERSION, *answer), out, protocol=pickle.HIGHEST_PROTOCOL)


def main(args: list[str]) -> int:
    """The child's work (_CHILD_CODE): args is the rules directory."""
    (directory,) = args
    write_answer(Path(directory), sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0
