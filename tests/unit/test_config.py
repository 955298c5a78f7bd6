"""Settings.from_env takes every URL the engine can use as given, and names the variable of one it cannot."""

from __future__ import annotations

import pytest

from pos_engine.config import ConfigError, Settings


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/pos",
        "postgres://u:p%40ss@127.0.0.1/pos",  # read as postgresql:// by store.db.normalise_url
        "postgresql+psycopg://u@127.0.0.1/pos?connect_timeout=5",
        "sqlite://",
        "sqlite:///var/relative.sqlite3",
        "sqlite+pysqlite:////tmp/absolute.sqlite3",
    ],
)
def test_a_database_url_the_engine_can_use_is_taken_as_given(url: str) -> None:
    assert Settings.from_env({"POS_ENGINE_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/2",
        "redis://user:p%40ss@127.0.0.1:6379/0?socket_timeout=3",
        "rediss://:secret@127.0.0.1:6380/0?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=1",
        "redis-cluster://127.0.0.1:7000",
    ],
)
def test_a_redis_url_the_engine_can_use_is_taken_as_given(url: str) -> None:
    assert Settings.from_env({"POS_ENGINE_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("POS_ENGINE_DATABASE_URL", "mysql://u:secret@127.0.0.1/x"),
        ("POS_ENGINE_DATABASE_URL", "secret"),
        ("POS_ENGINE_DATABASE_URL", "postgresql+asyncpg://u:secret@127.0.0.1/x"),  # a driver the engine is not built on
        ("POS_ENGINE_REDIS_URL", "memcached://u:secret@127.0.0.1:11211"),
        ("POS_ENGINE_REDIS_URL", "redis://:secret@127.0.0.1:70000"),
    ],
)
def test_a_url_the_engine_cannot_use_names_its_variable_and_not_its_secret(variable: str, url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: url})
    assert str(refused.value).startswith(variable)
    assert "secret" not in str(refused.value)
