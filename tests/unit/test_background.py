"""A process thread starts once per process: once in the parent, once again in each forked child."""

from __future__ import annotations

import os
import threading

from pos_engine.service.background import ProcessThread


def test_a_thread_starts_once_in_a_process_and_once_again_in_a_forked_child() -> None:
    started_in: list[int] = []
    stop = threading.Event()
    worker = ProcessThread("test-worker", stop.wait, before_start=lambda: started_in.append(os.getpid()))
    worker.ensure_started()
    worker.ensure_started()
    assert started_in == [os.getpid()]

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: a gunicorn worker forked after the app was built
        try:
            worker.ensure_started()
            worker.ensure_started()
            os.write(write_end, repr(started_in == [started_in[0], os.getpid()]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 16)
    os.waitpid(child, 0)
    stop.set()

    assert answer == b"True"
    assert started_in == [os.getpid()]  # the child's start changed nothing here
