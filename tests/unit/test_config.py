"""Settings.from_env takes every URL the engine can use as given, and names the variable of one it cannot."""

from __future__ import annotations

import pytest

from pos_engine.config import ConfigError, Settings


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("POS_ENGINE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pos"),
        ("POS_ENGINE_DATABASE_URL", "postgres://u:p%40ss@127.0.0.1/pos"),  # read as postgresql:// by store.db.normalise_url
        ("POS_ENGINE_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/pos?connect_timeout=5"),
        ("POS_ENGINE_DATABASE_URL", "sqlite://"),
        ("POS_ENGINE_DATABASE_URL", "sqlite:///var/relative.sqlite3"),
        ("POS_ENGINE_DATABASE_URL", "sqlite+pysqlite:////tmp/absolute.sqlite3"),
        ("POS_ENGINE_REDIS_URL", "redis://127.0.0.1:6379/2"),
        ("POS_ENGINE_REDIS_URL", "redis://user:p%40ss@127.0.0.1:6379/0?socket_timeout=3"),
        ("POS_ENGINE_REDIS_URL", "rediss://:secret@127.0.0.1:6380/0?ssl_cert_reqs=none"),
        ("POS_ENGINE_REDIS_URL", "unix:///run/redis.sock?db=1"),
        ("POS_ENGINE_REDIS_URL", "redis-cluster://127.0.0.1:7000"),
    ],
)
def test_a_url_the_engine_can_use_is_taken_as_given(variable: str, url: str) -> None:
    settings = Settings.from_env({variable: url})
    assert (settings.database_url if variable == "POS_ENGINE_DATABASE_URL" else settings.redis_url) == url


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("POS_ENGINE_DATABASE_URL", "mysql://u:secret@127.0.0.1/x"),
        ("POS_ENGINE_DATABASE_URL", "secret"),
        ("POS_ENGINE_DATABASE_URL", "postgresql+asyncpg://u:secret@127.0.0.1/x"),  # a driver the engine is not built on
        ("POS_ENGINE_REDIS_URL", "memcached://u:secret@127.0.0.1:11211"),
        ("POS_ENGINE_REDIS_URL", "redis://:secret@127.0.0.1:70000"),
        # A password's '#', '/', '?' not percent-encoded: urllib reads what follows as the port and quotes it.
        ("POS_ENGINE_REDIS_URL", "redis://:secret#x@127.0.0.1:6379"),
        ("POS_ENGINE_REDIS_URL", "redis://user:sec/ret@127.0.0.1"),
        ("POS_ENGINE_REDIS_URL", "rediss://:secret?@127.0.0.1:6380"),
        ("POS_ENGINE_REDIS_URL", "redis://[secret]:6379"),
        ("POS_ENGINE_REDIS_URL", "redis-cluster://:secret#x@127.0.0.1:7000"),
        # Readable by urllib, wrongly: host 'admin', port 7000, and the rest, password included, a path or a fragment.
        ("POS_ENGINE_REDIS_URL", "redis://admin:7000/secret@127.0.0.1:6379"),
        ("POS_ENGINE_REDIS_URL", "redis://:6380#secret@127.0.0.1:6379"),
        ("POS_ENGINE_REDIS_URL", "redis-cluster://admin:7000/secret@127.0.0.1:7000"),
    ],
)
def test_a_url_the_engine_cannot_use_names_its_variable_and_not_its_secret(variable: str, url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: url})
    assert str(refused.value).startswith(variable)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@127.0.0.1:6379/0?password=secret", "redis://***@127.0.0.1:6379/0"),
        ("redis://user:sec/ret@127.0.0.1:6379", "redis://***@127.0.0.1:6379"),
        ("redis://admin:7000/secret@127.0.0.1:6379", "redis://***@127.0.0.1:6379"),
        ("redis-cluster://:se#cret@127.0.0.1:7000", "redis-cluster://***@127.0.0.1:7000"),
        ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock"),
        ("redis:secret@127.0.0.1", "***"),
    ],
)
def test_a_redis_url_in_a_message_shows_no_password_however_it_is_written(url: str, shown: str) -> None:
    from pos_engine.cli import _redact_redis

    assert _redact_redis(url) == shown
