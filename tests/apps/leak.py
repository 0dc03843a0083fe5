"""Leaking app for pyfpm's pm.max_memory tests (stdlib only).

Each request with ?mb=N appends N MiB of touched (so resident) memory to a module-level
list that is never freed. Answers JSON {"pid": ..., "rss": bytes, "held_mb": total}.
"""

import json
import os
from urllib.parse import parse_qs

_held = []
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    mb = int(opts.get("mb", ["0"])[0])
    if mb > 0:
        # bytearray(n) is zero-filled by calloc and may stay unbacked: write every page.
        block = bytearray(mb << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        _held.append(block)
    out = json.dumps({"pid": os.getpid(), "rss": rss_bytes(),
                      "held_mb": sum(len(b) for b in _held) >> 20}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]
