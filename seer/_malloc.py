"""Process memory tuning for glibc, applied once when seer is imported.

The engine thread and the caller's thread each get their own malloc arena by default,
and freed activation memory parked in one arena is not reused by the other: on the
offline benchmark that costs ~100 MiB of peak RSS. Two arenas keep the two threads from
contending without that waste. A user's own ``MALLOC_ARENA_MAX`` always wins, and
``SEER_MALLOC_ARENA_MAX=0`` turns this off.

``trim()`` hands the free memory at the top of glibc's heaps back to the system; the engine
calls it when it goes idle, so that a server's memory falls back after a burst of requests
(freed activations otherwise stay resident: glibc raises its mmap threshold as large blocks
are freed, and serves them from the heap from then on).
"""

import ctypes
import ctypes.util
import os
import sys

_M_ARENA_MAX = -8  # glibc's mallopt parameter number
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim  # noqa: B018 - AttributeError when this libc is not glibc
        except (OSError, AttributeError):
            _libc = False
    return _libc


def limit_arenas() -> bool:
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        n = int(os.environ.get("SEER_MALLOC_ARENA_MAX", "2"))
    except ValueError:
        return False
    if n <= 0:
        return False
    libc = _glibc()
    return bool(libc and libc.mallopt(_M_ARENA_MAX, n))


def trim() -> bool:
    """Return free heap memory to the system (glibc on Linux; elsewhere nothing happens)."""
    libc = sys.platform.startswith("linux") and _glibc()
    return bool(libc and libc.malloc_trim(0))
