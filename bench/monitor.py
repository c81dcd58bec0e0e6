"""What the memory monitor costs: one sample, sampling at 4 Hz, and one chart update.

- one sample: wall and CPU time of `Sampler.sample()` (median and 99th percentile);
- 4 Hz: the CPU time the process spends while sampling every 0.25 s, as % of one core;
- chart update: `MonitorView.show_sample` on the UI thread (append + redraw of every
  chart) with ten minutes of history at 4 Hz and one GPU, offscreen.

Targets (issue): a sample under 2 ms of host time, 4 Hz under 1% of a core.

    .venv/bin/python bench/monitor.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _common import time_calls  # also puts the project on sys.path

from core import monitor


def per_sample(n: int) -> dict[str, float]:
    sampler = monitor.Sampler()
    sampler.sample()  # opens NVML
    result = time_calls(sampler.sample, n)
    sampler.close()
    return {**result, "gpus": sampler.gpu_count}


def at_4hz(seconds: float) -> dict[str, float]:
    sampler = monitor.Sampler()
    start_cpu, start = time.process_time(), time.perf_counter()
    count = sum(1 for _ in monitor.samples(sampler, 0.25, seconds))
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    sampler.close()
    return {"samples": count, "cpu_s": cpu, "core_percent": 100 * cpu / wall}


def chart_update(n: int) -> dict[str, float]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from core.monitor import GpuSample, HostSample, Sample
    from gui.monitor_view import MonitorView

    app = QApplication.instance() or QApplication([])
    view = MonitorView(autostart=False)
    view.resize(1200, 800)
    view.show()
    gib = 2**30

    def fake(t: float) -> Sample:
        gpu = GpuSample(0, "GPU", int(t) % gib, 80 * gib, int(t) % gib, 50.0, 60.0)
        host = HostSample(4 * gib, 16 * gib, 20.0, 300 * 2**20, 30.0)
        return Sample(view.t0 + t, (gpu,), host)

    full = int(monitor.HISTORY_S / monitor.MIN_INTERVAL_S)
    view.set_paused(True)
    for i in range(full):
        view.show_sample(fake(i * 0.25))
    view.set_paused(False)
    app.processEvents()
    walls, cpus = [], []
    for i in range(full, full + n):
        start, start_cpu = time.perf_counter(), time.thread_time()
        view.show_sample(fake(i * 0.25))
        app.processEvents()  # includes the repaint
        cpus.append(time.thread_time() - start_cpu)
        walls.append(time.perf_counter() - start)
    view.close()
    return {
        "points": full,
        "wall_median_ms": statistics.median(walls) * 1e3,
        "cpu_median_ms": statistics.median(cpus) * 1e3,
        "cpu_max_ms": max(cpus) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    one = per_sample(500)
    gpus = one["gpus"] or f"none ({monitor.Sampler().sample().gpu_reason})"
    print(f"GPUs: {gpus}")
    print(
        f"one sample: wall {one['wall_median_ms']:.3f} ms median, "
        f"{one['wall_p99_ms']:.3f} ms p99; CPU {one['cpu_median_ms']:.3f} ms median, "
        f"{one['cpu_p99_ms']:.3f} ms p99 (target < 2 ms)"
    )
    rate = at_4hz(args.seconds)
    print(
        f"4 Hz for {args.seconds:g} s: {rate['samples']} samples, "
        f"{rate['cpu_s'] * 1e3:.1f} ms CPU = {rate['core_percent']:.3f}% of a core "
        "(target < 1%)"
    )
    ui = chart_update(40)
    print(
        f"chart update with {ui['points']} points per curve (UI thread): "
        f"CPU {ui['cpu_median_ms']:.1f} ms median, {ui['cpu_max_ms']:.1f} ms max; "
        f"wall {ui['wall_median_ms']:.1f} ms median"
    )


if __name__ == "__main__":
    main()
