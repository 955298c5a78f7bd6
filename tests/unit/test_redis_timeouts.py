"""A Redis call on the swipe path has a time limit; the CLI's whole-namespace commands have none."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pos_engine import cli
from pos_engine.config import Settings
from pos_engine.limits import REDIS_CONNECT_TIMEOUT_S, REDIS_SOCKET_TIMEOUT_S
from pos_engine.store.redis_counters import RedisCounterStore

URL = "redis://127.0.0.1:6379/0"  # nothing here connects: redis-py connects on first use


def timeouts(store: RedisCounterStore) -> tuple[object, object]:
    kwargs = store.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    return kwargs.get("socket_timeout"), kwargs.get("socket_connect_timeout")


def test_the_redis_client_gets_the_engine_s_socket_and_connect_timeouts() -> None:
    assert REDIS_SOCKET_TIMEOUT_S is not None
    assert timeouts(RedisCounterStore.from_url(URL)) == (REDIS_SOCKET_TIMEOUT_S, REDIS_CONNECT_TIMEOUT_S)
    assert Settings().redis_socket_timeout_s == REDIS_SOCKET_TIMEOUT_S


def test_the_url_overrides_the_engine_s_timeouts() -> None:
    store = RedisCounterStore.from_url(URL + "?socket_timeout=3&socket_connect_timeout=0.5")
    assert timeouts(store) == (3.0, 0.5)


@pytest.mark.parametrize("command", [["counters", "rebuild"], ["counters", "reconcile"]])
def test_rebuild_and_reconcile_wait_as_long_as_redis_takes(command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Deleting a city's counters is one script that runs for seconds: a 1 s limit would fail the rebuild.
    import pos_engine.api.app

    seen: list[Settings] = []

    def build_context(settings: Settings) -> None:
        seen.append(settings)
        raise SystemExit(0)  # the settings are all this test needs

    monkeypatch.setenv("POS_ENGINE_REDIS_URL", URL)
    (tmp_path / "engine.sqlite3").touch()  # these commands refuse a database file that is not there
    monkeypatch.setenv("POS_ENGINE_DATABASE_URL", f"sqlite:///{tmp_path}/engine.sqlite3")
    monkeypatch.setattr(pos_engine.api.app, "build_context", build_context)
    CliRunner().invoke(cli.main, command)
    assert [settings.redis_socket_timeout_s for settings in seen] == [None]
    assert seen[0].redis_url == URL


@pytest.mark.parametrize(
    "url",
    [
        "http://:s3cret@127.0.0.1:6379",
        "redis-cluster://:s3cret@127.0.0.1",
        "memcached://s3cret@x",
        "redis://:s3cret@127.0.0.1:port",
        "redis://:s3cret#x@127.0.0.1:6379",
    ],
)
def test_from_url_refuses_what_cannot_name_redis_without_repeating_the_url(url: str) -> None:
    with pytest.raises(ValueError, match=r"^the Redis URL (must start with redis://|cannot be used: )") as refused:
        RedisCounterStore.from_url(url)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("option", ["retry_on_timeout=true", "retry_on_error=TimeoutError"])
def test_a_url_asking_to_send_commands_again_is_refused(option: str) -> None:
    """A script that ran and whose reply was late (caps given back) would run twice."""
    with pytest.raises(ValueError, match=r"cannot be used: its option 'retry_on_(timeout|error)' would send a script again"):
        RedisCounterStore.from_url(f"redis://:s3cret@127.0.0.1:6379/0?{option}")
