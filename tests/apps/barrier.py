"""Concurrency probe for pyfpm's thread tests (stdlib only).

GET /?n=N&key=K waits on a barrier of N parties shared by every request of this worker
process that names the same key, for at most 20 s. All N requests answer 200 only if
they ran in the app at the same time; a broken or timed-out barrier answers 503. The
answer is JSON {"pid": ..., "thread": <threading.get_ident()>}.
"""

import json
import os
import threading
from urllib.parse import parse_qs

_lock = threading.Lock()
_barriers = {}


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    parties = int(opts.get("n", ["2"])[0])
    key = opts.get("key", ["default"])[0]
    with _lock:
        barrier = _barriers.setdefault(key, threading.Barrier(parties))
    try:
        barrier.wait(timeout=20)
        status = "200 OK"
    except threading.BrokenBarrierError:
        status = "503 Service Unavailable"
    out = json.dumps({"pid": os.getpid(), "thread": threading.get_ident()}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(out)))])
    return [out]
