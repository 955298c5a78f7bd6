"""The bench notices a run (at saturation or at the moderate rate) that left some gunicorn workers without work, and runs it again."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtests import bench


def test_a_worker_with_under_a_tenth_of_the_busiest_ones_cpu_counts_as_idle() -> None:
    before = {101: 1.0, 102: 1.0, 103: 1.0, 104: 1.0, 105: 1.0}
    after = {101: 5.0, 102: 4.6, 103: 1.3, 104: 1.41, 105: 1.0}  # spent 4.0, 3.6, 0.3, 0.41, 0.0
    assert bench.idle_workers(before, after) == 2


def test_evenly_busy_workers_and_a_worker_born_meanwhile_are_not_idle() -> None:
    # a worker missing from the first reading (restarted meanwhile) counts from zero
    assert bench.idle_workers({1: 2.0, 2: 2.5}, {1: 6.0, 2: 6.1, 3: 3.9}) == 0
    assert bench.idle_workers({}, {}) == 0


def test_worker_cpu_reads_the_children_of_the_given_master_from_proc() -> None:
    # this test process is a child of its parent: reading the parent's children finds it
    workers = bench.worker_cpu_s(os.getppid())
    assert os.getpid() in workers
    assert workers[os.getpid()] > 0
    assert bench.process_cpu_s(os.getppid())["workers"] >= workers[os.getpid()]


def _target(master: int) -> bench.Result:
    """A target served by the gunicorn whose master is `master`, with one terminal and one card to sign requests for."""
    return bench.Result("target", "target", bench.Credentials([("t-1", "secret", "m-1")], ["6200000000000001"]), server_pid=master)


def _replay_proc(
    monkeypatch: pytest.MonkeyPatch, readings: Iterator[bench.Processes], cores: Iterator[tuple[float, float]] | None = None
) -> None:
    """Each reading of /proc the bench takes is the next of `readings` (and of `cores`, idle and core seconds, if given)."""
    monkeypatch.setattr(bench, "_processes", lambda: iter(next(readings)))
    if cores is not None:
        monkeypatch.setattr(bench, "_cores_now", lambda: next(cores))


def test_a_saturation_run_that_left_a_worker_idle_is_run_again_and_only_the_full_run_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = 900
    # /proc readings around each attempt: in the first, worker 902 spent nothing; in the second, all three worked
    readings = iter(
        [
            [(901, master, "gunicorn", 1.0), (902, master, "gunicorn", 1.0), (903, master, "gunicorn", 1.0), (50, 1, "postgres", 0.0)],
            [(901, master, "gunicorn", 5.0), (902, master, "gunicorn", 1.0), (903, master, "gunicorn", 5.0), (50, 1, "postgres", 2.0)],
            [(901, master, "gunicorn", 5.0), (902, master, "gunicorn", 1.0), (903, master, "gunicorn", 5.0), (50, 1, "postgres", 2.0)],
            [(901, master, "gunicorn", 8.0), (902, master, "gunicorn", 4.0), (903, master, "gunicorn", 8.0), (50, 1, "postgres", 3.0)],
        ]
    )
    runs = iter([{"rps": 700.0, "requests": 7_000, "errors": 2}, {"rps": 1_000.0, "requests": 10_000, "errors": 0}])
    request_files: list[str] = []

    def run_wrk(url: str, requests_file: Path, seconds: int, connections: int, delay_ms: float = 0) -> dict[str, Any]:
        request_files.append(requests_file.read_text())
        return {**next(runs), "p99_us": 9_000, "wrapped": False}

    # idle and core seconds around each attempt: the set-aside run left its cores 50 % idle, the kept one 10 %
    cores = iter([(100.0, 1_000.0), (110.0, 1_020.0), (110.0, 1_020.0), (114.0, 1_060.0)])
    _replay_proc(monkeypatch, readings, cores)
    monkeypatch.setattr(bench, "run_wrk", run_wrk)
    monkeypatch.setattr(bench, "REQUESTS_PER_SECOND_GUESS_MAX", 5)
    result = _target(master)
    bench.measure_saturation(result, seconds=2, scratch=tmp_path, seed=1)

    assert result.saturation_rps_runs == [1_000.0]
    assert result.cpu_requests == 10_000
    assert result.cpu_s["workers"] == pytest.approx(3.0 + 3.0 + 3.0)
    assert result.cpu_s["PostgreSQL"] == pytest.approx(1.0)
    assert (result.idle_s, result.core_s) == (pytest.approx(4.0), pytest.approx(40.0))
    assert result.errors == 2  # the set-aside run's errors still count
    assert len(result.notes) == 1
    assert "1 of 3 workers took no connections" in result.notes[0]
    assert "ran it again" in result.notes[0]
    # the second run sent requests of its own (a repeated request id would be a replay, not a swipe)
    first_ids = {json.loads(line.split("\t")[3])["request_id"] for line in request_files[0].splitlines()}
    second_ids = {json.loads(line.split("\t")[3])["request_id"] for line in request_files[1].splitlines()}
    assert first_ids and second_ids and not first_ids & second_ids


def test_a_saturation_run_is_kept_after_the_last_attempt_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master = 900
    idle_pair = [
        [(901, master, "gunicorn", 1.0), (902, master, "gunicorn", 1.0)],
        [(901, master, "gunicorn", 5.0), (902, master, "gunicorn", 1.0)],
    ]
    readings = iter(idle_pair * bench.RUN_ATTEMPTS_MAX)
    _replay_proc(monkeypatch, readings)
    monkeypatch.setattr(
        bench, "run_wrk", lambda *args, **kwargs: {"rps": 500.0, "requests": 5_000, "errors": 0, "p99_us": 9_000, "wrapped": False}
    )
    monkeypatch.setattr(bench, "REQUESTS_PER_SECOND_GUESS_MAX", 5)
    result = _target(master)
    bench.measure_saturation(result, seconds=2, scratch=tmp_path, seed=1)

    assert result.saturation_rps_runs == [500.0]
    assert len(result.notes) == bench.RUN_ATTEMPTS_MAX
    assert f"kept it, after {bench.RUN_ATTEMPTS_MAX} runs" in result.notes[-1]


def test_the_moderate_rate_is_measured_again_when_a_worker_took_no_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master = 900
    readings = iter(
        [
            [(901, master, "gunicorn", 1.0), (902, master, "gunicorn", 1.0)],
            [(901, master, "gunicorn", 3.0), (902, master, "gunicorn", 1.0)],  # 902 idle
            [(901, master, "gunicorn", 3.0), (902, master, "gunicorn", 1.0)],
            [(901, master, "gunicorn", 4.0), (902, master, "gunicorn", 2.0)],
        ]
    )
    runs = iter(
        [
            {"rps": 400.0, "requests": 4_000, "errors": 0, "p50_us": 3_000, "p95_us": 9_000, "p99_us": 15_000, "wrapped": False},
            {"rps": 500.0, "requests": 5_000, "errors": 0, "p50_us": 2_000, "p95_us": 4_000, "p99_us": 6_000, "wrapped": False},
        ]
    )
    _replay_proc(monkeypatch, readings)
    monkeypatch.setattr(bench, "run_wrk", lambda *args, **kwargs: next(runs))
    result = _target(master)
    bench.measure_moderate(result, seconds=1, rate_rps=10.0, scratch=tmp_path)

    assert (result.moderate_rps, result.p50_ms, result.p95_ms, result.p99_ms) == (500.0, 2.0, 4.0, 6.0)
    assert len(result.notes) == 1
    assert result.notes[0].startswith("moderate: 1 of 2 workers took no connections")


PROC_STAT = """\
cpu  900 10 300 5000 70 0 20 0 0 0
cpu0 400 5 100 2000 30 0 10 0 0 0
cpu1 300 5 100 1500 25 0 5 0 0 0
cpu2 200 0 100 1500 15 0 5 0 0 0
intr 123456 0 0
ctxt 987654
"""


def test_idle_seconds_are_idle_and_iowait_ticks_of_the_benchs_own_cores() -> None:
    # cpu0 and cpu1 only: not the machine-wide "cpu" line, not cpu2
    assert bench.cores_idle_s(PROC_STAT, {0, 1}) == pytest.approx((2000 + 30 + 1500 + 25) / bench.CLOCK_TICKS_PER_S)
    assert bench.cores_idle_s(PROC_STAT, {2}) == pytest.approx((1500 + 15) / bench.CLOCK_TICKS_PER_S)
    # this machine's own /proc/stat reads, and its cores have been idle a while since boot
    assert bench.cores_idle_s(Path("/proc/stat").read_text(), os.sched_getaffinity(0)) > 0


def test_the_line_gives_the_share_of_the_cores_left_idle_at_saturation() -> None:
    result = _target(900)
    result.saturation_rps_runs = [1_000.0]
    result.cpu_s, result.cpu_requests = {"workers": 8.0, "wrk": 1.0}, 10_000
    assert "cores idle" not in bench._line(result)  # nothing measured: nothing said
    result.idle_s, result.core_s = 6.0, 40.0
    assert bench._line(result).endswith("CPU per request at saturation (µs): workers 800, wrk 100; all 900; cores idle 15 %")
