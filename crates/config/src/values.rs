//! Parsers for the value syntaxes of the config file: `${VAR}` interpolation, booleans,
//! durations, sizes, octal modes, integers, listen addresses, `module:callable`, mount
//! prefixes, names, and path resolution.
//!
//! Each parser takes the scalar's text and returns the value or a reason phrased for a
//! sysadmin, without the directive name: the loader prefixes `'directive': ` and the
//! position, so the same wording serves every directive of a kind.

use crate::ListenAddr;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Longest Unix socket path bind(2) accepts (`sun_path` is 108 bytes with the NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// Expand `${VAR}` and `${VAR:-default}` (default used when VAR is unset or empty, as in
/// sh); `$$` is a literal `$`, and a `$` followed by anything else is kept as written.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!(
                    "unterminated '${{' in '{text}' (write '$$' for a literal '$')"
                ));
            };
            let inner = &body[..end];
            let (name, default) = match inner.find(":-") {
                Some(j) => (&inner[..j], Some(&inner[j + 2..])),
                None => (inner, None),
            };
            if !is_env_name(name) {
                return Err(format!(
                    "invalid variable name '{name}' in '${{{inner}}}' (letters, digits and '_', \
                     not starting with a digit)"
                ));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable '{name}' is not set (give a default with \
                         '${{{name}:-value}}')"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `true/false`, `yes/no`, `on/off`, `1/0`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "invalid boolean '{s}' (use true/false, yes/no, on/off or 1/0)"
        )),
    }
}

/// A duration: `500ms`, `10s`, `5m`, `1h`, `1d`, a bare number of seconds, or a sum
/// such as `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration '{s}' (use a whole number with ms, s, m, h or d, e.g. 30s)");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86400).map(Duration::from_secs),
            _ => return Err(bad()),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("duration '{s}' is too large"))?;
    }
    Ok(total)
}

/// A size in bytes: `512`, `64K`, `64M`, `1G` (binary multiples, any case, with an
/// optional `B` or `iB`).
/// A duration as a sysadmin would write it back: `30s`, `1500ms`, `5m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// A size (bytes), as in the config file: `512`, `1K`, `1M`, `1G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size '{s}' (use a whole number with an optional K, M or G, e.g. 1M)");
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("size '{s}' is too large"))?;
    let shift = match t[digits..].trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Format a byte count the way the file would say it (`1K`, `1M`, `1536`).
pub fn format_size(n: u64) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// An octal permission mode such as `0660`, `660` or `0o660`, at most `0777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("invalid mode '{s}' (use octal digits, e.g. 0660)"));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "mode '{s}' is larger than 0777 (setuid, setgid and sticky bits do not apply to sockets)"
        )),
    }
}

/// A decimal integer within `min..=max`.
pub fn parse_int(s: &str, min: i64, max: i64) -> Result<i64, String> {
    let t = s.trim();
    let n: i64 = t.parse().map_err(|_| format!("invalid integer '{s}'"))?;
    if n < min {
        return Err(format!("must be at least {min}, got {n}"));
    }
    if n > max {
        return Err(format!("must be at most {max}, got {n}"));
    }
    Ok(n)
}

/// A listen address: `/abs/path.sock`, `unix:/path`, a relative socket path (resolved
/// against `base`), `ip:port`, `[v6]:port`, or a bare port (`[::]:port`, dual-stack).
pub fn parse_listen(s: &str, base: &Path) -> Result<ListenAddr, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty listen address".into());
    }
    if let Some(p) = t.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("'unix:' needs a socket path, e.g. unix:/run/pyfpm/www.sock".into());
        }
        return unix_path(p, base);
    }
    if t.starts_with('/') || t.starts_with('.') {
        return unix_path(t, base);
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let port = parse_port(t, t)?;
        return Ok(ListenAddr::Tcp(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            port,
        )));
    }
    if let Some(rest) = t.strip_prefix('[') {
        let Some((host, port)) = rest.split_once("]:") else {
            return Err(format!(
                "invalid listen address '{t}' (an IPv6 address is written [addr]:port, e.g. [::1]:9000)"
            ));
        };
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("invalid IPv6 address '{host}' in '{t}'"))?;
        let port = parse_port(port, t)?;
        return Ok(ListenAddr::Tcp(SocketAddr::new(IpAddr::V6(ip), port)));
    }
    if let Some((host, port)) = t.rsplit_once(':') {
        if host.contains(':') {
            return Err(format!(
                "invalid listen address '{t}' (put an IPv6 address in brackets, e.g. [::1]:9000)"
            ));
        }
        let ip: IpAddr = match host.parse() {
            Ok(ip) => ip,
            Err(_) => {
                let example = if host.eq_ignore_ascii_case("localhost") {
                    "127.0.0.1"
                } else {
                    "0.0.0.0"
                };
                return Err(format!(
                    "'{host}' is not an IP address; host names are not accepted, write an IP \
                     address such as {example}:{port}"
                ));
            }
        };
        let port = parse_port(port, t)?;
        return Ok(ListenAddr::Tcp(SocketAddr::new(ip, port)));
    }
    unix_path(t, base)
}

fn unix_path(p: &str, base: &Path) -> Result<ListenAddr, String> {
    let path = resolve_path(base, p);
    let len = path.as_os_str().len();
    if len > MAX_UNIX_PATH {
        return Err(format!(
            "socket path {} is {len} bytes long; Unix socket paths are limited to {MAX_UNIX_PATH} bytes",
            path.display()
        ));
    }
    Ok(ListenAddr::Unix(path))
}

fn parse_port(p: &str, whole: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid port '{p}' in '{whole}' (a number from 1 to 65535)"
        ));
    }
    match p.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(format!(
            "port {p} in '{whole}' is out of range (1 to 65535)"
        )),
    }
}

/// Check `module:callable` (both dotted Python identifiers).
pub fn parse_app(s: &str) -> Result<(), String> {
    let example = "e.g. myproject.wsgi:application";
    let Some((module, callable)) = s.split_once(':') else {
        return Err(format!("'{s}' is not module:callable ({example})"));
    };
    if !is_dotted_identifier(module) {
        return Err(format!(
            "'{module}' is not a Python module name (dotted identifiers, {example})"
        ));
    }
    if !is_dotted_identifier(callable) {
        return Err(format!(
            "'{callable}' is not a Python attribute name (dotted identifiers, {example})"
        ));
    }
    Ok(())
}

fn is_dotted_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
                && chars.all(|c| c == '_' || c.is_alphanumeric())
        })
}

/// A URL prefix: `""`/`"/"` for the root, else `/a/b`, returned without a trailing
/// slash and with repeated slashes collapsed.
pub fn parse_mount(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t == "/" {
        return Ok(String::new());
    }
    if !t.starts_with('/') {
        return Err(format!(
            "'{t}' must start with '/' (e.g. /app), or be empty for the root"
        ));
    }
    if let Some(c) = t
        .chars()
        .find(|c| matches!(c, '?' | '#') || c.is_whitespace())
    {
        return Err(format!(
            "'{t}' is a URL path prefix and cannot contain {c:?}"
        ));
    }
    let mut out = String::new();
    for seg in t.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Err(format!("'{t}' cannot contain '.' or '..' segments"));
        }
        out.push('/');
        out.push_str(seg);
    }
    Ok(out)
}

/// Pool names: `[A-Za-z0-9_.-]+`.
pub fn is_pool_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Environment variable names: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c == b'_' || c.is_ascii_alphabetic())
        && b.all(|c| c == b'_' || c.is_ascii_alphanumeric())
}

/// Resolve `p` against `base` (the containing file's directory, made absolute against
/// the current directory) and normalise `.` and `..` lexically, so that messages, the
/// worker spec and duplicate checks see one spelling of each path. Lexical `..` differs
/// from the kernel's only across a symlink followed by `..`, which config paths do not
/// need.
pub fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let joined = base.join(p);
    let absolute = std::path::absolute(&joined).unwrap_or(joined);
    normalize(&absolute)
}

/// Lexically remove `.` and `..` components.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation() {
        let i = |s: &str| interpolate(s, &env);
        assert_eq!(i("plain").unwrap(), "plain");
        assert_eq!(i("${HOME}/app").unwrap(), "/home/x/app");
        assert_eq!(i("${NOPE:-/run/pyfpm}/a").unwrap(), "/run/pyfpm/a");
        assert_eq!(i("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(i("${HOME:-d}").unwrap(), "/home/x");
        assert_eq!(i("${NOPE:-}x").unwrap(), "x");
        assert_eq!(i("$$HOME and $$").unwrap(), "$HOME and $");
        assert_eq!(i("cost $5").unwrap(), "cost $5");
        assert_eq!(i("a$").unwrap(), "a$");
        assert_eq!(
            i("${NOPE}").unwrap_err(),
            "environment variable 'NOPE' is not set (give a default with '${NOPE:-value}')"
        );
        assert_eq!(
            i("x${HOME").unwrap_err(),
            "unterminated '${' in 'x${HOME' (write '$$' for a literal '$')"
        );
        assert_eq!(
            i("${1A}").unwrap_err(),
            "invalid variable name '1A' in '${1A}' (letters, digits and '_', not starting with a digit)"
        );
    }

    #[test]
    fn booleans() {
        for t in ["true", "TRUE", "yes", "On", "1"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["false", "No", "OFF", "0"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        assert_eq!(
            parse_bool("maybe").unwrap_err(),
            "invalid boolean 'maybe' (use true/false, yes/no, on/off or 1/0)"
        );
        assert!(parse_bool("2").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        let msg =
            "invalid duration '10 parsecs' (use a whole number with ms, s, m, h or d, e.g. 30s)";
        assert_eq!(parse_duration("10 parsecs").unwrap_err(), msg);
        for bad in ["", "s", "-1s", "1.5s", "10x", "10S", "ms10"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("99999999999999999999d").unwrap_err(),
            "invalid duration '99999999999999999999d' (use a whole number with ms, s, m, h or d, e.g. 30s)"
        );
        assert_eq!(
            parse_duration("999999999999999999d").unwrap_err(),
            "duration '999999999999999999d' is too large"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("64KB"), Ok(64 << 10));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1gb"), Ok(1 << 30));
        assert_eq!(parse_size("100b"), Ok(100));
        assert_eq!(
            parse_size("1X").unwrap_err(),
            "invalid size '1X' (use a whole number with an optional K, M or G, e.g. 1M)"
        );
        for bad in ["", "K", "-1", "1.5M", "1T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_size("99999999999G").unwrap_err(),
            "size '99999999999G' is too large"
        );
        assert_eq!(format_size(1 << 20), "1M");
        assert_eq!(format_size(1024), "1K");
        assert_eq!(format_size(1536), "1536");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert_eq!(parse_mode("0777"), Ok(0o777));
        assert_eq!(
            parse_mode("0999").unwrap_err(),
            "invalid mode '0999' (use octal digits, e.g. 0660)"
        );
        assert_eq!(
            parse_mode("01777").unwrap_err(),
            "mode '01777' is larger than 0777 (setuid, setgid and sticky bits do not apply to sockets)"
        );
        assert!(parse_mode("").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn integers() {
        assert_eq!(parse_int("5", 1, 10), Ok(5));
        assert_eq!(
            parse_int("0", 1, 10).unwrap_err(),
            "must be at least 1, got 0"
        );
        assert_eq!(
            parse_int("11", 1, 10).unwrap_err(),
            "must be at most 10, got 11"
        );
        assert_eq!(
            parse_int("five", 1, 10).unwrap_err(),
            "invalid integer 'five'"
        );
        assert!(parse_int("1.0", 1, 10).is_err());
    }

    #[test]
    fn listen_addresses() {
        let base = Path::new("/etc/pyfpm/pools.d");
        let l = |s: &str| parse_listen(s, base);
        assert_eq!(l("/run/a.sock"), Ok(ListenAddr::Unix("/run/a.sock".into())));
        assert_eq!(
            l("unix:/run/a.sock"),
            Ok(ListenAddr::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            l("run/a.sock"),
            Ok(ListenAddr::Unix("/etc/pyfpm/pools.d/run/a.sock".into()))
        );
        assert_eq!(
            l("../a.sock"),
            Ok(ListenAddr::Unix("/etc/pyfpm/a.sock".into()))
        );
        assert_eq!(
            l("127.0.0.1:9000"),
            Ok(ListenAddr::Tcp("127.0.0.1:9000".parse().unwrap()))
        );
        assert_eq!(
            l("[::1]:9000"),
            Ok(ListenAddr::Tcp("[::1]:9000".parse().unwrap()))
        );
        assert_eq!(l("9000"), Ok(ListenAddr::Tcp("[::]:9000".parse().unwrap())));
        assert_eq!(
            l("65535"),
            Ok(ListenAddr::Tcp("[::]:65535".parse().unwrap()))
        );
        assert_eq!(
            l("127.0.0.1:69002").unwrap_err(),
            "port 69002 in '127.0.0.1:69002' is out of range (1 to 65535)"
        );
        assert_eq!(
            l("0").unwrap_err(),
            "port 0 in '0' is out of range (1 to 65535)"
        );
        assert_eq!(
            l("127.0.0.1:http").unwrap_err(),
            "invalid port 'http' in '127.0.0.1:http' (a number from 1 to 65535)"
        );
        assert_eq!(
            l("localhost:9000").unwrap_err(),
            "'localhost' is not an IP address; host names are not accepted, write an IP address such as 127.0.0.1:9000"
        );
        assert_eq!(
            l("::1:9000").unwrap_err(),
            "invalid listen address '::1:9000' (put an IPv6 address in brackets, e.g. [::1]:9000)"
        );
        assert_eq!(
            l("[::1]9000").unwrap_err(),
            "invalid listen address '[::1]9000' (an IPv6 address is written [addr]:port, e.g. [::1]:9000)"
        );
        assert_eq!(
            l("[zz]:1").unwrap_err(),
            "invalid IPv6 address 'zz' in '[zz]:1'"
        );
        assert_eq!(l("").unwrap_err(), "empty listen address");
        let long = format!("/{}", "a".repeat(107));
        assert_eq!(
            l(&long).unwrap_err(),
            format!(
                "socket path {long} is 108 bytes long; Unix socket paths are limited to 107 bytes"
            )
        );
    }

    #[test]
    fn apps() {
        assert_eq!(parse_app("app:application"), Ok(()));
        assert_eq!(parse_app("my.pkg.wsgi:make.app"), Ok(()));
        assert_eq!(parse_app("_x1:_y"), Ok(()));
        assert_eq!(
            parse_app("app").unwrap_err(),
            "'app' is not module:callable (e.g. myproject.wsgi:application)"
        );
        assert_eq!(
            parse_app("my-app:app").unwrap_err(),
            "'my-app' is not a Python module name (dotted identifiers, e.g. myproject.wsgi:application)"
        );
        assert_eq!(
            parse_app("app:create_app()").unwrap_err(),
            "'create_app()' is not a Python attribute name (dotted identifiers, e.g. myproject.wsgi:application)"
        );
        for bad in [":app", "app:", "a..b:c", "1a:b", "a:b:c"] {
            assert!(parse_app(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mounts() {
        assert_eq!(parse_mount(""), Ok(String::new()));
        assert_eq!(parse_mount("/"), Ok(String::new()));
        assert_eq!(parse_mount("/app/"), Ok("/app".into()));
        assert_eq!(parse_mount("//a//b/"), Ok("/a/b".into()));
        assert_eq!(
            parse_mount("app").unwrap_err(),
            "'app' must start with '/' (e.g. /app), or be empty for the root"
        );
        assert_eq!(
            parse_mount("/a?b").unwrap_err(),
            "'/a?b' is a URL path prefix and cannot contain '?'"
        );
        assert_eq!(
            parse_mount("/a/../b").unwrap_err(),
            "'/a/../b' cannot contain '.' or '..' segments"
        );
    }

    #[test]
    fn names() {
        assert!(is_pool_name("www"));
        assert!(is_pool_name("my-pool.v2_x"));
        assert!(!is_pool_name(""));
        assert!(!is_pool_name("a b"));
        assert!(!is_pool_name("a/b"));
        assert!(is_env_name("_A1"));
        assert!(!is_env_name("1A"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn paths() {
        assert_eq!(
            resolve_path(Path::new("/a/b"), "../c/./d"),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(resolve_path(Path::new("/a/b"), "/x"), PathBuf::from("/x"));
        let rel = resolve_path(Path::new("x"), "y");
        assert!(rel.is_absolute());
        assert!(rel.ends_with("x/y"));
    }
}
