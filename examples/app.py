"""The example WSGI application served by pyfpm's bundled pool (pools.d/www.yaml).

Standard library only, so it runs in any Python 3.9+ without installing anything.
Copy it as a starting point: `application` is a plain PEP 3333 callable, so the same
file also runs under any other WSGI server.

Routes:
    /         an HTML page describing the request, with a form that posts to /echo
    /hello    "Hello, World!" as plain text
    /echo     echoes a POST body back (GET shows the form)
    /stream   a response sent in several chunks, as the app produces them
"""

import html
import os
import sys
import time

# Environ keys shown on the index page: enough to see what the web server and pyfpm
# passed in, without dumping every header.
SHOWN_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "HTTP_HOST",
    "HTTP_USER_AGENT",
    "FCGI_ROLE",
    "wsgi.url_scheme",
    "wsgi.multithread",
    "wsgi.multiprocess",
)

FORM = """\
<form method="post" action="{action}">
  <p><label>Say something: <input name="message" value="héllo wörld"></label>
  <button type="submit">POST to /echo</button></p>
</form>
"""


def index(environ):
    """An HTML page showing the request as the app sees it."""
    script_name = environ.get("SCRIPT_NAME", "")
    rows = "\n".join(
        "<tr><th>{}</th><td><code>{}</code></td></tr>".format(
            html.escape(key), html.escape(repr(environ.get(key)))
        )
        for key in SHOWN_KEYS
        if key in environ
    )
    links = " | ".join(
        '<a href="{}">{}</a>'.format(html.escape(script_name + path), html.escape(path))
        for path in ("/hello", "/echo", "/stream", "/?a=1&b=two")
    )
    page = """\
<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>pyfpm example app</title></head>
<body>
<h1>It works: pyfpm is serving this WSGI app</h1>
<p>{method} <code>{path}</code>, query <code>{query}</code></p>
<p>Worker pid {pid}, Python {python}</p>
<p>{links}</p>
{form}
<table>
{rows}
</table>
</body>
</html>
""".format(
        method=html.escape(environ["REQUEST_METHOD"]),
        path=html.escape(request_path(environ)),
        query=html.escape(environ.get("QUERY_STRING", "")),
        pid=os.getpid(),
        python=html.escape(sys.version.split()[0]),
        links=links,
        form=FORM.format(action=html.escape(script_name + "/echo")),
        rows=rows,
    )
    return "200 OK", "text/html; charset=utf-8", [page.encode("utf-8")]


def hello(environ):
    """The smallest possible response, handy for health checks and benchmarks."""
    return "200 OK", "text/plain; charset=utf-8", [b"Hello, World!\n"]


def echo(environ):
    """Send a POST body back as it came, with its content type; GET shows the form."""
    if environ["REQUEST_METHOD"] != "POST":
        form = FORM.format(action=html.escape(environ.get("SCRIPT_NAME", "") + "/echo"))
        page = "<!doctype html><title>echo</title>" + form
        return "200 OK", "text/html; charset=utf-8", [page.encode("utf-8")]
    body = read_body(environ)
    content_type = environ.get("CONTENT_TYPE") or "application/octet-stream"
    if content_type.startswith("application/x-www-form-urlencoded"):
        # Shown as text, so a browser displays the form data instead of downloading it.
        content_type = "text/plain; charset=utf-8"
    return "200 OK", content_type, [body]


def read_body(environ):
    """The whole request body."""
    stream = environ["wsgi.input"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length >= 0:
        return stream.read(length)
    # No CONTENT_LENGTH (e.g. a chunked upload relayed by Apache): read to the end.
    # pyfpm's wsgi.input returns b"" at the end of the body instead of blocking.
    chunks = []
    while True:
        chunk = stream.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def stream(environ):
    """A response produced piece by piece: pyfpm sends each chunk as it is yielded."""

    def chunks():
        for i in range(1, 6):
            yield "chunk {} of 5 at {:.3f}\n".format(i, time.time()).encode("ascii")
            time.sleep(0.2)

    return "200 OK", "text/plain; charset=utf-8", chunks()


ROUTES = {
    "/": index,
    "/hello": hello,
    "/echo": echo,
    "/stream": stream,
}


def request_path(environ):
    """The path below the app's mount point ("/" when empty)."""
    return environ.get("PATH_INFO", "") or "/"


def application(environ, start_response):
    """The WSGI entry point (pools.d/www.yaml: `app: "app:application"`)."""
    handler = ROUTES.get(request_path(environ))
    if handler is None:
        status, content_type, body = (
            "404 Not Found",
            "text/plain; charset=utf-8",
            [b"Not Found\n"],
        )
    else:
        status, content_type, body = handler(environ)
    headers = [("Content-Type", content_type)]
    if isinstance(body, list):
        # A known length lets the web server keep the client connection alive without
        # chunked encoding; a generator (stream) is sent as it comes.
        headers.append(("Content-Length", str(sum(len(b) for b in body))))
    start_response(status, headers)
    if environ["REQUEST_METHOD"] == "HEAD":
        return []
    return body
