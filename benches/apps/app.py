"""The one WSGI app every Python backend of the benchmark serves (benches/bench.py).

Every server loads this same file with the same interpreter, so the rows differ only
in the server. Routes:

    /hello   "Hello, World!" as text/plain (13 bytes)
    /page    a ~10 KiB HTML page built from QUERY_STRING (each row echoes the query)
    /echo    echoes a POST body (the benchmark posts 64 KiB)
    /flask   a small Flask view (JSON built from the query string)

Flask is imported at start-up by every backend, so each one carries the same modules
and memory figures compare.
"""

import html
from urllib.parse import parse_qsl

from flask import Flask, jsonify, request

HELLO = b"Hello, World!"

flask_app = Flask(__name__)


@flask_app.route("/flask")
def flask_view():
    """A typical small view: read the query, return JSON."""
    name = request.args.get("name", "world")
    return jsonify(greeting="Hello, %s!" % name, items=list(range(10)))


def page(environ):
    """About 10 KiB of HTML: a table whose rows repeat the escaped query parameters,
    so the work scales with parsing and formatting, not with a constant string."""
    params = parse_qsl(environ.get("QUERY_STRING", ""))
    rows = int(dict(params).get("rows", "100"))
    cells = "".join(
        "<td>%s=%s</td>" % (html.escape(k), html.escape(v)) for k, v in params
    )
    body = ["<!doctype html>\n<html><head><title>page</title></head><body><table>\n"]
    for i in range(rows):
        body.append("<tr><th>%d</th>%s</tr>\n" % (i, cells))
    body.append("</table></body></html>\n")
    return "".join(body).encode("utf-8")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/hello":
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))],
        )
        return [HELLO]
    if path == "/page":
        body = page(environ)
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]
    if path == "/flask":
        return flask_app(environ, start_response)
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]
