"""CPU-bound app for pyfpm's timeout tests (stdlib only).

?s=SECS spins in a pure-Python loop (no C call that sleeps or releases the GIL) for
that long, in a function with a distinctive name for tracebacks. Answers JSON
{"pid": ..., "loops": N}.
"""

import json
import os
import time
from urllib.parse import parse_qs


def pyfpm_test_busy_loop(secs):
    end = time.monotonic() + secs
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    secs = float(opts.get("s", ["0"])[0])
    n = pyfpm_test_busy_loop(secs) if secs > 0 else 0
    out = json.dumps({"pid": os.getpid(), "loops": n}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]
