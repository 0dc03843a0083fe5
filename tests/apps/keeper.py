"""Keeps one request's objects past its end, for pyfpm's tests of how the worker
reuses them (stdlib only).

  /keep   store this request's wsgi.input, wsgi.errors, start_response and the write
          callable it returned (with ?only=write, the write callable alone); answers
          the ids of these objects (JSON)
  /plain  keep nothing; answers the ids of this request's objects (JSON)
  /stale  from inside a later request, use the stored objects and answer JSON: whether
          each is this request's own object, what the stored write and wsgi.input did
          (the exception's type name, or "ok" and what was read), then the ids of this
          request's objects
"""

import json

KEPT = {}


def ids(environ, start_response):
    return [id(environ["wsgi.input"]), id(environ["wsgi.errors"]), id(start_response)]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/keep":
        write = start_response("200 OK", [("Content-Type", "application/json")])
        KEPT.clear()
        KEPT["write"] = write
        if environ.get("QUERY_STRING") != "only=write":
            KEPT.update(
                input=environ["wsgi.input"],
                errors=environ["wsgi.errors"],
                start=start_response,
            )
        return [json.dumps({"ids": ids(environ, start_response)}).encode()]
    if path == "/stale":
        report = {
            "same_input": KEPT.get("input") is environ["wsgi.input"],
            "same_errors": KEPT.get("errors") is environ["wsgi.errors"],
            "same_start": KEPT.get("start") is start_response,
        }
        start_response("200 OK", [("Content-Type", "application/json")])
        try:
            KEPT["write"](b"STALE WRITE")
            report["write"] = "ok"
        except Exception as e:  # noqa: BLE001 - the test wants whatever it was
            report["write"] = type(e).__name__
        if "input" in KEPT:
            try:
                report["read"] = "ok: %r" % KEPT["input"].read()
            except Exception as e:  # noqa: BLE001
                report["read"] = type(e).__name__
        report["ids"] = ids(environ, start_response)
        return [json.dumps(report).encode()]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"ids": ids(environ, start_response)}).encode()]
