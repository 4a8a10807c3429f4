"""`make bench` and `make bench-scaling`: run a fixed benchmark matrix and write BENCHMARKS.md.

Stdlib only. Every server runs in its own process group (start_new_session) and is stopped by its pid;
every wait is bounded. Loopback (127.0.0.1) and ephemeral ports only. Importing any module here does
nothing: temporary folders are made by `__main__.main` and handed down in a `context.Context`.

Modules, each importing only those before it: context (paths, settings, temp folders), format (numbers),
servers (starting and stopping the servers under test), measure (one load run and its CPU accounting, the
workloads, the machine), footprint (memory per connection, start-up, drain), syscalls (system calls per
operation), targets, chart and markdown (what BENCHMARKS.md and bench/chart.svg say), matrix and scaling
(the experiments), __main__ (the command line).
"""
