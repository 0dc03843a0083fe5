"""Streaming app for pyfpm's integration tests (stdlib only).

Yields the body in chunks from an iterable whose close() records that it was called.
Query string:
  chunks=N       number of chunks after the first (default 3)
  gate=PATH      after the first chunk, wait (at most 20 s) until PATH exists
  marker=PATH    close() writes "closed" to PATH
  fail_at=K      raise while producing chunk K
  big=N          instead: N bytes, byte i being i % 251, yielded in 100000-byte pieces
A test that waits for the first chunk before creating the gate file proves the response
is streamed rather than buffered, without measuring time.
"""

import os
import time
from urllib.parse import parse_qs


class Body:
    def __init__(self, opts):
        self.opts = opts
        self.i = 0
        self.chunks = int(opts.get("chunks", ["3"])[0])

    def __iter__(self):
        return self

    def __next__(self):
        i = self.i
        self.i += 1
        if "fail_at" in self.opts and i == int(self.opts["fail_at"][0]):
            raise RuntimeError("stream failed on purpose at chunk %d" % i)
        if i == 0:
            return b"first;"
        if i == 1 and "gate" in self.opts:
            gate = self.opts["gate"][0]
            deadline = time.monotonic() + 20
            while not os.path.exists(gate):
                if time.monotonic() > deadline:
                    return b"gate-timeout;"
                time.sleep(0.02)
        if i > self.chunks:
            raise StopIteration
        return b"chunk%d;" % i

    def close(self):
        if "marker" in self.opts:
            with open(self.opts["marker"][0], "w") as f:
                f.write("closed")


def big_body(n):
    block = bytes(i % 251 for i in range(251 * 400))  # a whole number of periods
    sent = 0
    while sent < n:
        # Pieces of 100000 bytes: larger than one FastCGI record.
        piece = (block * 2)[sent % 251:][:100000][: n - sent]
        yield piece
        sent += len(piece)


def application(environ, start_response):
    opts = parse_qs(environ.get("QUERY_STRING", ""))
    if "big" in opts:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return big_body(int(opts["big"][0]))
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
    return Body(opts)
