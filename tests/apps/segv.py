"""An app whose worker dies of SIGSEGV on /segv (ctypes.string_at(0) reads address 0).
Other paths answer JSON {"pid": ...}; ?s=SECS sleeps first and ?touch=PATH creates PATH
when the request starts."""

import ctypes
import json
import os
import time
from urllib.parse import parse_qs


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    if environ.get("PATH_INFO") == "/segv":
        ctypes.string_at(0)
    if "touch" in opts:
        with open(opts["touch"][0], "w") as f:
            f.write(str(os.getpid()))
    secs = float(opts.get("s", ["0"])[0])
    if secs > 0:
        time.sleep(secs)
    out = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]
