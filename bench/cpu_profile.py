"""Run a module under cProfile counting CPU time (not wall time), in every thread.

    python bench/cpu_profile.py OUT.prof -m flask --app wsgi digest send

send_digest.py --profile uses this. Each thread gets its own profiler timed by
`time.thread_time`, so waiting on a socket or a lock costs nothing and the
figures add up to the process's CPU time; all threads are merged into OUT.prof
(pstats format). Child processes are not profiled: run with one process to see them.
"""

from __future__ import annotations

import cProfile
import marshal
import runpy
import sys
import threading
import time

profiles: list[cProfile.Profile] = []


def _start_in_thread(frame, event, arg):  # the first profile event of a new thread
    sys.setprofile(None)
    profile = cProfile.Profile(time.thread_time)
    profiles.append(profile)
    profile.enable()


def main() -> None:
    out = sys.argv[1]
    if sys.argv[2] != "-m":
        raise SystemExit("usage: cpu_profile.py OUT.prof -m MODULE [ARGS...]")
    module = sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    threading.setprofile(_start_in_thread)
    main_profile = cProfile.Profile(time.thread_time)
    profiles.append(main_profile)
    main_profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        main_profile.disable()
        threading.setprofile(None)
        merged: dict = {}
        for profile in profiles:
            profile.snapshot_stats()
            for func, (cc, nc, tt, ct, callers) in profile.stats.items():
                if func in merged:
                    pcc, pnc, ptt, pct, pcallers = merged[func]
                    for caller, value in callers.items():
                        if caller in pcallers and isinstance(value, tuple):
                            pcallers[caller] = tuple(map(sum, zip(pcallers[caller], value, strict=True)))
                        elif caller in pcallers:
                            pcallers[caller] += value
                        else:
                            pcallers[caller] = value
                    merged[func] = (pcc + cc, pnc + nc, ptt + tt, pct + ct, pcallers)
                else:
                    merged[func] = (cc, nc, tt, ct, dict(callers))
        with open(out, "wb") as handle:
            marshal.dump(merged, handle)
        print(f"cpu_profile: {len(profiles)} threads profiled into {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
