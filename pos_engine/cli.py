"""The `pos-engine` command."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import click

from pos_engine.config import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        _fail(str(error))


def _admin_settings() -> Settings:
    """Settings for commands that may run one long Redis script or SQL statement over everything: no time limits."""
    return replace(_settings(), redis_socket_timeout_s=None, statement_timeout_ms=None)


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


def _context(settings: Settings) -> Any:
    from pos_engine.api.app import build_context
    from pos_engine.rules_loader import RulebookError
    from pos_engine.store.migrate import SchemaNotCurrent

    try:
        return build_context(settings)
    except RulebookError as error:
        _fail(f"the rulebook in {settings.rules_dir} is invalid:\n{error}")
    except SchemaNotCurrent as error:
        _fail(f"POS_ENGINE_DATABASE_URL ({_redact(settings.database_url)}): {error}")


def _database(settings: Settings) -> Any:
    """The database, once its schema is known to be the one this release needs (as `build_context` checks it)."""
    from pos_engine.store.db import Database
    from pos_engine.store.migrate import SchemaNotCurrent, check_schema

    database = Database(settings.database_url)
    try:
        check_schema(database.engine)
    except SchemaNotCurrent as error:
        _fail(f"POS_ENGINE_DATABASE_URL ({_redact(settings.database_url)}): {error}")
    return database


def _existing_database(settings: Settings) -> Settings:
    """`settings`, once its SQLite file is known to exist: a command that reads a database never creates an empty one."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    uri_mode = url.query.get("uri") in ("true", "1")  # sqlite:///file:PATH?mode=…&uri=true: SQLite reads the name itself
    named = url.database not in (None, "", ":memory:")
    if url.get_backend_name() == "sqlite" and named and not uri_mode and not Path(str(url.database)).exists():
        _fail(f"POS_ENGINE_DATABASE_URL ({_redact(settings.database_url)}): no database at {url.database}; run `pos-engine init-db` first")
    return settings


def _service_failure(error: BaseException) -> str | None:
    """A plain message for the database or Redis failing under a command (unreachable, refusing); None otherwise.

    Only failures of the service itself: any other database error (a broken
    constraint, bad SQL) is a bug, and keeps its traceback.
    """
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    redis_exceptions = sys.modules.get("redis.exceptions")
    if sqlalchemy_exc is not None and isinstance(error, sqlalchemy_exc.DBAPIError):
        orig = getattr(error, "orig", None)
        lines = str(orig or error).strip().splitlines()
        cause = lines[0] if lines else type(orig or error).__name__
        sqlite_error = getattr(orig, "sqlite_errorname", None)  # sqlite3 raises OperationalError for bad SQL too
        # (A missing schema never gets here: _context and _database check it first, store.migrate.check_schema.)
        if not isinstance(error, sqlalchemy_exc.OperationalError | sqlalchemy_exc.InterfaceError) or (
            sqlite_error is not None and not sqlite_error.startswith(_SQLITE_SERVICE_ERRORS)
        ):
            return None
        return _naming("POS_ENGINE_DATABASE_URL", lambda settings: _redact(settings.database_url), f"the database failed: {cause}")
    if redis_exceptions is not None and (
        isinstance(error, redis_exceptions.ConnectionError | redis_exceptions.TimeoutError)
        or (isinstance(error, redis_exceptions.RedisClusterException) and str(error).startswith("Redis Cluster cannot be connected"))
    ):
        return _naming("POS_ENGINE_REDIS_URL", lambda settings: _redact_redis(settings.redis_url or ""), f"Redis failed: {error}")
    return None


# SQLite's result codes for a file it cannot use (locked, unreadable, full, damaged), not for a statement that is wrong.
_SQLITE_SERVICE_ERRORS = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
    "SQLITE_READONLY",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
)


def _naming(variable: str, shown_url: Callable[[Settings], str], what: str) -> str | None:
    try:
        settings = Settings.from_env()
    except ConfigError:  # the command read them once already; if they changed under it, keep the original error
        return None
    return f"{variable} ({shown_url(settings)}): {what}"


class _Main(click.Group):
    """The command group: a database or Redis that fails under any command gets one plain line and exit 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            message = _service_failure(error)
            if message is None:
                raise
            _fail(message)


MOVED_CARDS_SHOWN = 50  # lines of an import's moved cards shown; the rest are counted


def _counted(count: int, noun: str) -> str:
    """'1 member', '2 members'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


@click.group(cls=_Main)
def main() -> None:
    """pos-engine: the union-card subsidy engine. Configured by POS_ENGINE_* environment variables."""


@main.command("init-db")
def init_db() -> None:
    """Create or migrate the database schema."""
    from pos_engine.store.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo(f"schema is up to date ({_redact(settings.database_url)})")


@main.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="where to write credentials JSON")
@click.option("--reset", is_flag=True, help="wipe registry, ledger and counters and load a fresh world")
def demo(out: Path, reset: bool) -> None:
    """Load the demo world (migrating the schema first) and write its credentials as JSON."""
    from pos_engine.demo import load_demo
    from pos_engine.domain.clock import local
    from pos_engine.store.migrate import upgrade

    settings = _admin_settings()
    upgrade(settings.database_url)
    ctx = _context(settings)
    year = local(settings.clock.now()).year
    credentials = load_demo(_database(settings), settings.card_key.encode("utf-8"), year, reset=reset)
    if reset:
        ctx.counters.reset()
    try:
        _write_private(out, json.dumps(credentials.as_json(), indent=2) + "\n")
    except OSError as error:
        _fail(
            f"{out}: cannot write: {error.strerror or error}. The demo world is loaded; "
            "`pos-engine demo --out FILE` again (without --reset) writes its credentials, the same ones"
        )
    cards = credentials.cards
    click.echo(
        f"demo world ready: {len(credentials.terminals)} terminals, {len(cards['usable'])} usable cards "
        f"(+{len(cards['lost'])} lost, {len(cards['review_due'])} review due, {len(cards['not_in_service'])} not in service); "
        f"credentials in {out}"
    )


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only, whole or not at all.

    A regular file (new, or an older one replaced) is written beside itself and renamed into place,
    so a full disk or an interrupt leaves the old file or none, never half of one. The command's own
    output (`/dev/stdout`, whatever it is redirected to) is written through it; another file that
    is not a regular one (a pipe, `<(…)`, a device) is written as it is. An existing file in a
    directory its owner may not write is rewritten in place, once it is made owner-only.
    """
    try:
        status: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        status = None
    if status is not None:
        for stream in (sys.stdout, sys.stderr):
            try:
                own = os.path.samestat(status, os.fstat(stream.fileno()))
            except (OSError, ValueError, AttributeError):  # a stream with no file behind it (io.UnsupportedOperation is an OSError)
                own = False
            if own:
                stream.write(text)
                stream.flush()
                return
        if not stat.S_ISREG(status.st_mode):
            with open(path, "w", encoding="utf-8") as stream:
                stream.write(text)
            return
    target = Path(os.path.realpath(path))  # a symbolic link's target is replaced, not the link
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # mode 0600
    except PermissionError:
        if status is None:
            raise
        os.chmod(target, 0o600)  # not the owner: refused here, before any secret is written
        descriptor, temporary = os.open(target, os.O_WRONLY | os.O_TRUNC), ""
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if temporary:
            os.replace(temporary, target)
    except BaseException:
        if temporary:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself outlives a crash once its directory is flushed
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def serve(host: str, port: int) -> None:
    """Run a local server (production runs `gunicorn pos_engine.wsgi:app`)."""
    from pos_engine.api.app import create_app

    settings = _existing_database(_settings())
    app = create_app(settings, _context(settings), watch_rules=True)  # reloads a changed rulebook, as gunicorn's workers do
    click.echo(f"pos-engine serving on http://{host}:{port} (rules {app.extensions['pos_engine'].rulebook.version})")
    app.run(host=host, port=port, threaded=True)


@main.group()
def rules() -> None:
    """The YAML rulebook."""


@rules.command("check")
@click.argument("directory", type=click.Path(path_type=Path))
def rules_check(directory: Path) -> None:
    """Validate a rulebook directory and run its worked examples."""
    from pos_engine.rules_loader import RulebookError, load_rulebook, run_examples

    try:
        rulebook = load_rulebook(directory)
    except RulebookError as error:
        _fail(str(error))
        return
    failures = run_examples(rulebook)
    if failures:
        _fail("\n".join(failures))
    click.echo(
        f"{directory}: {len(rulebook.campaigns)} campaigns, {rulebook.rule_count} rules, "
        f"{len(rulebook.examples)} examples pass; version {rulebook.version}"
    )


@main.group()
def counters() -> None:
    """Caps and budgets: a cache of the ledger."""


@counters.command("rebuild")
@click.option(
    "--under-traffic",
    is_flag=True,
    help="Redis counters: write at once, without waiting for quiet terminals; a swipe meanwhile is lost from its counters.",
)
def counters_rebuild(under_traffic: bool) -> None:
    """Recompute every counter from the ledger; drop those of periods that are over.

    With Redis counters it first waits until terminals are quiet (no swipe has reserved caps for
    as long as a request's claim lasts, then a few seconds more), and stops, exit 1, if a swipe
    changes a counter before it has written.
    """
    from pos_engine.limits import REBUILD_SETTLE_S, REQUEST_CLAIM_S
    from pos_engine.service.counters import rebuild_counters
    from pos_engine.service.errors import CountersBusy

    ctx = _context(_existing_database(_admin_settings()))
    if not ctx.counters.transactional and not under_traffic:
        click.echo(
            f"waiting until terminals are quiet (no swipe has reserved caps for {REQUEST_CLAIM_S} s, then {REBUILD_SETTLE_S:g} s more)",
            err=True,
        )
    try:
        count = rebuild_counters(ctx, under_traffic=under_traffic)
    except CountersBusy as error:
        _fail(str(error))
    click.echo(f"rebuilt {count} counters from the ledger")


@counters.command("expire")
@click.option(
    "--everything",
    is_flag=True,
    help="Redis: read every counter's time to live, not only those swipes noted as created without one"
    " (its first run on a namespace does, and then one run a week; ask for it once after workers of an earlier"
    " release, whose swipes did not note them, ran beside that first run).",
)
def counters_expire(everything: bool) -> None:
    """Drop counters of periods that are over; give Redis counters their time to live (swipes create them without).

    Safe while terminals swipe: run it hourly, from cron, with either counter store. With Redis it reads only
    the counters swipes created since its last run, except with --everything, on its first run and then once a
    week, which read every counter (seconds on a million, with a longer tail for the swipes meanwhile).
    """
    from pos_engine.service.counters import expire_counters

    ctx = _context(_existing_database(_admin_settings()))
    dropped, timed = expire_counters(ctx, everything=everything)
    click.echo(f"dropped {dropped} counters of periods that are over; gave {timed} counters a time to live")


@counters.command("reconcile")
def counters_reconcile() -> None:
    """Compare every counter of a period still open with the ledger; exit 1 and list them if any differ."""
    from pos_engine.service.counters import reconcile_counters

    ctx = _context(_existing_database(_admin_settings()))
    differences = reconcile_counters(ctx)
    if not differences:
        click.echo("counters agree with the ledger")
        return
    for difference in differences:
        click.echo(f"{difference.key}: ledger {difference.ledger_value}, stored {difference.stored_value}")
    if ctx.counters.transactional:
        _fail(f"{len(differences)} counters differ from the ledger; `pos-engine counters rebuild` restores them")
    _fail(
        f"{len(differences)} counters differ from the ledger. Under traffic, swipes in flight show as counters ahead of it:"
        " run reconcile again when terminals are quiet, and `pos-engine counters rebuild` (which waits for quiet) restores them"
    )


@main.group("import")
def import_() -> None:
    """Bulk CSV imports; a file with any bad line is refused whole."""


@import_.command("members")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_members_command(file: Path) -> None:
    """Import members and their cards.

    Columns: member_id, name, unit_id, union_id, district, groups (';'-separated),
    in_service (true/false), annual_review_year, card_number, card_status.
    """
    from pos_engine.jobs.imports import ImportError_, import_members

    settings = _existing_database(_settings())
    try:
        result = import_members(_database(settings), settings.card_key.encode("utf-8"), file)
    except ImportError_ as error:
        _fail(f"{file} refused, nothing imported:\n{error}")
        return
    click.echo(f"imported {_counted(result.rows, 'member')}")
    if result.moved_cards:
        # Imported as the file says; but a card number under another member is as often a typo as a transfer.
        click.echo(f"warning: {_counted(len(result.moved_cards), 'card')} moved from another member; check that each was meant:", err=True)
        for moved in result.moved_cards[:MOVED_CARDS_SHOWN]:
            click.echo(f"  {moved}", err=True)
        if len(result.moved_cards) > MOVED_CARDS_SHOWN:
            click.echo(f"  … and {len(result.moved_cards) - MOVED_CARDS_SHOWN} more", err=True)


@import_.command("merchants")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--secrets-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="a new file for the new terminals' secrets (JSON, readable by its owner only); needed when the import creates terminals",
)
def import_merchants_command(file: Path, secrets_out: Path | None) -> None:
    """Import merchants: merchant_id,name,category,district,status[,terminal_id].

    A new terminal's secret is shown once, in the --secrets-out file, written before the import commits:
    if it cannot be written, nothing is imported.
    """
    from pos_engine.jobs.imports import ImportError_, import_merchants

    def deliver(new_secrets: dict[str, str]) -> None:
        if secrets_out is None:
            raise ImportError_([f"{len(new_secrets)} new terminals: give --secrets-out FILE to receive their secrets (shown once)"])
        try:
            # A new file only: overwriting one would lose the secrets of an earlier import.
            descriptor = os.open(secrets_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ImportError_([f"{secrets_out}: already exists; secrets go to a new file (move the old one away first)"]) from None
        except OSError as error:
            raise ImportError_([f"{secrets_out}: cannot write: {error.strerror}"]) from error
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(json.dumps(new_secrets, indent=2))
        except BaseException as error:  # a full disk, an interrupt: no half-written secrets file, and no import
            with contextlib.suppress(OSError):
                secrets_out.unlink()
            if isinstance(error, OSError):
                raise ImportError_([f"{secrets_out}: cannot write: {error.strerror or error}"]) from error
            raise
        delivered.append(secrets_out)

    delivered: list[Path] = []
    settings = _existing_database(_settings())
    try:
        result = import_merchants(_database(settings), file, deliver_secrets=deliver)
    except ImportError_ as error:
        _fail(f"{file} refused, nothing imported:\n{error}")
    except BaseException:
        # The secrets went out before the commit, which then failed: whether the terminals exist is
        # for the operator to check (a commit whose answer was lost may still have happened).
        for path in delivered:
            click.echo(f"{path} was written before the import failed: check that its terminals exist before handing it out", err=True)
        raise
    click.echo(f"imported {result.rows} merchants, {len(result.new_terminal_secrets)} new terminals")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    # libpq also takes secrets as query parameters (?password=…, ?sslpassword=…)
    return make_url(url).difference_update_query(["password", "sslpassword"]).render_as_string(hide_password=True)


def _redact_redis(url: str) -> str:
    """`url` without what could be a secret: all before the last '@' (`redis://PASSWORD@host` is a password too) and the query.

    The last '@' of the whole URL, not of urllib's host part: a password's unencoded '/' would end that early.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:  # not a URL that the settings let through: nothing of it is shown
        return "***"
    _user, at, after = rest.rpartition("@")
    shown = after if at else rest
    shown = shown.partition("?")[0].partition("#")[0]
    return f"{scheme}{separator}{'***@' if at else ''}{shown}"


if __name__ == "__main__":
    main()
