"""Process checks the tests share (the product itself never needs to ask whether a pid runs)."""

from __future__ import annotations

import psutil


def pid_alive(pid: int) -> bool:
    """True when pid runs (zombies count as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
