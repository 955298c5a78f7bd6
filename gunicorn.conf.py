"""gunicorn settings for `gunicorn pos_engine.wsgi:app`, chosen by measurement (docs/performance.md).

On the 2-core reference machine, 3 workers of the gthread class with one
thread each gave the best tail latency at a moderate rate (p99 8 ms against
11 ms with 4 threads) for the same saturation throughput (sync, gthread with
1-8 threads and 2-5 workers all carried 880-930 swipes/s on PostgreSQL +
Redis). gthread rather than sync keeps terminals' connections alive; behind a
proxy that opens a connection per request, `-k sync` gives the shorter tail
(a sync worker accepts only when free; a gthread worker accepts while busy).
Override any of them on the command line or with GUNICORN_CMD_ARGS.
"""

import multiprocessing

workers = max(2, multiprocessing.cpu_count() + 1)
worker_class = "gthread"
threads = 1
keepalive = 30
backlog = 2048
graceful_timeout = 10
