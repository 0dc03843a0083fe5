"""Sleeping app for pyfpm's process-manager tests (stdlib only).

Query string:
  s=SECS       sleep that long in time.sleep (a C call that releases the GIL)
  touch=PATH   create PATH (holding the pid) when the request starts, so a test knows
               the request reached the app without measuring time
  wait=PATH    then stay in the app until PATH exists (at most 30 s), so a test decides
               when the request ends
Answers JSON {"pid": ..., "slept": SECS}. The sleep happens in a function with a
distinctive name so tests can find it in tracebacks and slow-log entries.
"""

import json
import os
import time
from urllib.parse import parse_qs


def pyfpm_test_sleeper(secs):
    time.sleep(secs)


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    secs = float(opts.get("s", ["0"])[0])
    if "touch" in opts:
        with open(opts["touch"][0], "w") as f:
            f.write(str(os.getpid()))
    if "wait" in opts:
        deadline = time.monotonic() + 30
        while not os.path.exists(opts["wait"][0]) and time.monotonic() < deadline:
            pyfpm_test_sleeper(0.01)
    if secs > 0:
        pyfpm_test_sleeper(secs)
    out = json.dumps({"pid": os.getpid(), "slept": secs}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]
