"""An app whose worker calls os._exit on /exit (?code=N, default 3) in the middle of a
request. Other paths answer JSON {"pid": ...}."""

import json
import os
from urllib.parse import parse_qs


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    if environ.get("PATH_INFO") == "/exit":
        os._exit(int(opts.get("code", ["3"])[0]))
    out = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]
