"""Settings: one frozen dataclass read from the environment, with embedded defaults."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from pos_engine.domain.clock import Clock, SystemClock
from pos_engine.limits import LOOKUP_CACHE_TTL_S, REDIS_SOCKET_TIMEOUT_S, TERMINAL_STATEMENT_TIMEOUT_MS

DEFAULT_DATABASE_PATH = Path("var") / "pos-engine.sqlite3"
# Only for the embedded demo: production sets POS_ENGINE_CARD_KEY to a secret of its own.
DEMO_CARD_KEY = "pos-engine-demo-card-key-not-for-production"


LOOKUP_CACHE_TTL_S_RANGE = (0.0, 3600.0)  # 0 turns the caches off; an hour is longer than any operator would wait


class ConfigError(ValueError):
    """An environment variable the engine cannot use; the message names it and says why."""


def _seconds(env: os._Environ[str] | dict[str, str], name: str, default: float, bounds: tuple[float, float]) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not bounds[0] <= value <= bounds[1]:  # NaN and infinities too
        raise ConfigError(f"{name} must be a number of seconds from {bounds[0]:g} to {bounds[1]:g}, got {text!r}")
    return value


DATABASE_URL_HINT = "sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"
# The drivers the engine is built and tested with; postgres:// is read as postgresql:// (store.db.normalise_url).
DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg")


def _database_url(url: str) -> str:
    """`url` if the engine can use it: SQLite or PostgreSQL; the message never repeats it (it may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        driver = make_url(url).drivername
    except (ArgumentError, ValueError):
        raise ConfigError(f"POS_ENGINE_DATABASE_URL is not a database URL: give {DATABASE_URL_HINT}") from None
    if driver not in DATABASE_DRIVERS:
        raise ConfigError(
            f"POS_ENGINE_DATABASE_URL names {driver!r}: the engine runs on SQLite or PostgreSQL through psycopg ({DATABASE_URL_HINT})"
        )
    return url


def _redis_url(url: str | None) -> str | None:
    """`url` if it can name a Redis server or cluster; the message never repeats it (it may hold a password)."""
    if url is None:
        return None
    from pos_engine.store.redis_counters import check_url

    try:
        check_url(url)
    except ValueError as error:
        raise ConfigError(f"POS_ENGINE_REDIS_URL {error}") from None
    return url


@dataclass(frozen=True)
class Settings:
    """How this engine is wired: database, counter store, rulebook, keys."""

    database_url: str = f"sqlite:///{DEFAULT_DATABASE_PATH}"
    redis_url: str | None = None
    rules_dir: str = "rules"
    card_key: str = DEMO_CARD_KEY
    lookup_cache_ttl_s: float = LOOKUP_CACHE_TTL_S
    redis_namespace: str = "pos"
    # Seconds a Redis call may take before it fails (None: no limit, for the CLI's whole-namespace rebuilds).
    redis_socket_timeout_s: float | None = REDIS_SOCKET_TIMEOUT_S
    # Milliseconds PostgreSQL lets a statement of a terminal's request run (None: no limit, for the CLI).
    statement_timeout_ms: int | None = TERMINAL_STATEMENT_TIMEOUT_MS
    clock: Clock = field(default_factory=SystemClock)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read POS_ENGINE_* variables; unset ones take the embedded defaults.

        Raises:
            ConfigError: a variable's value cannot be used (named in the message).
        """
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            database_url=_database_url(env.get("POS_ENGINE_DATABASE_URL") or defaults.database_url),
            redis_url=_redis_url(env.get("POS_ENGINE_REDIS_URL") or None),
            rules_dir=env.get("POS_ENGINE_RULES_DIR") or defaults.rules_dir,
            card_key=env.get("POS_ENGINE_CARD_KEY") or defaults.card_key,
            lookup_cache_ttl_s=_seconds(env, "POS_ENGINE_LOOKUP_CACHE_TTL_S", defaults.lookup_cache_ttl_s, LOOKUP_CACHE_TTL_S_RANGE),
            redis_namespace=env.get("POS_ENGINE_REDIS_NAMESPACE") or defaults.redis_namespace,
        )
