"""Where things are and how the run is set: one `Context`, built once from the environment by `__main__`."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Context:
    """Everything a step needs to know about the run; passed down instead of module globals."""

    root: Path
    bin: Path  # target/release/port-sharding
    c_server: Path  # the minimal C epoll echo server, built by `make bench`
    control_dir: Path  # PORT_SHARDING_CONTROL_DIR of every server started (a temp dir)
    logs: Path  # servers' stdout/stderr (a temp dir)
    duration: float  # seconds per run
    runs: int  # runs per cell
    taskset: str | None  # None: no CPU pinning
    py: str
    ruby: str | None

    @classmethod
    def from_env(cls, control_dir: Path, logs: Path) -> "Context":
        root = ROOT
        return cls(
            root=root,
            bin=Path(os.environ.get("PORT_SHARDING_BIN", root / "target" / "release" / "port-sharding")),
            c_server=Path(os.environ.get("BENCH_C_SERVER", root / "target" / "bench" / "c_epoll_echo")),
            control_dir=control_dir,
            logs=logs,
            duration=float(os.environ.get("BENCH_DURATION", "3")),
            runs=int(os.environ.get("BENCH_RUNS", "3")),
            taskset=shutil.which("taskset") if os.environ.get("BENCH_PIN", "1") != "0" else None,
            py=sys.executable or "python3",
            ruby=shutil.which("ruby"),
        )

    def with_runs(self, duration: float, runs: int) -> "Context":
        return dataclasses.replace(self, duration=duration, runs=runs)

    @property
    def bench_dir(self) -> Path:
        return self.root / "bench"

    @property
    def benchmarks(self) -> Path:
        return self.root / "BENCHMARKS.md"

    @property
    def chart(self) -> Path:
        return self.bench_dir / "chart.svg"

    @property
    def results(self) -> Path:
        return self.bench_dir / "results"

    @property
    def notes(self) -> Path:
        return self.bench_dir / "NOTES.md"

    def rel(self, p: Path) -> Path:
        return p.relative_to(self.root)

    def env(self) -> dict[str, str]:
        e = dict(os.environ)
        e["PORT_SHARDING_CONTROL_DIR"] = str(self.control_dir)
        e.pop("RUST_BACKTRACE", None)
        return e

    def pinned(self, cmd: list[str], cpus: str | None) -> list[str]:
        return [self.taskset, "-c", cpus, *cmd] if (self.taskset and cpus) else cmd
