"""Test helper: run a command-line job, killing it with SIGKILL at given moments and starting it again,
as a user's resumable long job would be killed and rerun."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def killed_until_done(cmd, kill_after: list[float], env: dict, timeout: float = 600, log: Path | None = None) -> int:
    """Run ``cmd``; SIGKILL it after each delay in turn (restarting it), then let it finish. Returns
    how many kills landed while it was running. ``log``: each run's stderr appended there, under a line that
    names the run and its delay (so a failure can say where the kills landed)."""
    landed = 0
    for i, delay in enumerate(list(kill_after) + [None]):
        err = subprocess.DEVNULL if log is None else open(log, "a")
        if log is not None:
            err.write(f"--- run {i + 1}, {'to the end' if delay is None else f'killed after {delay:.1f} s'}\n")
            err.flush()  # (before the child writes after it)
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        if log is not None:
            err.close()  # (the child holds its own copy)
        try:
            p.wait(timeout if delay is None else delay)
        except subprocess.TimeoutExpired:
            if delay is None:
                p.kill()
                raise
            p.send_signal(signal.SIGKILL)
            p.wait()
            landed += 1
            continue
        assert p.returncode == 0 or delay is not None, cmd
    return landed


def killed_on_progress(cmd, new_files: list[int], work: Path, env: dict, timeout: float = 600) -> int:
    """Run ``cmd``; SIGKILL it once it has written ``new_files[i]`` files under ``work`` that were not
    there when that run began (restarting it), then let it finish. Returns how many kills landed while
    it was running. Unlike delays, which a resumed run (shorter: it skips what is done) may outlast,
    each kill comes after new progress and so lands mid-build while the build has more to do."""
    import time

    def names() -> set:
        return {f for f in work.rglob("*") if f.is_file()} if work.exists() else set()

    landed = 0
    for k in list(new_files) + [None]:
        before = names()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen, t0 = set(), time.monotonic()
        while p.poll() is None and k is not None and len(seen) < k:
            seen |= names() - before
            time.sleep(0.005)
            assert time.monotonic() - t0 < timeout, cmd
        if p.poll() is None and k is not None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            landed += 1
            continue
        p.wait(timeout)
        assert p.returncode == 0 or k is not None, cmd
    return landed
