"""Test helper: run a command-line job, killing it with SIGKILL at given moments and starting it again,
as a user's resumable long job would be killed and rerun."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def killed_until_done(cmd, kill_after: list[float], env: dict, timeout: float = 600) -> int:
    """Run ``cmd``; SIGKILL it after each delay in turn (restarting it), then let it finish. Returns
    how many kills landed while it was running."""
    landed = 0
    for delay in list(kill_after) + [None]:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
