"""Echo app for pyfpm's integration tests (stdlib only).

Returns JSON describing the request: every str-valued environ entry, facts about the
non-str wsgi.* entries, the worker's pid and a CRC-32 of the body. The query string
chooses the response:
  status=CODE        response status (any 3-digit code)
  header=Name:Value  add a response header (repeatable, order kept)
  cookies=N          add N Set-Cookie headers c0=v0 .. c{N-1}=v{N-1}
  sleep=SECS         sleep before answering
  touch=PATH         create PATH when the request starts (lets a test know it began)
  stderr=TEXT        write TEXT to wsgi.errors
  body=1             include the body itself (latin-1 decoded) in the JSON
  empty=1            answer with an empty body
  osenv=NAME         report os.environ.get(NAME) (repeatable) under "osenv"
"""

import json
import os
import time
import zlib
from urllib.parse import parse_qsl

REASONS = {200: "OK", 204: "No Content", 404: "Not Found", 418: "I'm a teapot", 500: "Internal Server Error"}


def application(environ, start_response):
    query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    opts = {}
    for k, v in query:
        opts.setdefault(k, []).append(v)

    def opt(name, default=None):
        return opts.get(name, [default])[-1]

    if opt("touch"):
        with open(opt("touch"), "w") as f:
            f.write(str(os.getpid()))
    if opt("stderr"):
        environ["wsgi.errors"].write(opt("stderr") + "\n")
        environ["wsgi.errors"].flush()

    body = environ["wsgi.input"].read()
    if opt("sleep"):
        time.sleep(float(opt("sleep")))

    inp = environ["wsgi.input"]
    errors = environ["wsgi.errors"]
    result = {
        "pid": os.getpid(),
        "environ": {k: v for k, v in environ.items() if isinstance(v, str)},
        "non_str": sorted(k for k, v in environ.items() if not isinstance(v, str)),
        "wsgi": {
            "version": list(environ.get("wsgi.version", ())),
            "url_scheme": environ.get("wsgi.url_scheme"),
            "multithread": environ.get("wsgi.multithread"),
            "multiprocess": environ.get("wsgi.multiprocess"),
            "run_once": environ.get("wsgi.run_once"),
            "input_has": [m for m in ("read", "readline", "readlines", "__iter__") if hasattr(inp, m)],
            "errors_has": [m for m in ("write", "writelines", "flush") if hasattr(errors, m)],
            "file_wrapper": callable(environ.get("wsgi.file_wrapper")),
        },
        "path_info_utf8": environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace"),
        "cwd": os.getcwd(),
        "osenv": {k: os.environ.get(k) for k in opts.get("osenv", [])},
        "body_len": len(body),
        "body_crc32": zlib.crc32(body),
    }
    if opt("body"):
        result["body"] = body.decode("latin-1")

    code = int(opt("status", "200"))
    status = "%d %s" % (code, REASONS.get(code, "Custom Status"))
    out = b"" if opt("empty") or code == 204 else json.dumps(result).encode("ascii")
    headers = [("Content-Type", "application/json")]
    if code != 204:
        headers.append(("Content-Length", str(len(out))))
    for h in opts.get("header", []):
        name, _, value = h.partition(":")
        headers.append((name, value))
    for i in range(int(opt("cookies", "0"))):
        headers.append(("Set-Cookie", "c%d=v%d; Path=/" % (i, i)))
    start_response(status, headers)
    return [out] if out else []
