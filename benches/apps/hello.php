<?php
// PHP-FPM's reference row in benches/bench.py: the same 13-byte body as app.py's /hello.
header('Content-Type: text/plain');
echo 'Hello, World!';
