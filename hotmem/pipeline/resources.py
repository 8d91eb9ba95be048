"""What a long run used, for its report: the process's peak resident memory."""

from __future__ import annotations

import resource

__all__ = ["peak_rss_gb"]


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GiB (Linux counts `ru_maxrss` in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
