"""App behind the real web servers of tests/webservers.rs (stdlib only).

One pool serves every role the web servers speak:
  FCGI_ROLE=AUTHORIZER  the authorizer below (Apache mod_authnz_fcgi, lighttpd
                        "mode" => "authorizer")
  ?app=stream           stream.py (a response produced in chunks)
  anything else         echo.py (JSON of the environ and a CRC-32 of the body)

The authorizer decides on the user, taken from the request header X-Auth-User
(HTTP_X_AUTH_USER), else from REMOTE_USER (set by Apache for its authz providers):
  alice   200, with `Variable-X-User: alice` for the web server to pass on
  none    401 with WWW-Authenticate and a body naming this app
  other   403 with a body naming the user
When Apache calls it as a Basic-auth password checker (FCGI_APACHE_ROLE=AUTHENTICATOR
with REMOTE_USER / REMOTE_PASSWD), alice/secret and bob/secret pass, anything else gets
401. Every answer also carries what the authorizer saw, for the backend to report:
`Variable-X-Authz-Role` (FCGI_APACHE_ROLE or "none"), `Variable-X-Authz-Path`
(SCRIPT_NAME|PATH_INFO), `Variable-X-Authz-Method` and `Variable-X-Authz-Body` (the
length wsgi.input gave, which must be 0: an authorizer gets no body).
"""

import echo
import stream


def authorizer(environ, start_response):
    apache_role = environ.get("FCGI_APACHE_ROLE", "")
    variables = [
        ("Variable-X-Authz-Role", apache_role or "none"),
        ("Variable-X-Authz-Path", environ.get("SCRIPT_NAME", "") + "|" + environ.get("PATH_INFO", "")),
        ("Variable-X-Authz-Method", environ.get("REQUEST_METHOD", "")),
        ("Variable-X-Authz-Body", str(len(environ["wsgi.input"].read()))),
    ]
    if apache_role == "AUTHENTICATOR" and "REMOTE_PASSWD" in environ:
        user = environ.get("REMOTE_USER", "")
        if user in ("alice", "bob") and environ["REMOTE_PASSWD"] == "secret":
            start_response("200 OK", variables)
            return [b""]
        user = ""
    else:
        user = environ.get("HTTP_X_AUTH_USER") or environ.get("REMOTE_USER", "")
    if user == "alice":
        start_response("200 OK", [("Variable-X-User", user)] + variables)
        return [b""]
    if not user:
        # No "word:" at the start: Apache's mod_authnz_fcgi hands the body to
        # ap_custom_response, which takes a string that looks like a URL for a redirect.
        body = b"who are you? (pyfpm authorizer)\n"
        start_response(
            "401 Unauthorized",
            [
                ("WWW-Authenticate", 'Basic realm="pyfpm-test"'),
                ("Content-Type", "text/plain"),
                ("Content-Length", str(len(body))),
            ]
            + variables,
        )
        return [body]
    body = ("denied by the pyfpm authorizer (%s)\n" % user).encode("latin-1")
    start_response(
        "403 Forbidden",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))] + variables,
    )
    return [body]


def application(environ, start_response):
    if environ.get("FCGI_ROLE") == "AUTHORIZER":
        return authorizer(environ, start_response)
    if "app=stream" in environ.get("QUERY_STRING", ""):
        return stream.application(environ, start_response)
    return echo.application(environ, start_response)
