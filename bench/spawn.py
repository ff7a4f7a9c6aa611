"""Run one command and report its wall time, CPU time and own peak RSS.

    python -S bench/spawn.py REPORT TIMEOUT ARGV...

writes {"returncode", "wall", "maxrss_kb", "started", "cpu"} as JSON to REPORT.

Why a launcher: Linux charges a child's ru_maxrss with the high-water mark of the address space
it was forked (or vforked) from, so a command spawned straight from the bench process, which
has held a million-line file in memory, would "peak" at the bench's size. Spawned from this
tiny interpreter (-S: no site packages), the figure is burstq's own. `started` and `wall` use
time.monotonic(), the clock the mock server stamps its stats with, so the bench can tell how
long after spawn the first request arrived.
"""

import json
import os
import signal
import sys
import time


def main() -> None:
    report, timeout, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    started = time.monotonic()
    pid = os.posix_spawn(argv[0], argv, os.environ)

    def kill(signum: int, frame: object) -> None:
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, kill)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    wall = time.monotonic() - started
    signal.setitimer(signal.ITIMER_REAL, 0)
    with open(report, "w") as f:
        json.dump(
            {
                "returncode": os.waitstatus_to_exitcode(status),
                "wall": wall,
                "maxrss_kb": usage.ru_maxrss,
                "started": started,
                "cpu": usage.ru_utime + usage.ru_stime,
            },
            f,
        )


if __name__ == "__main__":
    main()
