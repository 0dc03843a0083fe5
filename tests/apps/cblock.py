"""An app whose /block request hangs inside one C call while holding the GIL.

It locks a fresh (default, non-recursive) pthread mutex, then locks it again through
ctypes.PyDLL, which does not release the GIL. pthread_mutex_lock is not interrupted by
signals, so no Python-level mechanism (signal handler, async exception, watchdog thread
wanting the GIL) can end the request: only killing the process does. That is the
"worker stuck in C code" case. Other paths answer with the pid as JSON.

?touch=PATH creates PATH (holding the pid) just before blocking.
"""

import ctypes
import json
import os
from urllib.parse import parse_qs

# Comfortably larger than sizeof(pthread_mutex_t) on every Linux ABI (40 on x86_64);
# all zero bytes is PTHREAD_MUTEX_INITIALIZER for the default mutex type.
_MUTEX_BYTES = 128
_libc_holding_gil = ctypes.PyDLL(None)


def pyfpm_test_stuck_in_c():
    mutex = ctypes.create_string_buffer(_MUTEX_BYTES)
    _libc_holding_gil.pthread_mutex_lock(mutex)
    # Relocking a default mutex from the same thread deadlocks, with the GIL held.
    _libc_holding_gil.pthread_mutex_lock(mutex)


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    if environ.get("PATH_INFO") == "/block":
        if "touch" in opts:
            with open(opts["touch"][0], "w") as f:
                f.write(str(os.getpid()))
        pyfpm_test_stuck_in_c()
    out = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]
