"""`make bench` and `make bench-scaling`: run a fixed benchmark matrix and write BENCHMARKS.md.

Stdlib only. Every server runs in its own process group (start_new_session) and is stopped by its pid;
every wait is bounded. Loopback (127.0.0.1) and ephemeral ports only. Importing any module here does
nothing: temporary folders are made by `__main__.main` and handed down in a `context.Context`.

Modules, each importing only those before it: context (paths, settings, temp folders), servers (starting
and stopping the servers under test), measure (one load run, CPU accounting, memory, start-up, drain,
system-call counts), markdown (tables, the chart, BENCHMARKS.md), matrix and scaling (the two
experiments), __main__ (the command line).
"""
