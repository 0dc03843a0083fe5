"""App for pyfpm's `preload` tests (stdlib only).

At import it appends its process id to the file named by PRELOAD_LOG (one line per
import), so a test counts imports. Each request answers JSON: the worker's pid and
parent pid, the pid that imported the module, and a fresh 64-bit draw from `random`
(workers forked without CPython's fork hooks would all draw the same first number).
"""

import json
import os
import random

IMPORT_PID = os.getpid()

with open(os.environ["PRELOAD_LOG"], "a") as f:
    f.write("%d\n" % IMPORT_PID)


def application(environ, start_response):
    body = json.dumps(
        {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "import_pid": IMPORT_PID,
            "random": random.getrandbits(64),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
