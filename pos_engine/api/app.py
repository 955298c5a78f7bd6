"""The app factory: `create_app(settings)` wires store, counters, rulebook and blueprints."""

from __future__ import annotations

import contextlib
import http
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from flask import Flask, Response
from flask_smorest import Api
from werkzeug.routing import Rule

from pos_engine import __version__
from pos_engine.api.errors import PROBLEM_MIMETYPE, register_error_handlers
from pos_engine.api.lane import SwipeLane
from pos_engine.config import Settings
from pos_engine.limits import REQUEST_BODY_BYTES_MAX
from pos_engine.rules_watch import RulebookWatcher, fingerprint
from pos_engine.service.context import EngineContext
from pos_engine.service.ports import CounterStore
from pos_engine.service.responses import encode

log = logging.getLogger(__name__)
HEALTH_PROBE_ID = "healthz-probe"  # a terminal id no till has: looking it up proves the database answers
HEALTH_PROBE_COUNTER = "healthz:probe"  # a counter no rule names: reading it (0) proves the store answers
HEALTH_ERROR_CHARS_MAX = 200


# Every terminal request is signed with these three headers (see the terminal tag's description).
TERMINAL_SECURITY = {
    "terminalId": {"type": "apiKey", "in": "header", "name": "X-Terminal-Id"},
    "timestamp": {"type": "apiKey", "in": "header", "name": "X-Timestamp", "description": "unix seconds"},
    "signature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Signature",
        "description": "hex HMAC-SHA256 of METHOD\\nPATH\\nTIMESTAMP\\nSHA256_HEX(BODY), keyed with the terminal's secret",
    },
}


class _Api(Api):  # type: ignore[misc]
    """flask-smorest's Api without its own error format: pos_engine.api.errors owns errors.

    So the responses it documents for every operation ("default") and every status are
    RFC 9457 problems, as the engine sends them, not flask-smorest's own error shape.
    """

    def _register_error_handlers(self) -> None:
        pass

    def _register_responses(self) -> None:
        from flask_smorest.utils import prepare_response

        from pos_engine.api.schemas import ProblemSchema

        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if not (100 <= status < 200) and status not in (204, 304):
                response["schema"] = ProblemSchema
            prepare_response(response, self.spec, PROBLEM_MIMETYPE)
            self.spec.components.response(status.name, response, lazy=True)
        default = {"description": "any other error: a problem with a stable `code`", "schema": ProblemSchema}
        prepare_response(default, self.spec, PROBLEM_MIMETYPE)
        self.spec.components.response("DEFAULT_ERROR", default, lazy=True)


def _probe_counters(counters: CounterStore) -> None:
    """What a swipe needs of a counter store apart from the database: it answers, and keeps its counters."""
    counters.read([HEALTH_PROBE_COUNTER])
    counters.check_settings()


def _document_healthz(api: _Api, rule: Rule) -> None:
    """/healthz is a plain Flask route (unsigned, for load balancers): describe it in the OpenAPI document by hand."""
    from pos_engine.api.schemas import HealthSchema

    api.spec.components.schema("Health", schema=HealthSchema)
    health = {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}
    api.spec.path(
        rule=rule,
        operations={
            "get": {
                "summary": "Whether this worker can serve swipes (unsigned).",
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": {"description": "ok: the database (and Redis) answer", "content": health},
                    "503": {
                        "description": "unavailable: the database or Redis does not answer, or Redis may evict counters",
                        "content": health,
                    },
                },
            }
        },
    )


def build_context(settings: Settings) -> EngineContext:
    """Open the database, the counter store and the rulebook named by `settings`."""
    from pos_engine.rules_loader import load_rulebook
    from pos_engine.store.counters import counter_store_from_url
    from pos_engine.store.db import Database, SqlRegistry
    from pos_engine.store.migrate import check_schema

    database = Database(settings.database_url, statement_timeout_ms=settings.statement_timeout_ms)
    check_schema(database.engine)  # raises SchemaNotCurrent if `pos-engine init-db` must run first
    return EngineContext(
        unit_of_work=database.unit_of_work,
        single_statement=database.single_statement,
        swipe_transaction=database.swipe_transaction,
        read_snapshot=database.read_snapshot,
        registry=SqlRegistry(database),
        counters=counter_store_from_url(
            settings.redis_url, database, namespace=settings.redis_namespace, socket_timeout_s=settings.redis_socket_timeout_s
        ),
        rulebook=load_rulebook(settings.rules_dir),
        clock=settings.clock,
        card_key=settings.card_key.encode("utf-8"),
        lookup_cache_ttl_s=settings.lookup_cache_ttl_s,
    )


def create_app(
    settings: Settings | None = None, context: EngineContext | None = None, *, watch_rules: bool | None = None, start: bool = True
) -> Flask:
    """Build the Flask app; a broken rulebook stops it here with file, path and reason.

    With `watch_rules` (the default when the app builds its own context), a
    changed rulebook is reloaded within seconds, and a broken one refused.
    Without `start` this process starts no thread (the card directory, the
    registry snapshot, the rulebook watcher): a process forked from it starts
    them in `EngineContext.start` or at its first request (`gunicorn --preload`).
    """
    settings = settings or Settings.from_env()
    app = Flask("pos_engine")
    app.config.update(
        MAX_CONTENT_LENGTH=REQUEST_BODY_BYTES_MAX,
        API_TITLE="pos-engine",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": TERMINAL_SECURITY},
            "security": [{name: [] for name in TERMINAL_SECURITY}],  # all three headers, on every operation
        },
        JSON_SORT_KEYS=False,
    )
    watching = watch_rules if watch_rules is not None else context is None
    seen = None
    if watching and context is None:
        # Before the rulebook is read: a file edited while it is read is loaded again at the first poll.
        with contextlib.suppress(OSError):  # the watcher tries again, and the load says what is wrong
            seen = fingerprint(Path(settings.rules_dir))
    ctx = context or build_context(settings)
    app.extensions["pos_engine"] = ctx
    watcher: RulebookWatcher | None = None
    if watching:
        from pos_engine.rules_build import load_rulebook_quietly
        from pos_engine.rules_loader import load_rulebook

        # A reload's rulebook is built in a child process at nice 19, off the swipes' cores and GIL; a forked
        # worker catching up before it serves loads it itself.
        watcher = RulebookWatcher(
            Path(settings.rules_dir), load_rulebook_quietly, ctx.replace_rulebook, seen=seen, load_at_start=load_rulebook
        )
        ctx.run_in_each_process(watcher.thread)
    app.extensions["pos_engine_rules_watcher"] = watcher
    if start:
        ctx.start()  # each gunicorn worker builds its app after the fork: its card directory loads now
    app.extensions["pos_engine_started"] = start  # else pos_engine.serving.start_forked_worker
    api = _Api(app)
    from pos_engine.api import terminal

    api.register_blueprint(terminal.blp)
    register_error_handlers(app)
    # Plainly well-formed swipes are answered in front of Flask; everything else reaches it untouched.
    app.wsgi_app = SwipeLane(app.wsgi_app, ctx)  # type: ignore[method-assign]

    @app.get("/healthz")
    def healthz() -> Any:
        """200 while this worker can serve swipes; 503, naming what is down, when it cannot reach its stores.

        A broken rulebook on disk (the engine keeps the one it had) and a card directory still loading
        (swipes ask the database meanwhile) are reported, but serving goes on: 200.
        """
        ctx.ensure_background()  # a worker forked after the app was built (--preload) reports its own watcher
        body: dict[str, Any] = {"status": "ok", "rules_version": ctx.rulebook.version}
        probes: list[tuple[str, Callable[[], object]]] = [
            # A terminal look-up, as a swipe from an unknown till makes it (the terminals' statement limits).
            ("database", lambda: ctx.registry.terminal(HEALTH_PROBE_ID)),
        ]
        if not ctx.counters.transactional:  # the SQL counter store lives in the database just probed
            probes.append(("counters", partial(_probe_counters, ctx.counters)))
        for name, probe in probes:
            try:
                probe()
            except Exception as error:  # what a swipe would meet: answered here as unavailable
                log.warning("health check: the %s cannot serve swipes: %s", name, error)
                body["status"] = "unavailable"
                body[f"{name}_error"] = f"{type(error).__name__}: {error}"[:HEALTH_ERROR_CHARS_MAX]
        if watcher is not None and watcher.last_error:
            body["rules_reload_error"] = watcher.last_error
        if ctx.cards is not None:
            body["card_directory"] = "ready" if ctx.cards.ready else "loading"
            if ctx.cards.last_error:
                body["card_directory_error"] = ctx.cards.last_error
        return Response(encode(body), status=200 if body["status"] == "ok" else 503, mimetype="application/json")

    _document_healthz(api, next(rule for rule in app.url_map.iter_rules() if rule.endpoint == "healthz"))
    return app
