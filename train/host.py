"""Host-process settings that make XLA's CPU runtime fast; call them before JAX starts a backend."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel; True if applied.

    XLA allocates each step's temporaries afresh. glibc serves large blocks with mmap and
    unmaps them on free, so every step page-faults its whole working set back in (about
    250k faults, a large share of a CPU step for a 20M-parameter model). Serving them from
    one heap that is never trimmed lets the next step reuse pages already mapped. A no-op
    without glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    # One arena: threads' own arenas are mmap-backed and would still map big blocks afresh.
    return all(
        mallopt(param, value) == 1
        # A finite trim threshold: never trimming (-1) kept every freed block of a benchmark that
        # builds model after model in one process, until the host ran out of memory.
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    )
