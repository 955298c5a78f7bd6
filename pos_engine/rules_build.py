"""Build a rulebook in a child process at the lowest CPU priority, for a reload that takes nothing from the swipes.

A worker that reads and checks 5,000 rules itself spends about 0.8 s of CPU in
a thread that shares the GIL with its swipes, and its swipes wait for the GIL
(docs/performance-rounds.md, twentieth round). `build_in_child` runs
`load_rulebook` in a new Python process at nice 19 instead: the kernel gives it
the cores the swipes leave idle, and the worker only unpickles the child's
answer and indexes it (about 60 ms of CPU for 5,000 rules, in Python code that
lets a swipe waiting for the GIL take it at the switch interval).

The child writes one pickle to its standard output:
- ("rulebook", version, campaigns, funders, examples), from which the worker
  builds the Rulebook (its indexes) itself; or
- ("refused", problems): the RulebookError's problems, each with file, line, path and reason; or
- ("unreadable", errno, strerror, filename): the files could not be read (an OSError).
Anything else (a child that cannot start, a crash, a kill, no answer within
RULES_BUILD_TIMEOUT_S) raises
RulebookBuildFailed with what the child wrote to its standard error, and
`load_rulebook_quietly` then loads the rulebook in the worker, as before.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

from pos_engine.domain.rulebook import Rulebook
from pos_engine.rules_loader import Problem, RulebookError, load_rulebook

log = logging.getLogger(__name__)

# A build that takes longer than this is killed (a child stuck on a hung file system, say).
RULES_BUILD_TIMEOUT_S = 300.0
CHILD_NICENESS = 19
_STDERR_CHARS_MAX = 2000
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# At nice 19 from its first line: its imports (marshmallow, PyYAML) cost CPU too.
_CHILD_CODE = (
    f"import os, sys; os.nice({CHILD_NICENESS}); sys.path.insert(0, sys.argv[1]); "
    "from pos_engine.rules_build import main; sys.exit(main(sys.argv[2:]))"
)


class RulebookBuildFailed(RuntimeError):
    """The child process that builds the rulebook failed without an answer: no rulebook, and no verdict on the files."""


def load_rulebook_quietly(directory: Path) -> Rulebook:
    """The rulebook watcher's load: `build_in_child`, or `load_rulebook` in this process if the child failed."""
    try:
        return build_in_child(directory)
    except RulebookBuildFailed as error:
        log.warning("%s; loading the rulebook in this process instead", error)
        return load_rulebook(directory)


def build_in_child(directory: Path) -> Rulebook:
    """`load_rulebook(directory)`, run in a child process at nice 19.

    Raises:
        RulebookError: the rulebook was refused (the same problems `load_rulebook` lists).
        OSError: the files could not be read.
        RulebookBuildFailed: the child could not start, crashed, was killed or took longer than RULES_BUILD_TIMEOUT_S.
    """
    try:
        completed = subprocess.run(  # noqa: S603  # this interpreter, this module, a path
            _child_command(directory),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=RULES_BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RulebookBuildFailed(f"the rulebook build for {directory} took longer than {RULES_BUILD_TIMEOUT_S:.0f} s; killed") from None
    except OSError as error:  # the child could not be started (no memory for it, no interpreter at sys.executable)
        raise RulebookBuildFailed(f"the rulebook build for {directory} could not start: {error}") from error
    stderr = completed.stderr.decode("utf-8", "replace").strip()[-_STDERR_CHARS_MAX:]
    if completed.returncode != 0:
        status = completed.returncode
        raise RulebookBuildFailed(f"the rulebook build for {directory} failed (exit status {status}): {stderr or 'no message'}")
    return _read_answer(completed.stdout, directory)


def _child_command(directory: Path) -> list[str]:
    # This interpreter, and this same pos_engine first on the path, whatever the working directory,
    # PYTHONPATH or installed release (gunicorn --chdir or --pythonpath, a rolling upgrade).
    return [sys.executable, "-c", _CHILD_CODE, _PACKAGE_ROOT, str(directory)]


def _read_answer(answer: bytes, directory: Path) -> Rulebook:
    try:
        head = pickle.loads(answer)  # noqa: S301  # our own child's output, through a pipe
        if head[0] == "refused":
            raise RulebookError([Problem(*problem) for problem in head[1]])
        if head[0] == "unreadable":
            _kind, errno, strerror, filename = head
            raise OSError(errno, strerror, filename)
        _kind, version, campaigns, funders, examples = head
        return Rulebook(version, campaigns, funders, examples)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as error:
        raise RulebookBuildFailed(f"the rulebook build for {directory} gave an answer that could not be read: {error!r}") from error


def write_answer(directory: Path, out: BinaryIO) -> None:
    """What the child writes: the rulebook in `directory`, or why there is none."""
    try:
        rulebook = load_rulebook(directory)
    except RulebookError as error:
        pickle.dump(("refused", [(p.file, p.line, p.path, p.reason) for p in error.details]), out)
        return
    except OSError as error:
        pickle.dump(("unreadable", error.errno, error.strerror or str(error), error.filename), out)
        return
    pickle.dump(
        ("rulebook", rulebook.version, list(rulebook.campaigns.values()), list(rulebook.funders.values()), list(rulebook.examples)),
        out,
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def main(args: list[str]) -> int:
    """The child's work (_CHILD_CODE): args is the rules directory."""
    if len(args) != 1:
        print("usage: main([DIRECTORY])", file=sys.stderr)
        return 2
    write_answer(Path(args[0]), sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0
