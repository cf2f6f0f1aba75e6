"""Peak resident memory of a subprocess and all its descendants (Linux ``/proc``), for the
build benchmarks (`bench_build.py`, `bench_local_engine.py`, `bench_beam.py`)."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants.

    Children are read from every thread's ``/proc/PID/task/TID/children``: DirectRunner (and a
    pool started from a non-main thread) starts worker processes from threads other than the
    main one, which a walk of the main thread's list alone (``/proc/PID/task/PID/children``) misses.
    """
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:")), 0)
            for task in Path(f"/proc/{p}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def wait_with_peak_rss(proc: subprocess.Popen, interval: float = 0.1) -> tuple[int, bytes]:
    """Wait for `proc` (started with ``stderr=PIPE``), sampling its tree's RSS every `interval`
    seconds. Returns (peak bytes, its stderr)."""
    peak, stop = 0, threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(interval)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    return peak, err
