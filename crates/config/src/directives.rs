//! The directive table: every configuration directive, declared once with its scope,
//! value kind, default and documentation.
//!
//! The loader takes its set of known keys, its "did you mean" candidates and its
//! defaults (parsed from [`DefaultValue::Value`] text with the same parsers as the file) from
//! [`DIRECTIVES`]; `man/pyfpm.yaml.5` embeds [`man_section`], and a test fails when the
//! two drift apart.

/// Where a directive may appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main file's top level.
    Global,
    /// Inside a pool.
    Pool,
}

/// The syntax a directive's value takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A file or directory path; relative paths are relative to the file's directory.
    Path,
    /// Free text.
    String,
    /// A user or group name, or a numeric id.
    Account,
    /// true/false, yes/no, on/off, 1/0.
    Bool,
    /// `500ms`, `10s`, `5m`, `1h`, `1d`; a bare number is seconds.
    Duration,
    /// `512`, `64K`, `1M`, `1G`, at least `min` bytes.
    Size {
        /// Smallest accepted size in bytes.
        min: u64,
    },
    /// A decimal integer in `min..=max`.
    Int {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// An octal permission mode up to 0777.
    Mode,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// One or more of a fixed set of words (a word or a list).
    ChoiceList(&'static [&'static str]),
    /// One listen address, or a list of them.
    Listen,
    /// One glob, or a list of them.
    Globs,
    /// One directory, or a list of them.
    PathList,
    /// A mapping of environment variable names to strings.
    EnvMap,
    /// A mapping of pool names to pool directives.
    PoolMap,
    /// `module:callable`.
    App,
    /// A URL path prefix.
    Mount,
    /// An interpreter name looked up on PATH, or a path.
    Interpreter,
}

impl Kind {
    /// How the man page and messages name the kind.
    pub fn syntax(&self) -> String {
        match self {
            Kind::Path => "path".into(),
            Kind::String => "string".into(),
            Kind::Account => "name or id".into(),
            Kind::Bool => "boolean".into(),
            Kind::Duration => "duration".into(),
            Kind::Size { .. } => "size".into(),
            Kind::Int { .. } => "integer".into(),
            Kind::Mode => "octal mode".into(),
            Kind::Choice(words) => words.join(" | "),
            Kind::ChoiceList(words) => format!("list of {}", words.join(" | ")),
            Kind::Listen => "address or list of addresses".into(),
            Kind::Globs => "glob or list of globs".into(),
            Kind::PathList => "directory or list of directories".into(),
            Kind::EnvMap => "mapping of NAME: value".into(),
            Kind::PoolMap => "mapping of pool name: directives".into(),
            Kind::App => "module:callable".into(),
            Kind::Mount => "URL path prefix".into(),
            Kind::Interpreter => "command name or path".into(),
        }
    }
}

/// A directive's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// Must be set.
    Required,
    /// Unset by default; the text says what that means.
    Unset(&'static str),
    /// This value, written as in the file and parsed like one.
    Value(&'static str),
}

/// One directive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directive {
    /// The key, exactly as written in the file (keys are case-sensitive).
    pub name: &'static str,
    /// Where it may appear.
    pub scope: Scope,
    /// Its value's syntax.
    pub kind: Kind,
    /// Its default.
    pub default: DefaultValue,
    /// One paragraph for the man page.
    pub doc: &'static str,
}

const LOG_LEVELS: &[&str] = &["alert", "error", "warning", "notice", "debug"];
const PM_MODES: &[&str] = &["static", "dynamic", "ondemand"];

/// Every directive, global ones first, each group in the order the man page lists them.
pub const DIRECTIVES: &[Directive] = &[
    Directive {
        name: "include",
        scope: Scope::Global,
        kind: Kind::Globs,
        default: DefaultValue::Value("pools.d/*.yaml"),
        doc: "Pool files to read, relative to the main file's directory. Each glob's \
              matches are read in name order; directories are skipped. A glob whose \
              directory does not exist is an error, one that matches nothing is a warning. \
              Set it to an empty list to read no pool files.",
    },
    Directive {
        name: "pools",
        scope: Scope::Global,
        kind: Kind::PoolMap,
        default: DefaultValue::Unset("none"),
        doc: "Pools defined in the main file itself, in the same form as a pool file: \
              each key is a pool name, each value the pool's directives.",
    },
    Directive {
        name: "pid",
        scope: Scope::Global,
        kind: Kind::Path,
        default: DefaultValue::Unset("no pid file"),
        doc: "Write the manager's process id to this file, and remove it on exit. \
              The -g option overrides it.",
    },
    Directive {
        name: "error_log",
        scope: Scope::Global,
        kind: Kind::Path,
        default: DefaultValue::Unset("standard error"),
        doc: "Where the manager and the workers log. Without it, logs go to standard \
              error (the journal under systemd).",
    },
    Directive {
        name: "log_level",
        scope: Scope::Global,
        kind: Kind::Choice(LOG_LEVELS),
        default: DefaultValue::Value("notice"),
        doc: "The least severe messages logged, as in PHP-FPM; warn is accepted for \
              warning.",
    },
    Directive {
        name: "daemonize",
        scope: Scope::Global,
        kind: Kind::Bool,
        default: DefaultValue::Value("true"),
        doc: "Run in the background after start-up. -F (foreground) and -D override it; \
              under systemd or in a container set it to false or use -F.",
    },
    Directive {
        name: "process_control_timeout",
        scope: Scope::Global,
        kind: Kind::Duration,
        default: DefaultValue::Value("30s"),
        doc: "On a graceful stop (SIGQUIT), how long workers may take to finish the \
              requests they are serving before they are killed.",
    },
    Directive {
        name: "worker_module",
        scope: Scope::Global,
        kind: Kind::Path,
        default: DefaultValue::Unset("the module built with pyfpm, beside the executable"),
        doc: "The pyfpm worker extension module every pool's interpreter loads. \
              --worker-module and PYFPM_WORKER_MODULE override it. It must come from the \
              same build as the pyfpm executable.",
    },
    Directive {
        name: "emergency_restart_threshold",
        scope: Scope::Global,
        kind: Kind::Int {
            min: 0,
            max: 100_000,
        },
        default: DefaultValue::Value("0"),
        doc: "When this many workers (of any pool) die on SIGSEGV or SIGBUS within \
              emergency_restart_interval, every worker is replaced, new ones first, as \
              PHP-FPM's emergency restart does (a corrupted shared state, a bad deploy). \
              0 turns it off; both this and emergency_restart_interval must be set.",
    },
    Directive {
        name: "emergency_restart_interval",
        scope: Scope::Global,
        kind: Kind::Duration,
        default: DefaultValue::Value("0"),
        doc: "The window emergency_restart_threshold counts crashes in, such as 1m. 0 \
              turns the emergency restart off.",
    },
    Directive {
        name: "process.max",
        scope: Scope::Global,
        kind: Kind::Int {
            min: 0,
            max: 1_000_000,
        },
        default: DefaultValue::Value("0"),
        doc: "The most worker processes of all pools at once, replacements included. \
              0 means no global limit. When it is reached no worker is started until \
              one exits, and a warning is logged once.",
    },
    Directive {
        name: "systemd_interval",
        scope: Scope::Global,
        kind: Kind::Duration,
        default: DefaultValue::Value("10s"),
        doc: "Under systemd (Type=notify), how often pyfpm reports its worker counts in \
              the unit's status line. 0 turns the reports off.",
    },
    Directive {
        name: "listen",
        scope: Scope::Pool,
        kind: Kind::Listen,
        default: DefaultValue::Required,
        doc: "Where the pool accepts FastCGI connections; one address or a list. \
              /path/to.sock or unix:/path/to.sock is a Unix socket (a relative path is \
              relative to the file's directory); ip:port or [ipv6]:port is TCP; a bare \
              port listens on every IPv4 and IPv6 address. Host names are not accepted. \
              No two pools may share an address.",
    },
    Directive {
        name: "listen.owner",
        scope: Scope::Pool,
        kind: Kind::Account,
        default: DefaultValue::Unset("the user pyfpm runs as"),
        doc: "Owner of the pool's Unix sockets. The web server must be able to write \
              to them (see listen.group and listen.mode).",
    },
    Directive {
        name: "listen.group",
        scope: Scope::Pool,
        kind: Kind::Account,
        default: DefaultValue::Unset("the group pyfpm runs as"),
        doc: "Group of the pool's Unix sockets; typically the web server's group \
              (www-data on Debian).",
    },
    Directive {
        name: "listen.mode",
        scope: Scope::Pool,
        kind: Kind::Mode,
        default: DefaultValue::Value("0660"),
        doc: "Permissions of the pool's Unix sockets, in octal (quoting is optional).",
    },
    Directive {
        name: "listen.backlog",
        scope: Scope::Pool,
        kind: Kind::Int { min: 1, max: 65535 },
        default: DefaultValue::Value("511"),
        doc: "Length of the queue of connections waiting for a worker (listen(2)); the \
              kernel caps it at net.core.somaxconn.",
    },
    Directive {
        name: "user",
        scope: Scope::Pool,
        kind: Kind::Account,
        default: DefaultValue::Unset("the user pyfpm runs as"),
        doc: "User the workers run as. Used only when pyfpm runs as root.",
    },
    Directive {
        name: "group",
        scope: Scope::Pool,
        kind: Kind::Account,
        default: DefaultValue::Unset("the user's primary group"),
        doc: "Group the workers run as. Used only when pyfpm runs as root.",
    },
    Directive {
        name: "pm",
        scope: Scope::Pool,
        kind: Kind::Choice(PM_MODES),
        default: DefaultValue::Value("static"),
        doc: "How the number of workers is managed, as in PHP-FPM. static: exactly \
              pm.max_children workers at all times. dynamic: pm.start_servers at \
              start-up, then between pm.min_spare_servers and pm.max_spare_servers idle \
              workers, checked every second. ondemand: no worker until a connection \
              waits; then as many as the waiting connections need, up to \
              pm.max_children; a worker idle for pm.process_idle_timeout is retired.",
    },
    Directive {
        name: "pm.max_children",
        scope: Scope::Pool,
        kind: Kind::Int {
            min: 1,
            max: 100_000,
        },
        default: DefaultValue::Required,
        doc: "static: the number of workers; dynamic and ondemand: the most workers at \
              once. Each serves threads requests at a time (one by default), so the pool \
              serves pm.max_children x threads requests at once.",
    },
    Directive {
        name: "threads",
        scope: Scope::Pool,
        kind: Kind::Int { min: 1, max: 256 },
        default: DefaultValue::Value("1"),
        doc: "Request threads in each worker. With 1 (the default) a worker serves one \
              request at a time, like a PHP-FPM child. With N a worker serves up to N \
              requests at once, each thread attached to the interpreter for its whole \
              life and detached around every blocking read and write, so apps that \
              wait on I/O (databases, HTTP calls) scale with N while CPU-bound code \
              still runs one thread at a time (the GIL). With N > 1 the pool also \
              multiplexes: FCGI_MPXS_CONNS is 1 and a web server may interleave up to \
              N requests on one connection. A worker counts as busy for pm while any \
              of its threads serves a request.",
    },
    Directive {
        name: "pm.start_servers",
        scope: Scope::Pool,
        kind: Kind::Int {
            min: 1,
            max: 100_000,
        },
        default: DefaultValue::Unset(
            "pm.min_spare_servers + (pm.max_spare_servers - pm.min_spare_servers) / 2",
        ),
        doc: "dynamic only: workers started at start-up. It must lie between \
              pm.min_spare_servers and pm.max_spare_servers.",
    },
    Directive {
        name: "pm.min_spare_servers",
        scope: Scope::Pool,
        kind: Kind::Int {
            min: 1,
            max: 100_000,
        },
        default: DefaultValue::Unset("required for dynamic"),
        doc: "dynamic only: with fewer idle workers than this, workers are spawned, 1 in \
              the first second, then twice as many each further second (up to \
              pm.max_spawn_rate) while the pool stays short. At most pm.max_children \
              and pm.max_spare_servers.",
    },
    Directive {
        name: "pm.max_spare_servers",
        scope: Scope::Pool,
        kind: Kind::Int {
            min: 1,
            max: 100_000,
        },
        default: DefaultValue::Unset("required for dynamic"),
        doc: "dynamic only: with more idle workers than this, the worker idle longest is \
              retired, one per second (SIGQUIT, then SIGKILL after \
              process_control_timeout). At least pm.min_spare_servers and at most \
              pm.max_children.",
    },
    Directive {
        name: "pm.max_spawn_rate",
        scope: Scope::Pool,
        kind: Kind::Int {
            min: 1,
            max: 100_000,
        },
        default: DefaultValue::Value("32"),
        doc: "dynamic and ondemand: the most workers spawned in one second.",
    },
    Directive {
        name: "pm.process_idle_timeout",
        scope: Scope::Pool,
        kind: Kind::Duration,
        default: DefaultValue::Value("10s"),
        doc: "ondemand only: a worker idle for longer is retired (one per second). \
              Must be more than 0.",
    },
    Directive {
        name: "pm.max_requests",
        scope: Scope::Pool,
        kind: Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        default: DefaultValue::Value("0"),
        doc: "A worker that has served this many requests is replaced: its replacement \
              starts first, then it finishes its request and exits, so the pool never \
              has fewer workers. Limits the damage of slow memory leaks. 0 = never.",
    },
    Directive {
        name: "pm.max_requests_jitter",
        scope: Scope::Pool,
        kind: Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        default: DefaultValue::Value("0"),
        doc: "A random number of requests between 0 and this, drawn for each worker, is \
              added to pm.max_requests, so that workers started together are not all \
              replaced together.",
    },
    Directive {
        name: "pm.max_memory",
        scope: Scope::Pool,
        kind: Kind::Size { min: 0 },
        default: DefaultValue::Value("0"),
        doc: "A worker whose resident memory, measured after each request, exceeds this \
              (such as 512M) is replaced the same way as after pm.max_requests. 0 = off.",
    },
    Directive {
        name: "pm.max_lifetime",
        scope: Scope::Pool,
        kind: Kind::Duration,
        default: DefaultValue::Value("0"),
        doc: "A worker older than this (such as 1h) is replaced the same way as after \
              pm.max_requests. 0 = off.",
    },
    Directive {
        name: "request_terminate_timeout",
        scope: Scope::Pool,
        kind: Kind::Duration,
        default: DefaultValue::Value("0"),
        doc: "A request running longer (such as 30s) is stopped: the worker answers 504 \
              when it still can and logs the Python stack; a worker that cannot stop it \
              (stuck in C code) is killed 5 seconds later and replaced. 0 = off.",
    },
    Directive {
        name: "request_slowlog_timeout",
        scope: Scope::Pool,
        kind: Kind::Duration,
        default: DefaultValue::Value("0"),
        doc: "A request running longer has its Python stack, with pool, pid, method and \
              URI, written to slowlog, without stopping it. Requires slowlog; must not be \
              more than request_terminate_timeout when both are set. 0 = off.",
    },
    Directive {
        name: "slowlog",
        scope: Scope::Pool,
        kind: Kind::Path,
        default: DefaultValue::Unset("none"),
        doc: "The slow-request log file, opened in append mode by the manager and \
              reopened on SIGUSR1.",
    },
    Directive {
        name: "process.max",
        scope: Scope::Pool,
        kind: Kind::Int {
            min: 0,
            max: 100_000,
        },
        default: DefaultValue::Value("0"),
        doc: "The most processes of this pool at once, including replacements that \
              overlap the workers they replace. 0 = pm.max_children twice over. It must \
              be at least pm.max_children.",
    },
    Directive {
        name: "app",
        scope: Scope::Pool,
        kind: Kind::App,
        default: DefaultValue::Required,
        doc: "The WSGI application: a module to import and the callable in it, such as \
              myproject.wsgi:application (the callable may be a dotted attribute path). \
              pyfpm -tt imports it to check.",
    },
    Directive {
        name: "preload",
        scope: Scope::Pool,
        kind: Kind::Bool,
        default: DefaultValue::Value("false"),
        doc: "Import the app once, in a per-pool zygote process, and fork every worker \
              from it, as gunicorn --preload and uWSGI (without lazy-apps) do. Workers \
              then start in milliseconds and share the app's code and data pages \
              copy-on-write (gc.freeze() runs before the first fork), so each costs \
              less memory; Python's fork hooks run in every worker (random is reseeded). \
              A reload starts a new zygote, so changed code is picked up. The app must \
              not start threads or open connections at import time: open them lazily, \
              in the worker. The zygote is not counted in pm.max_children.",
    },
    Directive {
        name: "python",
        scope: Scope::Pool,
        kind: Kind::Interpreter,
        default: DefaultValue::Value("python3"),
        doc: "The interpreter the workers run: a command name looked up on PATH, or a \
              path. It must be CPython 3.9 or newer and not a free-threaded build.",
    },
    Directive {
        name: "virtualenv",
        scope: Scope::Pool,
        kind: Kind::Path,
        default: DefaultValue::Unset("none"),
        doc: "A virtual environment to run the workers in: its bin/python is the \
              interpreter, its bin/ comes first on PATH and VIRTUAL_ENV is set. Setting \
              python as well is an error unless it names an interpreter in that bin/.",
    },
    Directive {
        name: "python_path",
        scope: Scope::Pool,
        kind: Kind::PathList,
        default: DefaultValue::Unset("none"),
        doc: "Directories put first on sys.path before the app is imported (the \
              directory holding your project, typically). Each must exist.",
    },
    Directive {
        name: "mount",
        scope: Scope::Pool,
        kind: Kind::Mount,
        default: DefaultValue::Value("/"),
        doc: "URL prefix the app is served under, such as /app. Requests below it get \
              SCRIPT_NAME set to the prefix and PATH_INFO to the rest; with the default \
              the app sees SCRIPT_NAME empty. A trailing slash is ignored.",
    },
    Directive {
        name: "chdir",
        scope: Scope::Pool,
        kind: Kind::Path,
        default: DefaultValue::Unset("the directory pyfpm was started in"),
        doc: "Working directory of the workers. It must exist.",
    },
    Directive {
        name: "clear_env",
        scope: Scope::Pool,
        kind: Kind::Bool,
        default: DefaultValue::Value("true"),
        doc: "Start the workers with an empty environment plus env, as PHP-FPM does, so \
              the manager's variables do not leak into apps. Set it to false to pass the \
              manager's environment through.",
    },
    Directive {
        name: "env",
        scope: Scope::Pool,
        kind: Kind::EnvMap,
        default: DefaultValue::Unset("none"),
        doc: "Environment variables for the workers, such as DJANGO_SETTINGS_MODULE. \
              Values are taken as text (yes stays yes); use ${VAR} to copy one from \
              pyfpm's environment.",
    },
    Directive {
        name: "request_params_max",
        scope: Scope::Pool,
        kind: Kind::Size { min: 1024 },
        default: DefaultValue::Value("1M"),
        doc: "Largest total size of a request's FastCGI parameters (the CGI variables \
              and HTTP headers) a worker accepts; a larger request is refused. At least \
              1K.",
    },
    Directive {
        name: "request_body_max",
        scope: Scope::Pool,
        kind: Kind::Size { min: 0 },
        default: DefaultValue::Value("0"),
        doc: "Largest request body a worker accepts; 0 means no limit. A request whose \
              CONTENT_LENGTH is larger is answered 413 Content Too Large before the app \
              runs; a body without CONTENT_LENGTH that grows past the limit makes \
              wsgi.input raise an error (and the answer is a 413 if the app had not \
              started its response).",
    },
    Directive {
        name: "request_read_timeout",
        scope: Scope::Pool,
        kind: Kind::Duration,
        default: DefaultValue::Value("30s"),
        doc: "How long a worker waits for the next bytes of a request that is not \
              complete yet (its parameters, or a body the app is reading) before it \
              closes the connection with a warning, so a client that sends too slowly \
              cannot hold a worker. 0 waits forever.",
    },
    Directive {
        name: "roles",
        scope: Scope::Pool,
        kind: Kind::ChoiceList(ROLES),
        default: DefaultValue::Value("responder, authorizer, filter"),
        doc: "FastCGI roles the pool serves. A request for another role is refused with \
              FCGI_UNKNOWN_ROLE, as one for a role that does not exist is.",
    },
];

/// The words of the `roles` directive.
pub const ROLES: &[&str] = &["responder", "authorizer", "filter"];

/// The directive called `name` in `scope`.
pub fn lookup(scope: Scope, name: &str) -> Option<&'static Directive> {
    DIRECTIVES
        .iter()
        .find(|d| d.scope == scope && d.name == name)
}

/// The directive `name` in any scope (for "that belongs in the other place" hints).
pub fn lookup_any(name: &str) -> Option<&'static Directive> {
    DIRECTIVES.iter().find(|d| d.name == name)
}

/// The directive of `scope` closest to a misspelt `name`, when one is close enough to
/// be a likely typo.
pub fn suggest(scope: Scope, name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase().replace('-', "_");
    DIRECTIVES
        .iter()
        .filter(|d| d.scope == scope)
        .map(|d| (d.name, strsim::damerau_levenshtein(&lower, d.name)))
        .filter(|&(candidate, dist)| dist <= (candidate.len() / 4).max(1))
        .min_by_key(|&(_, dist)| dist)
        .map(|(candidate, _)| candidate)
}

/// The man page text (roff) listing every directive, embedded in `man/pyfpm.yaml.5`
/// between the `GENERATED DIRECTIVES` markers.
pub fn man_section() -> String {
    let mut out = String::new();
    for (scope, title) in [
        (Scope::Global, "GLOBAL DIRECTIVES"),
        (Scope::Pool, "POOL DIRECTIVES"),
    ] {
        out.push_str(&format!(".SH {title}\n"));
        for d in DIRECTIVES.iter().filter(|d| d.scope == scope) {
            let default = match d.default {
                DefaultValue::Required => "required".to_owned(),
                DefaultValue::Unset(text) => format!("default: {text}"),
                DefaultValue::Value(v) => format!("default: {v}"),
            };
            out.push_str(".TP\n");
            out.push_str(&format!(
                ".BR {} \" ({}; {})\"\n",
                roff(d.name),
                roff(&d.kind.syntax()),
                roff(&default)
            ));
            out.push_str(&roff(d.doc));
            out.push('\n');
        }
    }
    out
}

/// Escape text for roff: backslashes, and a leading `.` or `'` that would be read as a
/// request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('"', "\\(dq");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn each_directive_is_declared_once() {
        for (i, d) in DIRECTIVES.iter().enumerate() {
            assert!(
                DIRECTIVES[i + 1..]
                    .iter()
                    .all(|o| o.name != d.name || o.scope != d.scope),
                "{} declared twice",
                d.name
            );
            assert!(!d.doc.is_empty(), "{} has no doc", d.name);
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest(Scope::Pool, "pm.max_chidren"),
            Some("pm.max_children")
        );
        assert_eq!(
            suggest(Scope::Pool, "pm.maxchildren"),
            Some("pm.max_children")
        );
        assert_eq!(suggest(Scope::Pool, "Listen"), Some("listen"));
        assert_eq!(suggest(Scope::Pool, "clear-env"), Some("clear_env"));
        assert_eq!(suggest(Scope::Global, "error-log"), Some("error_log"));
        assert_eq!(suggest(Scope::Pool, "lisen"), Some("listen"));
        assert_eq!(suggest(Scope::Pool, "frobnicate"), None);
        assert_eq!(
            suggest(Scope::Pool, "pm.start_server"),
            Some("pm.start_servers")
        );
        assert_eq!(suggest(Scope::Pool, "pm.status_path"), None);
    }

    /// `man/pyfpm.yaml.5` must embed [`man_section`]'s current output. Run with
    /// `PYFPM_BLESS=1` to rewrite the generated part of the page.
    #[test]
    fn man_page_lists_every_directive() {
        const BEGIN: &str = ".\\\" BEGIN GENERATED DIRECTIVES\n";
        const END: &str = ".\\\" END GENERATED DIRECTIVES\n";
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../man/pyfpm.yaml.5");
        let page = std::fs::read_to_string(&path).expect("man/pyfpm.yaml.5 is readable");
        let start = page.find(BEGIN).expect("BEGIN marker in the man page") + BEGIN.len();
        let end = page.find(END).expect("END marker in the man page");
        let expected = man_section();
        if page[start..end] != expected {
            if std::env::var_os("PYFPM_BLESS").is_some_and(|v| v == "1") {
                let new = format!("{}{expected}{}", &page[..start], &page[end..]);
                std::fs::write(&path, new).expect("man page is writable");
                return;
            }
            panic!(
                "man/pyfpm.yaml.5 is out of date with crates/config/src/directives.rs; \
                 regenerate it with: PYFPM_BLESS=1 cargo test -p pyfpm-config man_page"
            );
        }
    }
}
