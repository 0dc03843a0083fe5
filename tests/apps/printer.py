"""App that prints, for pyfpm's tests of the workers' output (stdlib only).

Query string:
  line=TEXT      print TEXT to sys.stdout (without flushing)
  buffered=1     first replace sys.stdout with a buffered stream (as some apps and
                 logging setups do), whose output stays in the buffer until flushed
Answers 200 "printed".
"""

import io
import sys
from urllib.parse import parse_qs


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    if opts.get("buffered") == ["1"] and sys.stdout is sys.__stdout__:
        raw = io.FileIO(sys.__stdout__.fileno(), "w", closefd=False)
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw, 65536), write_through=False)
    print(opts.get("line", ["-"])[0])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"printed"]
