"""An app whose worker dies on /crash (os._exit(1)); other paths answer with the pid."""

import os


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/crash":
        os._exit(1)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
