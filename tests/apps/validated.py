"""An app wrapped in wsgiref.validate.validator: any PEP 3333 violation by the server
(environ types, wsgi.input/wsgi.errors API, start_response rules, close() not called)
raises AssertionError inside the app and turns into a 500."""

import gc
import sys
from wsgiref.validate import validator


def inner(environ, start_response):
    if environ.get("QUERY_STRING") == "done":
        # Collect any result object still pending, then mark the end on the same stream
        # (fd 2) that would carry the validator's complaints, so the test can wait for it.
        gc.collect()
        sys.stderr.write("VALIDATOR-DONE\n")
        sys.stderr.flush()
    length = environ.get("CONTENT_LENGTH") or "0"
    body = environ["wsgi.input"].read(int(length)) if int(length) else b""
    if environ.get("QUERY_STRING") == "lines":
        environ["wsgi.input"].readline()
        environ["wsgi.input"].readlines()
        for _ in environ["wsgi.input"]:
            pass
    environ["wsgi.errors"].write("validated app saw %d bytes\n" % len(body))
    environ["wsgi.errors"].writelines(["a line\n"])
    environ["wsgi.errors"].flush()
    out = b"validated:" + body
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]


application = validator(inner)


def _unraisable(hook_args, _prev=sys.unraisablehook):
    # The validator asserts in __del__ when close() was never called; such an error is
    # "unraisable", so make it loud on stderr where the test reads the pool's log.
    sys.stderr.write("VALIDATOR-UNRAISABLE: %r\n" % (hook_args.exc_value,))
    _prev(hook_args)


sys.unraisablehook = _unraisable
