"""Misbehaving apps for pyfpm's integration tests (stdlib only), chosen by PATH_INFO.

/raise               raises before start_response
/bad-status          start_response with a malformed status line
/non-bytes           a str item in the body iterable
/twice               start_response called twice without exc_info
/headers-after-body  start_response called again after a body chunk was produced
/write               uses the write() callable returned by start_response
/replace             replaces the headers with exc_info before any body (legal): 503
anything else        200 "ok"
"""

import os
import sys


class Oops(Exception):
    pass


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/raise":
        raise Oops("pyfpm-test-exception-marker")
    if path == "/bad-status":
        start_response("not a status", [("Content-Type", "text/plain")])
        return [b"should not be sent"]
    if path == "/non-bytes":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["a str, not bytes"]
    if path == "/twice":
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"should not be sent"]
    if path == "/headers-after-body":
        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"partial body;"
            start_response("200 OK", [("X-Late", "1")])
            yield b"should not be sent"
        return gen()
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"hello ")
        return [b"world"]
    if path == "/replace":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise Oops("replaced")
        except Oops:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"replaced"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
    return [b"ok"]
