//! Loading whole configurations from temporary directories: good ones, and each class
//! of mistake, asserting the exact `file:line:column: message` lines.

use pyfpm_config::{CheckLevel, Config, ConfigErrors, ListenAddr, LogLevel, PmMode, load_with_env};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

/// A temporary config tree with a fake `python3` on its own PATH.
struct Tree {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

/// What a CPython 3.12 says to the probe.
const GOOD_PROBE: &str = r#"{"version": [3, 12, 1], "implementation": "cpython", "gil_disabled": false, "executable": "/x"}"#;

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree {
            env: HashMap::new(),
            dir,
        };
        t.env
            .insert("PATH".into(), t.path("bin").to_string_lossy().into_owned());
        t.fake_python("bin/python3", GOOD_PROBE);
        t
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// An executable that answers the interpreter probe with `json` and counts its runs
    /// in `<path>.runs`.
    fn fake_python(&self, rel: &str, json: &str) -> PathBuf {
        let p = self.path(rel);
        let script = format!(
            "#!/bin/sh\necho run >> '{}.runs'\ncat <<'JSON'\n{json}\nJSON\n",
            p.display()
        );
        self.write(rel, &script);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn load_level(&self, main: &str, level: CheckLevel) -> Result<Config, ConfigErrors> {
        let env = self.env.clone();
        load_with_env(&self.path(main), level, &move |name| env.get(name).cloned())
    }

    fn load(&self, main: &str) -> Result<Config, ConfigErrors> {
        self.load_level(main, CheckLevel::Interpreters)
    }

    /// The error lines, with the temporary directory written as `T`.
    fn errors(&self, main: &str) -> Vec<String> {
        match self.load(main) {
            Ok(c) => panic!("expected errors, loaded {} pools", c.pools.len()),
            Err(e) => self.lines(&e),
        }
    }

    fn lines(&self, e: &ConfigErrors) -> Vec<String> {
        let root = self.dir.path().to_string_lossy().into_owned();
        e.0.iter()
            .map(|d| d.to_string().replace(&root, "T"))
            .collect()
    }

    /// A main file with the default include and one pool file.
    fn pool_file(&self, text: &str) {
        self.write("pyfpm.yaml", "daemonize: false\n");
        self.write("pools.d/www.yaml", text);
    }
}

const MINIMAL: &str =
    "www:\n  listen: 127.0.0.1:9000\n  app: app:application\n  pm.max_children: 2\n";

#[test]
fn good_config_with_every_directive() {
    let mut t = Tree::new();
    t.env.insert("WORKERS".into(), "3".into());
    t.env.insert("SECRET".into(), "s3cret".into());
    std::fs::create_dir_all(t.path("venv/bin")).unwrap();
    t.fake_python("venv/bin/python", GOOD_PROBE);
    std::fs::create_dir_all(t.path("app/src")).unwrap();
    t.write(
        "etc/pyfpm.yaml",
        "pid: run/pyfpm.pid\n\
         error_log: /var/log/pyfpm.log\n\
         log_level: WARN\n\
         daemonize: off\n\
         process_control_timeout: 1m30s\n\
         worker_module: lib/w.so\n\
         include: [pools.d/*.yaml, more/*.yaml]\n\
         pools:\n  inline:\n    listen: 9001\n    app: a:b\n    pm.max_children: 1\n",
    );
    t.write(
        "etc/pools.d/b.yaml",
        "b:\n  listen: [unix:/run/b.sock, '[::1]:9002', b.sock]\n  app: pkg.wsgi:make.app\n  \
         pm.max_children: ${WORKERS}\n  virtualenv: ../../venv\n",
    );
    t.write(
        "etc/pools.d/a.yaml",
        "# two pools in one file\n\
         a:\n\
         \x20 listen: /run/a.sock\n\
         \x20 listen.owner: root\n\
         \x20 listen.group: '0'\n\
         \x20 listen.mode: 0640\n\
         \x20 listen.backlog: 128\n\
         \x20 user: '0'\n\
         \x20 group: root\n\
         \x20 pm: static\n\
         \x20 pm.max_children: 4\n\
         \x20 app: app:application\n\
         \x20 python: python3\n\
         \x20 python_path: [../../app, ../../app/src]\n\
         \x20 mount: /api/v1/\n\
         \x20 chdir: ../../app\n\
         \x20 clear_env: no\n\
         \x20 env: {DEBUG: yes, MODE: 0660, KEY: '${SECRET}', EMPTY: '', PRICE: '$$5'}\n\
         \x20 request_params_max: 64K\n\
         a2:\n  listen: '[::1]:9003'\n  app: app:application\n  pm.max_children: 1\n",
    );
    t.write("etc/more/c.yaml", "# no pools here\n");
    let c = t.load("etc/pyfpm.yaml").unwrap();
    let root = t.dir.path();
    assert_eq!(c.global.pid, Some(root.join("etc/run/pyfpm.pid")));
    assert_eq!(
        c.global.error_log,
        Some(PathBuf::from("/var/log/pyfpm.log"))
    );
    assert_eq!(c.global.log_level, LogLevel::Warning);
    assert!(!c.global.daemonize);
    assert_eq!(c.global.process_control_timeout, Duration::from_secs(90));
    assert_eq!(c.global.worker_module, Some(root.join("etc/lib/w.so")));
    let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["inline", "a", "a2", "b"],
        "inline first, then files by name"
    );
    assert_eq!(
        c.files,
        [
            t.path("etc/pyfpm.yaml"),
            t.path("etc/pools.d/a.yaml"),
            t.path("etc/pools.d/b.yaml"),
            t.path("etc/more/c.yaml")
        ]
    );
    assert_eq!(
        c.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [format!(
            "{}: defines no pools (the file is empty)",
            t.path("etc/more/c.yaml").display()
        )]
    );

    let a = &c.pools[1];
    assert_eq!(
        a.location.to_string(),
        format!("{}:2:1", t.path("etc/pools.d/a.yaml").display())
    );
    assert_eq!(a.listen, [ListenAddr::Unix("/run/a.sock".into())]);
    assert_eq!(a.listen_owner.as_deref(), Some("root"));
    assert_eq!(a.listen_group.as_deref(), Some("0"));
    assert_eq!(a.listen_mode, 0o640);
    assert_eq!(a.listen_backlog, 128);
    assert_eq!(a.user.as_deref(), Some("0"));
    assert_eq!(a.group.as_deref(), Some("root"));
    assert_eq!(a.pm, PmMode::Static);
    assert_eq!(a.max_children, 4);
    assert_eq!(a.app, "app:application");
    assert_eq!(a.python, t.path("bin/python3"));
    assert_eq!(a.virtualenv, None);
    assert_eq!(a.python_path, [root.join("app"), root.join("app/src")]);
    assert_eq!(a.mount, "/api/v1");
    assert_eq!(a.chdir, Some(root.join("app")));
    assert!(!a.clear_env);
    let env: Vec<(&str, &str)> = a
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("DEBUG", "yes"),
            ("EMPTY", ""),
            ("KEY", "s3cret"),
            ("MODE", "0660"),
            ("PRICE", "$5")
        ]
    );
    assert_eq!(a.request_params_max, 64 * 1024);

    let b = &c.pools[3];
    assert_eq!(
        b.listen,
        [
            ListenAddr::Unix("/run/b.sock".into()),
            ListenAddr::Tcp("[::1]:9002".parse().unwrap()),
            ListenAddr::Unix(root.join("etc/pools.d/b.sock")),
        ]
    );
    assert_eq!(b.max_children, 3);
    assert_eq!(b.app, "pkg.wsgi:make.app");
    assert_eq!(b.virtualenv, Some(root.join("venv")));
    assert_eq!(b.python, root.join("venv/bin/python"));
    assert_eq!(
        c.pools[0].listen,
        [ListenAddr::Tcp("[::]:9001".parse().unwrap())]
    );
}

#[test]
fn defaults_come_from_the_directive_table() {
    let t = Tree::new();
    t.pool_file(MINIMAL);
    let c = t.load("pyfpm.yaml").unwrap();
    assert!(c.warnings.is_empty());
    assert_eq!(c.global.pid, None);
    assert_eq!(c.global.error_log, None);
    assert_eq!(c.global.log_level, LogLevel::Notice);
    assert!(!c.global.daemonize, "set false in the file");
    assert_eq!(c.global.process_control_timeout, Duration::from_secs(30));
    let p = &c.pools[0];
    assert_eq!(p.listen_mode, 0o660);
    assert_eq!(p.listen_backlog, 511);
    assert_eq!(
        (p.listen_owner.clone(), p.user.clone(), p.chdir.clone()),
        (None, None, None)
    );
    assert_eq!(p.pm, PmMode::Static);
    assert_eq!(p.mount, "");
    assert!(p.clear_env);
    assert!(p.env.is_empty());
    assert!(p.python_path.is_empty());
    assert_eq!(p.request_params_max, 1 << 20);
    assert_eq!(p.limits, pyfpm_config::PoolLimits::default());
    assert_eq!(c.global.emergency_restart_threshold, 0);
    assert_eq!(c.global.emergency_restart_interval, Duration::ZERO);
    assert_eq!(c.global.process_max, 0);
    assert_eq!(c.global.systemd_interval, Duration::from_secs(10));

    t.write("pyfpm.yaml", "");
    assert!(
        t.load("pyfpm.yaml").unwrap().global.daemonize,
        "daemonize defaults to true"
    );
    t.write("pyfpm.yaml", "pid:\nlog_level: ~\n");
    let c = t.load("pyfpm.yaml").unwrap();
    assert_eq!(
        (c.global.pid, c.global.log_level),
        (None, LogLevel::Notice),
        "empty = default"
    );
}

#[test]
fn yaml_syntax_errors_are_located_and_other_files_still_checked() {
    let t = Tree::new();
    t.write("pyfpm.yaml", "");
    t.write("pools.d/a.yaml", "a:\n  listen: [9000\n  app: x:y\n");
    t.write(
        "pools.d/b.yaml",
        "b:\n  listen: 9001\n  app: x:y\n  pm.max_children: 1\n  lisen: 1\n",
    );
    t.write("pools.d/c.yaml", "c:\n  listen: 9002\n   app: x:y\n");
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/a.yaml:3:6: YAML syntax error: illegal placement of ':' indicator",
            "T/pools.d/b.yaml:5:3: unknown directive 'lisen' in pool 'b'; did you mean 'listen'?",
            "T/pools.d/c.yaml:3:7: YAML syntax error: mapping values are not allowed in this context",
        ]
    );
    t.write("pyfpm.yaml", "a: b: c\n");
    assert_eq!(
        t.errors("pyfpm.yaml"),
        ["T/pyfpm.yaml:1:5: YAML syntax error: mapping values are not allowed in this context"]
    );
    t.write("pyfpm.yaml", "- a\n");
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pyfpm.yaml:1:1: the main file must be a mapping of directives (pid: ..., include: ...), not a list"
        ]
    );
}

#[test]
fn unknown_keys_suggest_when_close() {
    let t = Tree::new();
    t.write(
        "pyfpm.yaml",
        "error-log: /x\nfrobnicate: 1\nlisten: 9000\nlog_level: debug\nlog_level: notice\n",
    );
    t.write(
        "pools.d/www.yaml",
        "www:\n  listen: 9000\n  app: x:y\n  pm.max_chidren: 2\n  pm.max_children: 2\n  \
         pm.status_path: /s\n  log_level: debug\n  env[FOO]: bar\n  Listen: 1\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pyfpm.yaml:1:1: unknown global directive 'error-log'; did you mean 'error_log'?",
            "T/pyfpm.yaml:2:1: unknown global directive 'frobnicate'",
            "T/pyfpm.yaml:3:1: 'listen' is a pool directive; put it in a pool (under 'pools:' or in a pool file)",
            "T/pyfpm.yaml:5:1: 'log_level' is set twice; the first is at T/pyfpm.yaml:4:1",
            "T/pools.d/www.yaml:4:3: unknown directive 'pm.max_chidren' in pool 'www'; did you mean 'pm.max_children'?",
            "T/pools.d/www.yaml:6:3: unknown directive 'pm.status_path' in pool 'www'",
            "T/pools.d/www.yaml:7:3: 'log_level' is a global directive; set it in the main file, not in pool 'www'",
            "T/pools.d/www.yaml:8:3: unknown directive 'env[FOO]' in pool 'www'; write env as a mapping: 'env: {FOO: value}'",
            "T/pools.d/www.yaml:9:3: unknown directive 'Listen' in pool 'www'; did you mean 'listen'?",
        ]
    );
}

#[test]
fn wrong_types() {
    let t = Tree::new();
    t.write("pyfpm.yaml", "daemonize: [true]\npools: [a]\n");
    t.write(
        "pools.d/www.yaml",
        "www:\n  listen: {a: 1}\n  app: x:y\n  pm.max_children: [1]\n  env: [A]\n  python_path: [[a]]\n\
         listen: 9000\nx: [1]\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pyfpm.yaml:1:12: 'daemonize' must be a boolean, not a list",
            "T/pyfpm.yaml:2:8: 'pools' must be a mapping of pool names to their directives, not a list",
            "T/pools.d/www.yaml:2:11: 'listen' must be an address or list of addresses, not a mapping",
            "T/pools.d/www.yaml:4:20: 'pm.max_children' must be an integer, not a list",
            "T/pools.d/www.yaml:5:8: 'env' must be a mapping of NAME: value, not a list",
            "T/pools.d/www.yaml:6:17: 'python_path' must be a directory or list of directories, not a list",
            "T/pools.d/www.yaml:7:9: 'listen' is a directive, but here the keys are pool names; indent it under a pool name such as 'www:'",
            "T/pools.d/www.yaml:8:4: pool 'x' must be a mapping of directives, not a list",
        ]
    );
}

/// `roles` takes known role names only, and at least one.
#[test]
fn bad_roles() {
    let t = Tree::new();
    t.write("pyfpm.yaml", "daemonize: false\n");
    t.write(
        "pools.d/www.yaml",
        "www:\n  listen: 9000\n  app: a:b\n  pm.max_children: 1\n  roles: [responder, proxy]\n\
         w2:\n  listen: 9001\n  app: a:b\n  pm.max_children: 1\n  roles: []\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/www.yaml:5:22: 'roles': unknown role 'proxy' (use responder, authorizer, filter)",
            "T/pools.d/www.yaml:10:10: 'roles': at least one role is required",
        ]
    );
}

#[test]
fn bad_values() {
    let t = Tree::new();
    t.write(
        "pyfpm.yaml",
        "daemonize: maybe\nlog_level: loud\nprocess_control_timeout: 10 parsecs\n",
    );
    t.write(
        "pools.d/www.yaml",
        "www:\n  listen: 9000\n  app: my-app\n  pm: dynamics\n  pm.max_children: 0\n  \
         listen.mode: 0999\n  listen.backlog: lots\n  clear_env: nope\n  request_params_max: 1X\n  \
         mount: app\n  python_path: missing\n  chdir: /nonexistent/dir\n  user: no-such-user-x\n  \
         listen.group: no-such-group-x\n  env: {1A: x, B: ~, C: [1], D: ok}\n\
         ww w:\n  listen: 9001\n\
         w2:\n  listen: 9002\n  app: a:b\n  pm.max_children: 1\n  pm: ondemand\n  \
         listen.mode: 01777\n  request_params_max: 512\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pyfpm.yaml:1:12: 'daemonize': invalid boolean 'maybe' (use true/false, yes/no, on/off or 1/0)",
            "T/pyfpm.yaml:2:12: 'log_level': unknown level 'loud' (use alert, error, warning, notice or debug)",
            "T/pyfpm.yaml:3:26: 'process_control_timeout': invalid duration '10 parsecs' (use a whole number with ms, s, m, h or d, e.g. 30s)",
            "T/pools.d/www.yaml:3:8: 'app': 'my-app' is not module:callable (e.g. myproject.wsgi:application)",
            "T/pools.d/www.yaml:4:7: 'pm': invalid process manager 'dynamics' (static, dynamic or ondemand)",
            "T/pools.d/www.yaml:5:20: 'pm.max_children': must be at least 1, got 0",
            "T/pools.d/www.yaml:6:16: 'listen.mode': invalid mode '0999' (use octal digits, e.g. 0660)",
            "T/pools.d/www.yaml:7:19: 'listen.backlog': invalid integer 'lots'",
            "T/pools.d/www.yaml:8:14: 'clear_env': invalid boolean 'nope' (use true/false, yes/no, on/off or 1/0)",
            "T/pools.d/www.yaml:9:23: 'request_params_max': invalid size '1X' (use a whole number with an optional K, M or G, e.g. 1M)",
            "T/pools.d/www.yaml:10:10: 'mount': 'app' must start with '/' (e.g. /app), or be empty for the root",
            "T/pools.d/www.yaml:11:16: 'python_path': directory T/pools.d/missing does not exist",
            "T/pools.d/www.yaml:12:10: 'chdir': directory /nonexistent/dir does not exist",
            "T/pools.d/www.yaml:13:9: 'user': no such user 'no-such-user-x'",
            "T/pools.d/www.yaml:14:17: 'listen.group': no such group 'no-such-group-x'",
            "T/pools.d/www.yaml:15:9: 'env': invalid variable name '1A' (letters, digits and '_', not starting with a digit)",
            "T/pools.d/www.yaml:15:16: 'env': B has no value (write B: '' for an empty one)",
            "T/pools.d/www.yaml:15:25: 'env': the value of C must be text, not a list",
            "T/pools.d/www.yaml:16:1: invalid pool name 'ww w' (use letters, digits, '_', '.' and '-')",
            "T/pools.d/www.yaml:23:16: 'listen.mode': mode '01777' is larger than 0777 (setuid, setgid and sticky bits do not apply to sockets)",
            "T/pools.d/www.yaml:24:23: 'request_params_max': 512 is below the minimum of 1K",
        ]
    );
}

#[test]
fn bad_listen_addresses() {
    let t = Tree::new();
    t.pool_file(
        "www:\n  app: a:b\n  pm.max_children: 1\n  listen:\n    - localhost:9000\n    - 127.0.0.1:69002\n    \
         - '[::1]:0'\n    - 10.0.0.1:http\n    - ''\n    - ::1:9000\n    - unix:\n    - 'unix:'\n\
         w2:\n  app: a:b\n  pm.max_children: 1\n  listen: []\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/www.yaml:5:7: 'listen': 'localhost' is not an IP address; host names are not accepted, write an IP address such as 127.0.0.1:9000",
            "T/pools.d/www.yaml:6:7: 'listen': port 69002 in '127.0.0.1:69002' is out of range (1 to 65535)",
            "T/pools.d/www.yaml:7:7: 'listen': port 0 in '[::1]:0' is out of range (1 to 65535)",
            "T/pools.d/www.yaml:8:7: 'listen': invalid port 'http' in '10.0.0.1:http' (a number from 1 to 65535)",
            "T/pools.d/www.yaml:9:7: 'listen': empty listen address",
            "T/pools.d/www.yaml:10:7: 'listen': invalid listen address '::1:9000' (put an IPv6 address in brackets, e.g. [::1]:9000)",
            "T/pools.d/www.yaml:11:7: 'listen' must be an address or list of addresses, not a mapping",
            "T/pools.d/www.yaml:12:7: 'listen': 'unix:' needs a socket path, e.g. unix:/run/pyfpm/www.sock",
            "T/pools.d/www.yaml:16:11: 'listen': the list is empty; give at least one address",
        ]
    );
}

#[test]
fn duplicate_listen_addresses_across_and_within_pools() {
    let t = Tree::new();
    t.write("pyfpm.yaml", "");
    t.write(
        "pools.d/a.yaml",
        "a:\n  listen: [/run/x.sock, 127.0.0.1:9000, 9100]\n  app: a:b\n  pm.max_children: 1\n",
    );
    t.write(
        "pools.d/b.yaml",
        "b:\n  listen:\n    - unix:/run/./x.sock\n    - 127.0.0.1:9000\n    - 127.0.0.2:9100\n    \
         - 0.0.0.0:9200\n    - 127.0.0.1:9200\n    - '[::1]:9300'\n    - 127.0.0.1:9300\n    \
         - '[::1]:9300'\n  app: a:b\n  pm.max_children: 1\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/b.yaml:3:7: 'listen': unix:/run/x.sock is already used by pool 'a' (T/pools.d/a.yaml:2:12)",
            "T/pools.d/b.yaml:4:7: 'listen': 127.0.0.1:9000 is already used by pool 'a' (T/pools.d/a.yaml:2:25)",
            "T/pools.d/b.yaml:5:7: 'listen': 127.0.0.2:9100 overlaps [::]:9100 of pool 'a' (T/pools.d/a.yaml:2:41); a wildcard address takes its port on every address",
            "T/pools.d/b.yaml:7:7: 'listen': 127.0.0.1:9200 overlaps 0.0.0.0:9200 of pool 'b' (T/pools.d/b.yaml:6:7); a wildcard address takes its port on every address",
            "T/pools.d/b.yaml:10:7: 'listen': [::1]:9300 is already used by pool 'b' (T/pools.d/b.yaml:8:7)",
        ]
    );
}

#[test]
fn duplicate_pool_names_and_missing_directives() {
    let t = Tree::new();
    t.write(
        "pyfpm.yaml",
        "pools:\n  www:\n    listen: 9000\n    app: a:b\n    pm.max_children: 1\n",
    );
    t.write(
        "pools.d/a.yaml",
        "www:\n  listen: 9001\n  app: a:b\n  pm.max_children: 1\n\
         empty:\n\
         bare:\n  clear_env: true\n\
         blank:\n  listen:\n  app: ''\n  pm.max_children: 1\n",
    );
    t.write("pools.d/b.yaml", "www:\n  listen: 9002\n");
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/a.yaml:1:1: pool 'www' is already defined at T/pyfpm.yaml:2:3",
            "T/pools.d/a.yaml:5:1: pool 'empty' has no directives",
            "T/pools.d/a.yaml:6:1: pool 'bare' has no 'listen' (address or list of addresses required)",
            "T/pools.d/a.yaml:6:1: pool 'bare' has no 'pm.max_children' (integer required)",
            "T/pools.d/a.yaml:6:1: pool 'bare' has no 'app' (module:callable required)",
            "T/pools.d/a.yaml:9:3: 'listen' has no value (address or list of addresses required)",
            "T/pools.d/a.yaml:10:8: 'app': '' is not module:callable (e.g. myproject.wsgi:application)",
            "T/pools.d/b.yaml:1:1: pool 'www' is already defined at T/pyfpm.yaml:2:3",
        ]
    );
}

#[test]
fn no_pools_is_an_error_and_include_problems_are_reported() {
    let t = Tree::new();
    t.write("pyfpm.yaml", "daemonize: false\n");
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pyfpm.yaml: no pools are defined: add a pool file matching 'include' (default pools.d/*.yaml) or a 'pools:' mapping"
        ]
    );
    t.write(
        "pyfpm.yaml",
        "include:\n  - nodir/*.yaml\n  - empty/*.yaml\n  - '[bad'\n",
    );
    std::fs::create_dir_all(t.path("empty")).unwrap();
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pyfpm.yaml:2:5: 'include': directory T/nodir does not exist (pattern 'nodir/*.yaml')",
            "T/pyfpm.yaml:4:5: 'include': invalid glob '[bad': Pattern syntax error near position 0: invalid range pattern",
        ]
    );
    // A glob matching nothing is only a warning.
    t.write("pyfpm.yaml", "include: [empty/*.yaml, pools.d/*.yaml]\n");
    t.write("pools.d/www.yaml", MINIMAL);
    t.write("pools.d/sub.yaml/ignored", "directories are skipped");
    let c = t.load("pyfpm.yaml").unwrap();
    let root = t.dir.path().to_string_lossy().into_owned();
    let warnings: Vec<String> = c
        .warnings
        .iter()
        .map(|w| w.to_string().replace(&root, "T"))
        .collect();
    assert_eq!(
        warnings,
        ["T/pyfpm.yaml:1:11: 'include': 'empty/*.yaml' matches no file"]
    );
    assert_eq!(c.pools.len(), 1);
}

#[test]
fn interpolation_errors_are_reported_where_the_value_is() {
    let t = Tree::new();
    t.write(
        "pyfpm.yaml",
        "pid: ${PIDDIR}/pyfpm.pid\nerror_log: '${LOGDIR:-/var/log}/x'\n",
    );
    t.write(
        "pools.d/www.yaml",
        "www:\n  listen: ['${SOCKDIR}/www.sock', 9000]\n  app: a:b\n  pm.max_children: ${N:-2}\n  \
         env: {A: '${UNSET_A}', B: '${X'}\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pyfpm.yaml:1:6: 'pid': environment variable 'PIDDIR' is not set (give a default with '${PIDDIR:-value}')",
            "T/pools.d/www.yaml:2:12: 'listen': environment variable 'SOCKDIR' is not set (give a default with '${SOCKDIR:-value}')",
            "T/pools.d/www.yaml:5:12: 'env': environment variable 'UNSET_A' is not set (give a default with '${UNSET_A:-value}')",
            "T/pools.d/www.yaml:5:29: 'env': unterminated '${' in '${X' (write '$$' for a literal '$')",
        ]
    );
}

#[test]
fn missing_interpreters_and_virtualenvs() {
    let mut t = Tree::new();
    std::fs::create_dir_all(t.path("notavenv")).unwrap();
    std::fs::create_dir_all(t.path("venv/bin")).unwrap();
    t.fake_python("venv/bin/python", GOOD_PROBE);
    t.write("plain.txt", "not executable");
    t.pool_file(
        "a:\n  listen: 9001\n  app: a:b\n  pm.max_children: 1\n  python: /nonexistent/python3\n\
         b:\n  listen: 9002\n  app: a:b\n  pm.max_children: 1\n  python: python3.99\n\
         c:\n  listen: 9003\n  app: a:b\n  pm.max_children: 1\n  virtualenv: /nonexistent/venv\n\
         d:\n  listen: 9004\n  app: a:b\n  pm.max_children: 1\n  virtualenv: ../notavenv\n\
         e:\n  listen: 9005\n  app: a:b\n  pm.max_children: 1\n  python: ../plain.txt\n\
         f:\n  listen: 9006\n  app: a:b\n  pm.max_children: 1\n  virtualenv: ../venv\n  python: python3\n\
         g:\n  listen: 9007\n  app: a:b\n  pm.max_children: 1\n  virtualenv: ../venv\n  python: ../venv/bin/python\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/www.yaml:5:11: 'python': /nonexistent/python3 does not exist",
            "T/pools.d/www.yaml:10:11: 'python': 'python3.99' was not found on PATH (T/bin)",
            "T/pools.d/www.yaml:15:15: 'virtualenv': directory /nonexistent/venv does not exist",
            "T/pools.d/www.yaml:20:15: 'virtualenv': T/notavenv is not a virtualenv (T/notavenv/bin/python does not exist)",
            "T/pools.d/www.yaml:25:11: 'python': T/plain.txt is not an executable file",
            "T/pools.d/www.yaml:31:11: 'python': T/bin/python3 is not the virtualenv's interpreter (T/venv/bin/python); set only one of python and virtualenv",
        ]
    );
    // The default python3 is looked up on PATH too.
    t.env.insert("PATH".into(), "/nonexistent".into());
    t.pool_file(MINIMAL);
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/www.yaml:1:1: pool 'www': 'python3' was not found on PATH (/nonexistent); set 'python' or 'virtualenv'"
        ]
    );
}

#[test]
fn unsupported_interpreters_are_refused_and_each_is_run_once() {
    let t = Tree::new();
    t.fake_python(
        "old/python3.8",
        r#"{"version": [3, 8, 10], "implementation": "cpython", "gil_disabled": false, "executable": "/usr/bin/python3.8"}"#,
    );
    t.fake_python(
        "ft/python3.13t",
        r#"{"version": [3, 13, 0], "implementation": "cpython", "gil_disabled": true, "executable": "/usr/bin/python3.13t"}"#,
    );
    t.fake_python(
        "pypy/pypy3",
        r#"{"version": [3, 10, 14], "implementation": "pypy", "gil_disabled": false, "executable": "/usr/bin/pypy3"}"#,
    );
    t.fake_python("junk/python", "Python 2.7 says hello");
    t.pool_file(
        "a:\n  listen: 9001\n  app: a:b\n  pm.max_children: 1\n  python: ../old/python3.8\n\
         b:\n  listen: 9002\n  app: a:b\n  pm.max_children: 1\n  python: ../old/python3.8\n\
         c:\n  listen: 9003\n  app: a:b\n  pm.max_children: 1\n  python: ../ft/python3.13t\n\
         d:\n  listen: 9004\n  app: a:b\n  pm.max_children: 1\n  python: ../pypy/pypy3\n\
         e:\n  listen: 9005\n  app: a:b\n  pm.max_children: 1\n  python: ../junk/python\n\
         f:\n  listen: 9006\n  app: a:b\n  pm.max_children: 1\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/www.yaml:5:11: 'python': T/old/python3.8 is CPython 3.8.10; pyfpm needs CPython 3.9 or newer",
            "T/pools.d/www.yaml:10:11: 'python': T/old/python3.8 is CPython 3.8.10; pyfpm needs CPython 3.9 or newer",
            "T/pools.d/www.yaml:15:11: 'python': T/ft/python3.13t is a free-threaded build of CPython 3.13.0, which pyfpm does not support yet; use the regular build (python3.X rather than python3.Xt)",
            "T/pools.d/www.yaml:20:11: 'python': T/pypy/pypy3 is PyPy 3.10.14; pyfpm needs CPython 3.9 or newer",
            "T/pools.d/www.yaml:25:11: 'python': T/junk/python is not a working Python interpreter (unexpected answer: \"Python 2.7 says hello\")",
        ]
    );
    let runs = |p: &str| std::fs::read_to_string(t.path(p)).unwrap().lines().count();
    assert_eq!(
        runs("old/python3.8.runs"),
        1,
        "one run per distinct interpreter"
    );
    assert_eq!(runs("bin/python3.runs"), 1);
}

#[test]
fn a_failing_interpreter_is_reported() {
    let t = Tree::new();
    t.write(
        "bad/python",
        "#!/bin/sh\necho 'Fatal Python error: boom' >&2\nexit 1\n",
    );
    std::fs::set_permissions(t.path("bad/python"), std::fs::Permissions::from_mode(0o755)).unwrap();
    t.pool_file("a:\n  listen: 9001\n  app: a:b\n  pm.max_children: 1\n  python: ../bad/python\n");
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/www.yaml:5:11: 'python': T/bad/python is not a working Python interpreter (exit status: 1: Fatal Python error: boom)"
        ]
    );
}

/// The real interpreter the tests can import apps with.
fn real_python() -> PathBuf {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("the import tests need a CPython 3.9+ at /usr/bin/python3")
}

use std::path::Path;

#[test]
fn import_apps_reports_tracebacks() {
    let t = Tree::new();
    let py = real_python();
    t.write(
        "apps/good.py",
        "def application(environ, start_response):\n    return []\n",
    );
    t.write(
        "apps/broken.py",
        "import os\n\ndef helper():\n    raise RuntimeError('database is down')\n\nhelper()\n",
    );
    t.write("apps/notcallable.py", "application = 42\n");
    t.write("apps/envcheck.py", "import os\nassert os.environ['APP_MODE'] == 'prod', os.environ\nassert 'HOME' not in os.environ\napplication = len\n");
    let pool = |name: &str, port: u16, app: &str| {
        format!(
            "{name}:\n  listen: {port}\n  app: {app}\n  pm.max_children: 1\n  python: {}\n  \
             python_path: ../apps\n  env: {{APP_MODE: prod}}\n",
            py.display()
        )
    };
    t.pool_file(
        &[
            pool("good", 9001, "good:application"),
            pool("broken", 9002, "broken:application"),
            pool("nc", 9003, "notcallable:application"),
            pool("missing", 9004, "nosuchmodule:app"),
            pool("attr", 9005, "good:nope.deeper"),
            pool("envcheck", 9006, "envcheck:application"),
        ]
        .concat(),
    );
    assert!(t.load("pyfpm.yaml").is_ok(), "-t does not import apps");
    let errors = t
        .load_level("pyfpm.yaml", CheckLevel::ImportApps)
        .unwrap_err();
    let lines = t.lines(&errors);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(
        lines[0],
        "T/pools.d/www.yaml:10:8: 'app': cannot import 'broken:application' in pool 'broken': RuntimeError: database is down\n    \
         Traceback (most recent call last):\n    \
         \x20 File \"T/apps/broken.py\", line 6, in <module>\n    \
         \x20   helper()\n    \
         \x20 File \"T/apps/broken.py\", line 4, in helper\n    \
         \x20   raise RuntimeError('database is down')\n    \
         RuntimeError: database is down"
            .replace("\n    \\x20", "\n     ")
    );
    assert_eq!(
        lines[1],
        "T/pools.d/www.yaml:17:8: 'app': cannot import 'notcallable:application' in pool 'nc': it is a int, not a callable"
    );
    assert!(
        lines[2].starts_with("T/pools.d/www.yaml:24:8: 'app': cannot import 'nosuchmodule:app' in pool 'missing': ModuleNotFoundError: No module named 'nosuchmodule'\n    Traceback (most recent call last):\n"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("T/pools.d/www.yaml:31:8: 'app': cannot import 'good:nope.deeper' in pool 'attr': AttributeError: module 'good' has no attribute 'nope'"),
        "{}",
        lines[3]
    );
    let pycache: Vec<_> = std::fs::read_dir(t.path("apps"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n == "__pycache__")
        .collect();
    assert!(pycache.is_empty(), "the import check writes no bytecode");
}

#[test]
fn the_bundled_configuration_loads_and_its_app_imports() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let main = repo.join("examples/pyfpm.yaml");
    let env = |name: &str| match name {
        "PYFPM_RUNTIME_DIR" => Some("/tmp/pyfpm-test-runtime".to_owned()),
        _ => std::env::var(name).ok(),
    };
    let c = load_with_env(&main, CheckLevel::ImportApps, &env).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.0.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(!c.global.daemonize);
    assert_eq!(c.global.pid, None);
    assert_eq!(c.global.error_log, None);
    assert_eq!(c.pools.len(), 1);
    let www = &c.pools[0];
    assert_eq!(www.name, "www");
    assert_eq!(
        www.listen,
        [
            ListenAddr::Unix("/tmp/pyfpm-test-runtime/www.sock".into()),
            ListenAddr::Tcp("127.0.0.1:9000".parse().unwrap())
        ]
    );
    assert_eq!(www.max_children, 2);
    assert_eq!(www.app, "app:application");
    assert_eq!(
        www.python_path,
        [pyfpm_config::values::normalize(
            &std::path::absolute(repo.join("examples")).unwrap()
        )]
    );
    let default = load_with_env(&main, CheckLevel::Interpreters, &|n| {
        if n == "PYFPM_RUNTIME_DIR" {
            None
        } else {
            std::env::var(n).ok()
        }
    })
    .unwrap();
    assert_eq!(
        default.pools[0].listen[0],
        ListenAddr::Unix("/run/pyfpm/www.sock".into())
    );
    // contrib/pyfpm.yaml, the /etc template, parses (its default include is pools.d/).
    let contrib = load_with_env(
        &repo.join("contrib/pyfpm.yaml"),
        CheckLevel::Interpreters,
        &|n| std::env::var(n).ok(),
    );
    assert_eq!(
        contrib
            .unwrap_err()
            .0
            .iter()
            .map(|d| d.message.clone())
            .collect::<Vec<_>>(),
        [
            "no pools are defined: add a pool file matching 'include' (default pools.d/*.yaml) or a 'pools:' mapping"
        ]
    );
}

/// The bundled files document the directives: `contrib/pyfpm.yaml` shows every global
/// directive commented out with its default, and `pools.d/www.yaml` mentions every pool
/// directive.
#[test]
fn bundled_files_mention_every_directive() {
    use pyfpm_config::directives::{DIRECTIVES, DefaultValue, Scope};
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let contrib = std::fs::read_to_string(repo.join("contrib/pyfpm.yaml")).unwrap();
    let www = std::fs::read_to_string(repo.join("pools.d/www.yaml")).unwrap();
    for d in DIRECTIVES {
        match d.scope {
            Scope::Global => {
                let line = match d.default {
                    DefaultValue::Value(v) => format!("#{}: {v}", d.name),
                    _ => format!("#{}:", d.name),
                };
                assert!(
                    contrib.lines().any(|l| l.starts_with(&line)),
                    "contrib/pyfpm.yaml lacks a line starting with {line:?}"
                );
            }
            Scope::Pool => assert!(
                www.lines().any(|l| {
                    let l = l.trim_start().trim_start_matches("# ");
                    l.starts_with(&format!("{}:", d.name))
                }),
                "pools.d/www.yaml does not show {}",
                d.name
            ),
        }
    }
}

#[test]
fn the_main_file_is_not_read_twice_as_a_pool_file() {
    let t = Tree::new();
    t.write("pyfpm.yaml", "include: '*.yaml'\n");
    t.write("www.yaml", MINIMAL);
    let c = t.load("pyfpm.yaml").unwrap();
    assert_eq!(c.files, [t.path("pyfpm.yaml"), t.path("www.yaml")]);
}

#[test]
fn optional_settings_that_interpolate_to_nothing_are_unset() {
    let t = Tree::new();
    t.write("pyfpm.yaml", "pid: '${PIDFILE:-}'\nerror_log: '${LOG:-}'\n");
    t.write(
        "pools.d/www.yaml",
        "www:\n  listen: 9000\n  app: a:b\n  pm.max_children: 1\n  python: '${PY:-}'\n  \
         virtualenv: '${VENV:-}'\n  chdir: '${DIR:-}'\n  listen.owner: '${OWNER:-}'\n",
    );
    let c = t.load("pyfpm.yaml").unwrap();
    assert_eq!((c.global.pid, c.global.error_log), (None, None));
    let p = &c.pools[0];
    assert_eq!(p.python, t.path("bin/python3"));
    assert_eq!(
        (
            p.virtualenv.clone(),
            p.chdir.clone(),
            p.listen_owner.clone()
        ),
        (None, None, None)
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever a pool file holds, loading reports problems and never panics.
    #[test]
    fn arbitrary_pool_files_never_panic(
        text in "(www:\n)?(  (listen|app|pm|pm.max_children|env|mount|python_path|listen.mode|x): [a-z0-9:/\\[\\]{}'\"$.~ -]{0,12}\n){0,6}"
    ) {
        let t = Tree::new();
        t.pool_file(&text);
        let _ = t.load("pyfpm.yaml");
    }
}

#[test]
fn unreadable_files_are_reported() {
    let t = Tree::new();
    assert_eq!(
        t.errors("missing.yaml"),
        ["T/missing.yaml: cannot read the file: No such file or directory (os error 2)"]
    );
    std::fs::create_dir_all(t.path("pools.d")).unwrap();
    std::fs::write(t.path("pools.d/latin1.yaml"), b"www:\n  app: caf\xe9:x\n").unwrap();
    t.write("pools.d/big.yaml", &"# padding\n".repeat(200_000));
    t.write("pyfpm.yaml", "");
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/big.yaml: the file is larger than 1 MiB; is it really a pyfpm config file?",
            "T/pools.d/latin1.yaml: the file is not UTF-8 text (invalid byte at offset 15)",
        ]
    );
}

#[test]
fn dynamic_and_ondemand_pools_with_their_settings() {
    let t = Tree::new();
    t.write(
        "pyfpm.yaml",
        "daemonize: false\nemergency_restart_threshold: 3\nemergency_restart_interval: 1m\n\
         process.max: 40\nsystemd_interval: 0\n",
    );
    t.write(
        "pools.d/www.yaml",
        "dyn:\n  listen: 9000\n  app: a:b\n  pm: dynamic\n  pm.max_children: 10\n  \
         pm.min_spare_servers: 2\n  pm.max_spare_servers: 6\n  pm.max_spawn_rate: 8\n  \
         pm.max_requests: 500\n  pm.max_requests_jitter: 50\n  pm.max_memory: 256M\n  \
         pm.max_lifetime: 1h\n  request_terminate_timeout: 30s\n  \
         request_slowlog_timeout: 5s\n  slowlog: slow.log\n  process.max: 12\n  \
         request_body_max: 10M\n  request_read_timeout: 5s\n  \
         roles: [responder, Filter]\n\
         od:\n  listen: 9001\n  app: a:b\n  pm: ondemand\n  pm.max_children: 4\n  \
         pm.process_idle_timeout: 500ms\n\
         dyn2:\n  listen: 9002\n  app: a:b\n  pm: dynamic\n  pm.max_children: 5\n  \
         pm.start_servers: 3\n  pm.min_spare_servers: 3\n  pm.max_spare_servers: 3\n",
    );
    let c = t.load("pyfpm.yaml").unwrap();
    assert_eq!(c.global.emergency_restart_threshold, 3);
    assert_eq!(c.global.emergency_restart_interval, Duration::from_secs(60));
    assert_eq!(c.global.process_max, 40);
    assert_eq!(c.global.systemd_interval, Duration::ZERO);
    let lines: Vec<String> = c
        .warnings
        .iter()
        .map(|d| d.to_string().replace(&*t.dir.path().to_string_lossy(), "T"))
        .collect();
    assert_eq!(
        lines,
        ["T/pools.d/www.yaml:1:1: pool 'dyn': pm.start_servers is not set. It's been set to 4."]
    );
    let d = &c.pools[0];
    assert_eq!(
        d.pm,
        PmMode::Dynamic {
            start_servers: 4,
            min_spare_servers: 2,
            max_spare_servers: 6,
            max_spawn_rate: 8
        }
    );
    assert_eq!(
        d.limits,
        pyfpm_config::PoolLimits {
            max_requests: 500,
            max_requests_jitter: 50,
            max_memory: 256 << 20,
            max_lifetime: Duration::from_secs(3600),
            request_terminate_timeout: Duration::from_secs(30),
            request_slowlog_timeout: Duration::from_secs(5),
            slowlog: Some(t.path("pools.d/slow.log")),
            process_max: 12,
            request_body_max: 10 << 20,
            request_read_timeout: Duration::from_secs(5),
            roles: pyfpm_config::Roles {
                responder: true,
                authorizer: false,
                filter: true,
            },
        }
    );
    assert_eq!(
        c.pools[1].pm,
        PmMode::Ondemand {
            process_idle_timeout: Duration::from_millis(500),
            max_spawn_rate: 32
        }
    );
    assert!(matches!(
        c.pools[2].pm,
        PmMode::Dynamic {
            start_servers: 3,
            ..
        }
    ));
}

#[test]
fn process_manager_settings_are_checked_like_php_fpm() {
    let t = Tree::new();
    t.write(
        "pyfpm.yaml",
        "process.max: 3\nemergency_restart_threshold: 2\n",
    );
    t.write(
        "pools.d/www.yaml",
        "a:\n  listen: 9000\n  app: a:b\n  pm: dynamic\n  pm.max_children: 4\n\
         b:\n  listen: 9001\n  app: a:b\n  pm: dynamic\n  pm.max_children: 4\n  \
         pm.min_spare_servers: 5\n  pm.max_spare_servers: 2\n\
         c:\n  listen: 9002\n  app: a:b\n  pm: dynamic\n  pm.max_children: 4\n  \
         pm.min_spare_servers: 1\n  pm.max_spare_servers: 2\n  pm.start_servers: 3\n\
         d:\n  listen: 9003\n  app: a:b\n  pm: ondemand\n  pm.max_children: 2\n  \
         pm.process_idle_timeout: 0\n  pm.max_spawn_rate: 0\n\
         e:\n  listen: 9004\n  app: a:b\n  pm.max_children: 2\n  request_slowlog_timeout: 10s\n  \
         request_terminate_timeout: 5s\n  process.max: 1\n  pm.max_memory: lots\n\
         f:\n  listen: 9005\n  app: a:b\n  pm.max_children: 5\n",
    );
    assert_eq!(
        t.errors("pyfpm.yaml"),
        [
            "T/pools.d/www.yaml:1:1: pool 'a' has no 'pm.min_spare_servers' (required with pm: dynamic)",
            "T/pools.d/www.yaml:1:1: pool 'a' has no 'pm.max_spare_servers' (required with pm: dynamic)",
            "T/pools.d/www.yaml:11:25: pm.min_spare_servers(5) and pm.max_spare_servers(2) cannot be greater than pm.max_children(4)",
            "T/pools.d/www.yaml:12:25: pm.max_spare_servers(2) must not be less than pm.min_spare_servers(5)",
            "T/pools.d/www.yaml:20:21: pm.start_servers(3) must not be less than pm.min_spare_servers(1) and not greater than pm.max_spare_servers(2)",
            "T/pools.d/www.yaml:26:28: pm.process_idle_timeout(0) must be greater than 0s",
            "T/pools.d/www.yaml:27:22: 'pm.max_spawn_rate': must be at least 1, got 0",
            "T/pools.d/www.yaml:32:28: 'slowlog' must be specified for use with 'request_slowlog_timeout'",
            "T/pools.d/www.yaml:32:28: 'request_slowlog_timeout' (10s) must not be greater than 'request_terminate_timeout' (5s)",
            "T/pools.d/www.yaml:34:16: pm.max_children(2) must not be greater than process.max(1)",
            "T/pools.d/www.yaml:35:18: 'pm.max_memory': invalid size 'lots' (use a whole number with an optional K, M or G, e.g. 1M)",
            "T/pools.d/www.yaml:36:1: [pool f] pm.max_children(5) must not be greater than process.max(3) (global)",
        ]
    );
}
