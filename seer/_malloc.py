"""Process memory tuning for glibc, applied once when seer is imported.

The engine thread and the caller's thread each get their own malloc arena by default,
and freed activation memory parked in one arena is not reused by the other: on the
offline benchmark that costs ~100 MiB of peak RSS. Two arenas keep the two threads from
contending without that waste. A user's own ``MALLOC_ARENA_MAX`` always wins, and
``SEER_MALLOC_ARENA_MAX=0`` turns this off.
"""

import ctypes
import ctypes.util
import os
import sys

_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_arenas() -> bool:
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        n = int(os.environ.get("SEER_MALLOC_ARENA_MAX", "2"))
    except ValueError:
        return False
    if n <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, n))
    except (OSError, AttributeError):  # not glibc
        return False
