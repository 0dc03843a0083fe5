#!/usr/bin/env python3
"""A bounded raw FastCGI load driver: N requests to one FastCGI socket, each checked.

Made for measuring a backend's cost per request with tools that count work rather
than time (valgrind --tool=callgrind, strace -c, perf stat), on a shared machine where
wrk would disturb others: it sends a fixed number of requests one after another, never
runs for a fixed time, and needs nothing but the standard library.

Each request is what nginx sends with the stock `include fastcgi_params;`: one write
holding BEGIN_REQUEST, one padded PARAMS record, the empty PARAMS record and the empty
STDIN record. `--params browser` (the default) adds ten request headers a browser sends
(30 params in all); `--params wrk` sends only the stock params and Host (20), as nginx
does for wrk's requests in benches/bench.py.

Every response is decoded and checked: status 200 (or none, meaning 200), the expected
body, FCGI_REQUEST_COMPLETE. The first failure stops the run with exit status 1.

    # one connection per request (nginx without fastcgi_keep_conn)
    python3 benches/fcgi_load.py --socket /tmp/x/www.sock --requests 2000
    # one kept connection for all (fastcgi_keep_conn on)
    python3 benches/fcgi_load.py --socket /tmp/x/www.sock --requests 2000 --keep-conn
    # the echo scenario: a 64 KiB POST echoed back
    python3 benches/fcgi_load.py --socket /tmp/x/www.sock --keep-conn --uri /echo \
        --post 65536

Measuring the worker's instructions per request: run the worker under callgrind (see
"Cost per request without wrk" in benches/README.md), serve two runs of different
lengths, e.g. 2000 and 12000 requests, and divide the difference of the totals by
10000; start-up and shutdown cancel out.
"""

import argparse
import socket
import struct
import sys
import time

FCGI_VERSION_1 = 1
BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 3, 4, 5, 6, 7
RESPONDER = 1
KEEP_CONN = 1
REQUEST_ID = 1
HEADER = struct.Struct(">BBHHBx")
# REMOTE_PORT changes from request to request, as the client ports nginx reports do
# (a backend that caches repeated values must not look better than it is): five digits,
# so the request's length stays the same and the port is patched in place.
PORT_PLACEHOLDER = "00000"
FIRST_PORT, PORTS = 32768, 28000


def record(rtype, content=b"", request_id=REQUEST_ID):
    """One record, content padded to a multiple of 8 bytes (as nginx pads)."""
    pad = -len(content) % 8
    header = HEADER.pack(FCGI_VERSION_1, rtype, request_id, len(content), pad)
    return header + content + b"\0" * pad


def nv_len(n):
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def nv_pairs(params):
    out = bytearray()
    for name, value in params:
        name, value = name.encode("latin-1"), value.encode("latin-1")
        out += nv_len(len(name)) + nv_len(len(value)) + name + value
    return bytes(out)


def nginx_params(uri, params_kind, post=0):
    """The params nginx 1.22 sends for `GET uri` (or a POST of `post` bytes) with
    Debian's fastcgi_params."""
    path, _, query = uri.partition("?")
    params = [
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", "POST" if post else "GET"),
        ("CONTENT_TYPE", "application/octet-stream" if post else ""),
        ("CONTENT_LENGTH", str(post) if post else ""),
        ("SCRIPT_NAME", path),
        ("REQUEST_URI", uri),
        ("DOCUMENT_URI", path),
        ("DOCUMENT_ROOT", "/usr/share/nginx/html"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "nginx/1.22.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", PORT_PLACEHOLDER),
        ("REMOTE_USER", ""),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "8080"),
        ("SERVER_NAME", "localhost"),
        ("REDIRECT_STATUS", "200"),
        ("HTTP_HOST", "localhost"),
    ]
    if params_kind == "browser":
        params += [
            ("HTTP_CONNECTION", "keep-alive"),
            ("HTTP_CACHE_CONTROL", "max-age=0"),
            ("HTTP_UPGRADE_INSECURE_REQUESTS", "1"),
            (
                "HTTP_USER_AGENT",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
                "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            ),
            (
                "HTTP_ACCEPT",
                "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                "image/webp,*/*;q=0.8",
            ),
            ("HTTP_SEC_FETCH_SITE", "none"),
            ("HTTP_SEC_FETCH_MODE", "navigate"),
            ("HTTP_SEC_FETCH_DEST", "document"),
            ("HTTP_ACCEPT_ENCODING", "gzip, deflate, br"),
            ("HTTP_ACCEPT_LANGUAGE", "en-GB,en;q=0.9"),
        ]
    return params


# nginx sends a request body in STDIN records of at most this much.
STDIN_RECORD = 32768


def request_bytes(params, keep_conn, body=b""):
    """One request as nginx writes it: a single buffer, a single write."""
    flags = KEEP_CONN if keep_conn else 0
    stdin = b"".join(
        record(STDIN, body[i : i + STDIN_RECORD])
        for i in range(0, len(body), STDIN_RECORD)
    )
    return (
        record(BEGIN_REQUEST, struct.pack(">HB5x", RESPONDER, flags))
        + record(PARAMS, nv_pairs(params))
        + record(PARAMS)
        + stdin
        + record(STDIN)
    )


class Reader:
    """Decodes records from a socket, keeping bytes beyond the current response."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed before END_REQUEST")
        self.buf += chunk

    def record(self):
        while len(self.buf) < HEADER.size:
            self._fill()
        version, rtype, rid, clen, plen = HEADER.unpack_from(self.buf)
        if version != FCGI_VERSION_1:
            raise ValueError("bad record version %d" % version)
        total = HEADER.size + clen + plen
        while len(self.buf) < total:
            self._fill()
        content = bytes(self.buf[HEADER.size : HEADER.size + clen])
        del self.buf[:total]
        return rtype, rid, content

    def response(self):
        """(stdout bytes, stderr bytes, app status, protocol status) of one request."""
        stdout, stderr = bytearray(), bytearray()
        while True:
            rtype, rid, content = self.record()
            if rid != REQUEST_ID:
                raise ValueError("record for request id %d" % rid)
            if rtype == STDOUT:
                stdout += content
            elif rtype == STDERR:
                stderr += content
            elif rtype == END_REQUEST:
                app_status, proto = struct.unpack(">IB3x", content)
                return bytes(stdout), bytes(stderr), app_status, proto
            else:
                raise ValueError("unexpected record type %d" % rtype)


def check(response, expect_body):
    """None if the response is a complete 200 with the expected body, else why not."""
    stdout, stderr, _app_status, proto = response
    if proto != 0:
        return "protocol status %d" % proto
    head, sep, body = stdout.partition(b"\r\n\r\n")
    if not sep:
        return "no end of headers in %r" % stdout[:200]
    for line in head.split(b"\r\n"):
        status = line[7:].strip()
        if line.lower().startswith(b"status:") and not status.startswith(b"200"):
            return "status %r (stderr %r)" % (line, stderr[:200])
    if expect_body is not None and body != expect_body:
        return "body %r" % body[:200]
    return None


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def run(args):
    params = nginx_params(args.uri, args.params, args.post)
    body = b"x" * args.post
    wire = bytearray(request_bytes(params, args.keep_conn, body))
    port_pair = b"REMOTE_PORT" + PORT_PLACEHOLDER.encode()
    port_at = wire.index(port_pair) + len("REMOTE_PORT")
    if args.any_body:
        expect = None
    elif args.body is None:
        expect = body if args.post else b"Hello, World!"
    else:
        expect = args.body.encode("latin-1")
    started = time.monotonic()
    sock = reader = None
    for i in range(args.requests):
        wire[port_at : port_at + 5] = b"%05d" % (FIRST_PORT + i % PORTS)
        try:
            if sock is None:
                sock = connect(args.socket)
                reader = Reader(sock)
            sock.sendall(wire)
            problem = check(reader.response(), expect)
        except (OSError, EOFError, ValueError) as e:
            problem = "%s: %s" % (type(e).__name__, e)
        if problem:
            print("request %d: %s" % (i + 1, problem), file=sys.stderr)
            return 1
        if not args.keep_conn:
            # As nginx does without fastcgi_keep_conn: END_REQUEST ends the exchange.
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    elapsed = time.monotonic() - started
    if not args.quiet:
        print(
            "%d requests (%d params, %s) in %.2f s: %.0f req/s"
            % (
                args.requests,
                len(params),
                "one kept connection" if args.keep_conn else "a connection each",
                elapsed,
                args.requests / elapsed if elapsed else 0.0,
            )
        )
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True, help="the backend's Unix socket")
    ap.add_argument(
        "--requests", type=int, default=1000, help="how many (default 1000)"
    )
    ap.add_argument(
        "--keep-conn",
        action="store_true",
        help="set FCGI_KEEP_CONN and send every request on one connection",
    )
    ap.add_argument("--uri", default="/hello", help="request URI (default /hello)")
    ap.add_argument(
        "--params",
        choices=["browser", "wrk"],
        default="browser",
        help="stock fastcgi_params plus a browser's headers (30 params, the default) "
        "or plus only Host, as for wrk (20 params)",
    )
    ap.add_argument(
        "--post",
        type=int,
        default=0,
        metavar="BYTES",
        help="POST a body of BYTES bytes (for /echo, as the benchmark does)",
    )
    ap.add_argument(
        "--body",
        help="expected response body (default: hello's, or the posted body with --post)",
    )
    ap.add_argument("--any-body", action="store_true", help="do not check the body")
    ap.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    args = ap.parse_args(argv)
    if args.requests < 1:
        ap.error("--requests must be at least 1")
    if args.post < 0:
        ap.error("--post must not be negative")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
