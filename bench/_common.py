"""Small helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def time_calls(fn: Callable[[], object], n: int) -> dict[str, float]:
    """Call `fn` n times; median and p99 of wall and CPU (this thread's) time, in ms."""
    walls, cpus = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpus.append(time.thread_time() - c)
        walls.append(time.perf_counter() - w)
    walls.sort()
    cpus.sort()
    p99 = int(0.99 * (n - 1))
    return {
        "wall_median_ms": statistics.median(walls) * 1e3,
        "wall_p99_ms": walls[p99] * 1e3,
        "cpu_median_ms": statistics.median(cpus) * 1e3,
        "cpu_p99_ms": cpus[p99] * 1e3,
    }


class PeakRSS:
    """Sample this process's RSS every 5 ms in a thread; `peak` is the highest seen."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
