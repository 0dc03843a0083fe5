"""A one-piece response body of a chosen size, for pyfpm's response-path tests.

Query string:
  n=BYTES     body length; byte i is i % 251 (a pattern no record boundary can hide)
  nostart=1   return the body without calling start_response (an app error)
The body is returned as a one-item list: the worker sends such a body, when large,
straight from the bytes object with the request's last records.
"""

from urllib.parse import parse_qs

PATTERN = bytes(range(251))


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    n = int(opts.get("n", ["0"])[0])
    body = (PATTERN * (n // 251 + 1))[:n]
    if "nostart" not in opts:
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))],
        )
    return [body]
