"""The bench says when a saturation run left some gunicorn workers without work."""

from __future__ import annotations

import os

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
