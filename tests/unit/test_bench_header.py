"""The bench's first line says how many cores gunicorn and wrk may use."""

from __future__ import annotations

import os

import pytest

from loadtests import bench


def test_all_cores_are_named_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert bench._cores() == "2 cores"


def test_a_pinned_bench_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # taskset -c 1 python -m loadtests.bench: gunicorn and wrk inherit the one core.
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert bench._cores() == "gunicorn and wrk on 1 of 2 cores"
