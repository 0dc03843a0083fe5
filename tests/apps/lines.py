"""wsgi.input line-reading app for pyfpm's integration tests (stdlib only).

The query string picks how the body is read (mode=readline|iter|readlines|mixed|sized);
the JSON answer lists the pieces read, latin-1 decoded, so a test can check the exact
boundaries.
"""

import json
from urllib.parse import parse_qs


def application(environ, start_response):
    mode = parse_qs(environ.get("QUERY_STRING", "")).get("mode", ["readline"])[0]
    inp = environ["wsgi.input"]
    pieces = []
    if mode == "readline":
        while True:
            line = inp.readline()
            if not line:
                break
            pieces.append(line)
    elif mode == "iter":
        pieces = list(inp)
    elif mode == "readlines":
        pieces = inp.readlines()
    elif mode == "sized":
        # readline(size) stops after size bytes even mid-line.
        while True:
            line = inp.readline(4)
            if not line:
                break
            pieces.append(line)
    elif mode == "mixed":
        pieces.append(inp.read(3))
        pieces.append(inp.readline())
        pieces.append(inp.read())
        pieces.append(inp.read())  # at end of stream: b"", never blocks
    out = json.dumps({"mode": mode, "pieces": [p.decode("latin-1") for p in pieces],
                      "types": sorted({type(p).__name__ for p in pieces})}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [out]
