"""The kernel's view of the clock: whether NTP disciplines it (adjtimex)."""

from __future__ import annotations

import ctypes
import functools
import os

TIME_ERROR = 5
STA_UNSYNC = 0x0040


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """struct timex from <sys/timex.h> (Linux, glibc)."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    )


def kernel_clock_state() -> tuple[int, int, int]:
    """(adjtimex return state, status flags, max error in µs); modes 0 only reads."""
    libc = _libc()
    tx = _Timex()
    state = libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(state), int(tx.status), int(tx.maxerror)


@functools.cache
def _libc() -> ctypes.CDLL:
    # The symbols the process already has, libc's among them: no library
    # search (ctypes.util.find_library runs ldconfig and loads tempfile).
    return ctypes.CDLL(None, use_errno=True)
