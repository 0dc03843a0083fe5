"""flup's prefork FastCGI server for benches/bench.py: serves app.py's `application` on
the Unix socket given as the first argument with exactly 2 worker processes (flup keeps
between minSpare and maxSpare idle children, up to maxChildren)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flup.server.fcgi_fork import WSGIServer  # noqa: E402

from app import application  # noqa: E402

if __name__ == "__main__":
    WSGIServer(
        application,
        bindAddress=sys.argv[1],
        minSpare=2,
        maxSpare=2,
        maxChildren=2,
        umask=0o077,
    ).run()
