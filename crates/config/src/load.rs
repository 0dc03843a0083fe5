//! The loader: reads the main file and its includes, interprets every directive against
//! the table in [`crate::directives`], and runs the cross-pool and interpreter checks,
//! collecting every problem as a [`Diagnostic`] instead of stopping at the first.
//!
//! Relative paths resolve against the directory of the file that holds them; messages
//! name files as given on the command line or as matched by the include glob.

use crate::directives::{self, DefaultValue, Directive, Scope};
use crate::python;
use crate::values;
use crate::yaml::{self, Node, NodeKind, Pos};
use crate::{
    CheckLevel, Config, ConfigErrors, Diagnostic, GlobalConfig, ListenAddr, Location, LogLevel,
    PmMode, PoolConfig, PoolLimits,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Looks up an environment variable (the process environment, or a test's map).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One file being read.
struct Src {
    /// As shown in messages.
    shown: PathBuf,
    /// Absolute directory for relative paths.
    dir: PathBuf,
}

/// Where a pool's settings came from, for cross checks.
struct PoolMeta {
    listen: Vec<Location>,
    /// The directive the interpreter came from, and where, or `None` for the default.
    python_from: Option<(&'static str, Location)>,
    app: Location,
    /// No diagnostic was reported inside this pool.
    clean: bool,
}

struct Loader<'a> {
    env: EnvLookup<'a>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    files: Vec<PathBuf>,
    pools: Vec<(PoolConfig, PoolMeta)>,
    pool_names: HashMap<String, Location>,
}

/// Load with an explicit environment (tests use a map; [`crate::load`] the process's).
pub fn load_with(
    main_file: &Path,
    level: CheckLevel,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigErrors> {
    let mut l = Loader {
        env,
        errors: Vec::new(),
        warnings: Vec::new(),
        files: Vec::new(),
        pools: Vec::new(),
        pool_names: HashMap::new(),
    };
    let global = l.main(main_file);
    if l.errors.is_empty() || !l.pools.is_empty() {
        l.cross_checks(main_file);
        l.interpreters(level);
    }
    l.finish(main_file, global)
}

impl Loader<'_> {
    fn loc(src: &Src, pos: Pos) -> Location {
        Location {
            file: src.shown.clone(),
            line: pos.line,
            column: pos.column,
        }
    }

    fn err(&mut self, src: &Src, pos: Pos, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            location: Some(Self::loc(src, pos)),
            message: message.into(),
        });
    }

    fn whole_file(file: &Path) -> Location {
        Location {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
        }
    }

    /// Read and parse one file; `None` after reporting why it could not be.
    fn read(&mut self, shown: &Path) -> Option<(Src, Option<Node>)> {
        self.files.push(shown.to_path_buf());
        let text = match read_limited(shown) {
            Ok(t) => t,
            Err(message) => {
                self.errors.push(Diagnostic {
                    location: Some(Self::whole_file(shown)),
                    message,
                });
                return None;
            }
        };
        let dir = values::resolve_path(shown.parent().unwrap_or(Path::new("")), ".");
        let src = Src {
            shown: shown.to_path_buf(),
            dir,
        };
        match yaml::parse(&text) {
            Ok(root) => Some((src, root)),
            Err(e) => {
                self.err(&src, e.pos, e.message);
                None
            }
        }
    }

    fn main(&mut self, main_file: &Path) -> GlobalConfig {
        let mut global = default_global();
        let Some((src, root)) = self.read(main_file) else {
            return global;
        };
        let empty = Vec::new();
        let entries = match &root {
            None => &empty,
            Some(Node {
                kind: NodeKind::Map(entries),
                ..
            }) => entries,
            Some(other) => {
                self.err(
                    &src,
                    other.pos,
                    format!(
                        "the main file must be a mapping of directives (pid: ..., include: ...), \
                         not {}",
                        other.type_name()
                    ),
                );
                return global;
            }
        };
        let map = self.directive_map(&src, Scope::Global, entries, None);
        if let Some(p) = self.opt(&src, &map, "pid", |s| Ok(s.to_owned())) {
            global.pid = Some(values::resolve_path(&src.dir, &p));
        }
        if let Some(p) = self.opt(&src, &map, "error_log", |s| Ok(s.to_owned())) {
            global.error_log = Some(values::resolve_path(&src.dir, &p));
        }
        if let Some(v) = self.opt(&src, &map, "log_level", parse_log_level) {
            global.log_level = v;
        }
        if let Some(v) = self.opt(&src, &map, "daemonize", values::parse_bool) {
            global.daemonize = v;
        }
        if let Some(v) = self.opt(
            &src,
            &map,
            "process_control_timeout",
            values::parse_duration,
        ) {
            global.process_control_timeout = v;
        }
        if let Some(p) = self.opt(&src, &map, "worker_module", |s| Ok(s.to_owned())) {
            global.worker_module = Some(values::resolve_path(&src.dir, &p));
        }
        let count = |s: &str| values::parse_int(s, 0, 1_000_000).map(|n| n as u32);
        if let Some(v) = self.opt(&src, &map, "emergency_restart_threshold", count) {
            global.emergency_restart_threshold = v;
        }
        if let Some(v) = self.opt(
            &src,
            &map,
            "emergency_restart_interval",
            values::parse_duration,
        ) {
            global.emergency_restart_interval = v;
        }
        if (global.emergency_restart_threshold == 0) != global.emergency_restart_interval.is_zero()
        {
            let (set, unset) = if global.emergency_restart_threshold == 0 {
                ("emergency_restart_interval", "emergency_restart_threshold")
            } else {
                ("emergency_restart_threshold", "emergency_restart_interval")
            };
            let pos = map
                .get(set)
                .map(|(_, v)| v.pos)
                .unwrap_or(Pos { line: 0, column: 0 });
            self.warnings.push(Diagnostic {
                location: Some(Self::loc(&src, pos)),
                message: format!(
                    "'{set}' has no effect without '{unset}'; set both to enable the \
                     emergency restart"
                ),
            });
        }
        if let Some(v) = self.opt(&src, &map, "process.max", count) {
            global.process_max = v;
        }
        if let Some(v) = self.opt(&src, &map, "systemd_interval", values::parse_duration) {
            global.systemd_interval = v;
        }
        if let Some((_, node)) = map.get("pools").filter(|(_, v)| !v.is_null()) {
            self.pool_map(&src, node, false);
        }
        let included = match map.get("include").filter(|(_, v)| !v.is_null()) {
            Some((_, node)) => {
                let d = directives::lookup(Scope::Global, "include").expect("in the table");
                let globs = self.texts(&src, d, node).unwrap_or_default();
                self.expand_includes(main_file, &src, globs, false)
            }
            None => {
                let default = default_text("include");
                self.expand_includes(main_file, &src, vec![(default.to_owned(), None)], true)
            }
        };
        for file in included {
            let Some((fsrc, root)) = self.read(&file) else {
                continue;
            };
            match root {
                Some(node) => self.pool_map(&fsrc, &node, true),
                None => self.warnings.push(Diagnostic {
                    location: Some(Self::whole_file(&file)),
                    message: "defines no pools (the file is empty)".into(),
                }),
            }
        }
        if global.process_max > 0 {
            let mut found = Vec::new();
            // A pool with errors of its own has already been reported.
            for (pool, _) in self.pools.iter().filter(|(_, meta)| meta.clean) {
                let floor = match pool.pm {
                    PmMode::Static => pool.max_children,
                    PmMode::Dynamic { start_servers, .. } => start_servers,
                    PmMode::Ondemand { .. } => 0,
                };
                if floor > global.process_max {
                    let what = match pool.pm {
                        PmMode::Static => "pm.max_children",
                        _ => "pm.start_servers",
                    };
                    found.push(Diagnostic {
                        location: Some(pool.location.clone()),
                        message: format!(
                            "[pool {}] {what}({floor}) must not be greater than \
                             process.max({}) (global)",
                            pool.name, global.process_max
                        ),
                    });
                }
            }
            self.errors.extend(found);
        }
        global
    }

    /// Expand the include globs into the files to read, in order, without repeats.
    fn expand_includes(
        &mut self,
        main_file: &Path,
        src: &Src,
        globs: Vec<(String, Option<Pos>)>,
        implicit: bool,
    ) -> Vec<PathBuf> {
        let base = main_file.parent().unwrap_or(Path::new(""));
        let mut seen: HashSet<PathBuf> = std::fs::canonicalize(main_file).into_iter().collect();
        let mut out = Vec::new();
        for (pattern, pos) in globs {
            let pos = pos.unwrap_or(Pos { line: 0, column: 0 });
            if let Err(e) = glob::Pattern::new(&pattern) {
                self.err(
                    src,
                    pos,
                    format!("'include': invalid glob '{pattern}': {e}"),
                );
                continue;
            }
            // The fixed leading part of the pattern must be an existing directory.
            let fixed: PathBuf = Path::new(&pattern)
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                .collect();
            let fixed = if Path::new(&pattern).components().count() == fixed.components().count() {
                fixed.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                fixed
            };
            let dir = base.join(&fixed);
            let dir_shown = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.clone()
            };
            if !dir_shown.is_dir() {
                if !implicit {
                    self.err(
                        src,
                        pos,
                        format!(
                            "'include': directory {} does not exist (pattern '{pattern}')",
                            dir_shown.display()
                        ),
                    );
                }
                continue;
            }
            let full = format!(
                "{}{}",
                if base.as_os_str().is_empty() || Path::new(&pattern).is_absolute() {
                    String::new()
                } else {
                    format!("{}/", glob::Pattern::escape(&base.to_string_lossy()))
                },
                pattern
            );
            let paths = match glob::glob(&full) {
                Ok(paths) => paths,
                Err(e) => {
                    self.err(
                        src,
                        pos,
                        format!("'include': invalid glob '{pattern}': {e}"),
                    );
                    continue;
                }
            };
            let mut matched: Vec<PathBuf> = Vec::new();
            for entry in paths {
                match entry {
                    Ok(p) if p.is_dir() => {}
                    Ok(p) => matched.push(p),
                    Err(e) => self.err(src, pos, format!("'include': {e}")),
                }
            }
            matched.sort();
            if matched.is_empty() {
                let location = if implicit {
                    Self::whole_file(main_file)
                } else {
                    Self::loc(src, pos)
                };
                self.warnings.push(Diagnostic {
                    location: Some(location),
                    message: format!("'include': '{pattern}' matches no file"),
                });
            }
            for p in matched {
                let key = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
                if seen.insert(key) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// A mapping of pool names to pools (a pool file's top level, or `pools:`).
    fn pool_map(&mut self, src: &Src, node: &Node, top_level: bool) {
        let NodeKind::Map(entries) = &node.kind else {
            let msg = if top_level {
                format!(
                    "a pool file must map pool names to their directives (www: then the \
                     directives indented below it), not {}",
                    node.type_name()
                )
            } else {
                format!(
                    "'pools' must be a mapping of pool names to their directives, not {}",
                    node.type_name()
                )
            };
            self.err(src, node.pos, msg);
            return;
        };
        for (key, value) in entries {
            let Some(name) = key.as_scalar() else {
                self.err(src, key.pos, "pool names must be plain text");
                continue;
            };
            let NodeKind::Map(directives) = &value.kind else {
                let msg = if value.is_null() {
                    format!("pool '{name}' has no directives")
                } else if directives::lookup_any(name).is_some() {
                    format!(
                        "'{name}' is a directive, but here the keys are pool names; indent it \
                         under a pool name such as 'www:'"
                    )
                } else {
                    format!(
                        "pool '{name}' must be a mapping of directives, not {}",
                        value.type_name()
                    )
                };
                self.err(src, if value.is_null() { key.pos } else { value.pos }, msg);
                continue;
            };
            if !values::is_pool_name(name) {
                self.err(
                    src,
                    key.pos,
                    format!("invalid pool name '{name}' (use letters, digits, '_', '.' and '-')"),
                );
                continue;
            }
            let here = Self::loc(src, key.pos);
            if let Some(first) = self.pool_names.get(name) {
                let msg = format!("pool '{name}' is already defined at {first}");
                self.err(src, key.pos, msg);
                continue;
            }
            self.pool_names.insert(name.to_owned(), here.clone());
            let before = self.errors.len();
            let (config, mut meta) = self.pool(src, name, here, directives);
            meta.clean = self.errors.len() == before;
            self.pools.push((config, meta));
        }
    }

    /// Check a directive mapping's keys: known in this scope, not repeated. Returns the
    /// values by directive name.
    fn directive_map<'n>(
        &mut self,
        src: &Src,
        scope: Scope,
        entries: &'n [(Node, Node)],
        pool: Option<&str>,
    ) -> BTreeMap<&'static str, (&'n Node, &'n Node)> {
        let mut out: BTreeMap<&'static str, (&'n Node, &'n Node)> = BTreeMap::new();
        for (key, value) in entries {
            let Some(name) = key.as_scalar() else {
                self.err(
                    src,
                    key.pos,
                    format!(
                        "directive names must be plain text, not {}",
                        key.type_name()
                    ),
                );
                continue;
            };
            let Some(d) = directives::lookup(scope, name) else {
                let msg = unknown_key_message(scope, name, pool);
                self.err(src, key.pos, msg);
                continue;
            };
            if let Some((first, _)) = out.get(d.name) {
                let msg = format!(
                    "'{name}' is set twice; the first is at {}",
                    Self::loc(src, first.pos)
                );
                self.err(src, key.pos, msg);
                continue;
            }
            out.insert(d.name, (key, value));
        }
        out
    }

    /// A scalar directive value after interpolation; reports a wrong type or a failed
    /// interpolation.
    fn text(&mut self, src: &Src, d: &Directive, node: &Node) -> Option<String> {
        let Some(raw) = node.as_scalar() else {
            self.err(
                src,
                node.pos,
                format!(
                    "'{}' must be {}, not {}",
                    d.name,
                    with_article(&d.kind.syntax()),
                    node.type_name()
                ),
            );
            return None;
        };
        self.interpolate(src, node.pos, d.name, raw)
    }

    fn interpolate(&mut self, src: &Src, pos: Pos, what: &str, raw: &str) -> Option<String> {
        match values::interpolate(raw, self.env) {
            Ok(s) if s.contains('\0') => {
                self.err(
                    src,
                    pos,
                    format!("'{what}': the value contains a NUL character"),
                );
                None
            }
            Ok(s) => Some(s),
            Err(e) => {
                self.err(src, pos, format!("'{what}': {e}"));
                None
            }
        }
    }

    /// A scalar or a list of scalars, each with its position.
    fn texts(
        &mut self,
        src: &Src,
        d: &Directive,
        node: &Node,
    ) -> Option<Vec<(String, Option<Pos>)>> {
        match &node.kind {
            NodeKind::Scalar { .. } => self.text(src, d, node).map(|s| vec![(s, Some(node.pos))]),
            NodeKind::Seq(items) => {
                let mut out = Vec::new();
                for item in items {
                    if item.is_null() {
                        self.err(src, item.pos, format!("'{}': empty list item", d.name));
                    } else if let Some(s) = self.text(src, d, item) {
                        out.push((s, Some(item.pos)));
                    }
                }
                Some(out)
            }
            NodeKind::Map(_) => {
                self.err(
                    src,
                    node.pos,
                    format!(
                        "'{}' must be {}, not a mapping",
                        d.name,
                        with_article(&d.kind.syntax())
                    ),
                );
                None
            }
        }
    }

    /// The parsed value of a directive that was set (and not empty); `None` when unset
    /// or when an error was reported.
    fn opt<T>(
        &mut self,
        src: &Src,
        map: &BTreeMap<&'static str, (&Node, &Node)>,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (_, node) = map.get(name).filter(|(_, v)| !v.is_null())?;
        let d = directives::lookup_any(name).expect("directive in the table");
        let s = self.text(src, d, node)?;
        // `pid: ${PIDFILE:-}` is how a template makes a setting optional: an optional
        // directive that interpolates to nothing is unset, like an empty value.
        if s.is_empty() && d.default != DefaultValue::Required {
            return None;
        }
        match parse(&s) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(src, node.pos, format!("'{name}': {e}"));
                None
            }
        }
    }

    /// Like [`Self::opt`], falling back to the table's default.
    fn or_default<T>(
        &mut self,
        src: &Src,
        map: &BTreeMap<&'static str, (&Node, &Node)>,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        self.opt(src, map, name, &parse).unwrap_or_else(|| {
            parse(default_text(name)).expect("the directive table's defaults parse")
        })
    }

    fn pool(
        &mut self,
        src: &Src,
        name: &str,
        location: Location,
        entries: &[(Node, Node)],
    ) -> (PoolConfig, PoolMeta) {
        let map = self.directive_map(src, Scope::Pool, entries, Some(name));
        let name_pos = Pos {
            line: location.line,
            column: location.column,
        };
        let mut meta = PoolMeta {
            listen: Vec::new(),
            python_from: None,
            app: location.clone(),
            clean: true,
        };

        // Required directives: report a missing or empty one once, at the pool or key.
        for d in directives::DIRECTIVES
            .iter()
            .filter(|d| d.scope == Scope::Pool && d.default == DefaultValue::Required)
        {
            match map.get(d.name) {
                None => self.err(
                    src,
                    name_pos,
                    format!(
                        "pool '{name}' has no '{}' ({} required)",
                        d.name,
                        d.kind.syntax()
                    ),
                ),
                Some((key, v)) if v.is_null() => self.err(
                    src,
                    key.pos,
                    format!("'{}' has no value ({} required)", d.name, d.kind.syntax()),
                ),
                Some(_) => {}
            }
        }

        let mut listen = Vec::new();
        if let Some((_, node)) = map.get("listen").filter(|(_, v)| !v.is_null()) {
            let d = directives::lookup(Scope::Pool, "listen").expect("in the table");
            for (text, pos) in self.texts(src, d, node).unwrap_or_default() {
                let pos = pos.unwrap_or(node.pos);
                match values::parse_listen(&text, &src.dir) {
                    Ok(addr) => {
                        listen.push(addr);
                        meta.listen.push(Self::loc(src, pos));
                    }
                    Err(e) => self.err(src, pos, format!("'listen': {e}")),
                }
            }
            if listen.is_empty() && matches!(&node.kind, NodeKind::Seq(v) if v.is_empty()) {
                self.err(
                    src,
                    node.pos,
                    "'listen': the list is empty; give at least one address",
                );
            }
        }

        let listen_owner = self.opt(src, &map, "listen.owner", check_user);
        let listen_group = self.opt(src, &map, "listen.group", check_group);
        let listen_mode = self.or_default(src, &map, "listen.mode", values::parse_mode);
        let listen_backlog = self.or_default(src, &map, "listen.backlog", |s| {
            values::parse_int(s, 1, 65535).map(|n| n as i32)
        });
        let user = self.opt(src, &map, "user", check_user);
        let group = self.opt(src, &map, "group", check_group);
        let max_children = self
            .opt(src, &map, "pm.max_children", |s| {
                values::parse_int(s, 1, 100_000).map(|n| n as u32)
            })
            .unwrap_or(1);
        let threads = self.or_default(src, &map, "threads", |s| {
            values::parse_int(s, 1, 256).map(|n| n as u32)
        });
        let pm = self.pm(src, &map, name, name_pos, max_children);
        let limits = self.limits(src, &map, name_pos, max_children);
        let app = self
            .opt(src, &map, "app", |s| {
                values::parse_app(s).map(|()| s.to_owned())
            })
            .unwrap_or_default();
        if let Some((_, node)) = map.get("app") {
            meta.app = Self::loc(src, node.pos);
        }
        let (python, virtualenv) = self.interpreter(src, &map, name_pos, name, &mut meta);

        let mut python_path = Vec::new();
        if let Some((_, node)) = map.get("python_path").filter(|(_, v)| !v.is_null()) {
            let d = directives::lookup(Scope::Pool, "python_path").expect("in the table");
            for (text, pos) in self.texts(src, d, node).unwrap_or_default() {
                let dir = values::resolve_path(&src.dir, &text);
                if dir.is_dir() {
                    python_path.push(dir);
                } else {
                    self.err(
                        src,
                        pos.unwrap_or(node.pos),
                        format!("'python_path': directory {} does not exist", dir.display()),
                    );
                }
            }
        }
        let mount = self.or_default(src, &map, "mount", values::parse_mount);
        let chdir = self.opt(src, &map, "chdir", |s| {
            let dir = values::resolve_path(&src.dir, s);
            if dir.is_dir() {
                Ok(dir)
            } else {
                Err(format!("directory {} does not exist", dir.display()))
            }
        });
        let clear_env = self.or_default(src, &map, "clear_env", values::parse_bool);
        let preload = self.or_default(src, &map, "preload", values::parse_bool);
        let env = match map.get("env").filter(|(_, v)| !v.is_null()) {
            Some((_, node)) => self.env_map(src, node),
            None => BTreeMap::new(),
        };
        let request_params_max = self.or_default(src, &map, "request_params_max", |s| {
            let n = values::parse_size(s)?;
            if n < 1024 {
                return Err(format!("{s} is below the minimum of 1K"));
            }
            usize::try_from(n).map_err(|_| format!("size '{s}' is too large"))
        });

        let config = PoolConfig {
            name: name.to_owned(),
            location,
            listen,
            listen_owner,
            listen_group,
            listen_mode,
            listen_backlog,
            user,
            group,
            pm,
            max_children,
            threads,
            app,
            preload,
            python,
            virtualenv,
            python_path,
            mount,
            chdir,
            clear_env,
            env,
            request_params_max,
            limits,
        };
        (config, meta)
    }

    /// `pm` and the settings of its mode, checked against each other as PHP-FPM's
    /// `fpm_conf_process_all_pools` does (same rules, same wording where it has one).
    fn pm(
        &mut self,
        src: &Src,
        map: &BTreeMap<&'static str, (&Node, &Node)>,
        pool: &str,
        name_pos: Pos,
        max_children: u32,
    ) -> PmMode {
        let count = |s: &str| values::parse_int(s, 1, 100_000).map(|n| n as u32);
        let word = self
            .opt(src, map, "pm", parse_pm)
            .unwrap_or_else(|| parse_pm(default_text("pm")).expect("table default"));
        let pos_of = |name: &str| map.get(name).map(|(_, v)| v.pos).unwrap_or(name_pos);
        let max_spawn_rate = self.or_default(src, map, "pm.max_spawn_rate", count);
        match word {
            "dynamic" => {
                let min_spare = self.opt(src, map, "pm.min_spare_servers", count);
                let max_spare = self.opt(src, map, "pm.max_spare_servers", count);
                for (d, v) in [
                    ("pm.min_spare_servers", min_spare),
                    ("pm.max_spare_servers", max_spare),
                ] {
                    if v.is_none() && !map.contains_key(d) {
                        self.err(
                            src,
                            name_pos,
                            format!("pool '{pool}' has no '{d}' (required with pm: dynamic)"),
                        );
                    }
                }
                let (Some(min), Some(max)) = (min_spare, max_spare) else {
                    return PmMode::Static;
                };
                let errors = self.errors.len();
                if min > max_children || max > max_children {
                    self.err(
                        src,
                        pos_of(if min > max_children {
                            "pm.min_spare_servers"
                        } else {
                            "pm.max_spare_servers"
                        }),
                        format!(
                            "pm.min_spare_servers({min}) and pm.max_spare_servers({max}) \
                             cannot be greater than pm.max_children({max_children})"
                        ),
                    );
                }
                if max < min {
                    self.err(
                        src,
                        pos_of("pm.max_spare_servers"),
                        format!(
                            "pm.max_spare_servers({max}) must not be less than \
                             pm.min_spare_servers({min})"
                        ),
                    );
                }
                let start = match self.opt(src, map, "pm.start_servers", count) {
                    Some(n) => n,
                    None if map.contains_key("pm.start_servers") => min,
                    None => {
                        let n = min + max.saturating_sub(min) / 2;
                        self.warnings.push(Diagnostic {
                            location: Some(Self::loc(src, name_pos)),
                            message: format!(
                                "pool '{pool}': pm.start_servers is not set. It's been set to {n}."
                            ),
                        });
                        n
                    }
                };
                if self.errors.len() == errors && (start < min || start > max) {
                    self.err(
                        src,
                        pos_of("pm.start_servers"),
                        format!(
                            "pm.start_servers({start}) must not be less than \
                             pm.min_spare_servers({min}) and not greater than \
                             pm.max_spare_servers({max})"
                        ),
                    );
                }
                PmMode::Dynamic {
                    start_servers: start,
                    min_spare_servers: min,
                    max_spare_servers: max,
                    max_spawn_rate,
                }
            }
            "ondemand" => {
                let process_idle_timeout =
                    self.or_default(src, map, "pm.process_idle_timeout", values::parse_duration);
                if process_idle_timeout.is_zero() {
                    self.err(
                        src,
                        pos_of("pm.process_idle_timeout"),
                        "pm.process_idle_timeout(0) must be greater than 0s",
                    );
                }
                PmMode::Ondemand {
                    process_idle_timeout,
                    max_spawn_rate,
                }
            }
            _ => PmMode::Static,
        }
    }

    /// The `roles` directive: a word or a list of words, at least one.
    fn roles(&mut self, src: &Src, map: &BTreeMap<&'static str, (&Node, &Node)>) -> crate::Roles {
        let Some((_, node)) = map.get("roles").filter(|(_, v)| !v.is_null()) else {
            return crate::Roles::default();
        };
        let d = directives::lookup(Scope::Pool, "roles").expect("in the table");
        let mut roles = crate::Roles {
            responder: false,
            authorizer: false,
            filter: false,
        };
        let Some(words) = self.texts(src, d, node) else {
            return crate::Roles::default();
        };
        for (word, pos) in &words {
            match word.trim().to_ascii_lowercase().as_str() {
                "responder" => roles.responder = true,
                "authorizer" => roles.authorizer = true,
                "filter" => roles.filter = true,
                _ => self.err(
                    src,
                    pos.unwrap_or(node.pos),
                    format!(
                        "'roles': unknown role '{word}' (use {})",
                        directives::ROLES.join(", ")
                    ),
                ),
            }
        }
        if roles.numbers().is_empty()
            && words
                .iter()
                .all(|(w, _)| directives::ROLES.contains(&w.trim().to_ascii_lowercase().as_str()))
        {
            self.err(src, node.pos, "'roles': at least one role is required");
        }
        roles
    }

    /// Recycling, timeouts, slow log and `process.max`.
    fn limits(
        &mut self,
        src: &Src,
        map: &BTreeMap<&'static str, (&Node, &Node)>,
        name_pos: Pos,
        max_children: u32,
    ) -> PoolLimits {
        let count = |s: &str| values::parse_int(s, 0, i64::MAX).map(|n| n as u64);
        let pos_of = |name: &str| map.get(name).map(|(_, v)| v.pos).unwrap_or(name_pos);
        let limits = PoolLimits {
            max_requests: self.or_default(src, map, "pm.max_requests", count),
            max_requests_jitter: self.or_default(src, map, "pm.max_requests_jitter", count),
            max_memory: self.or_default(src, map, "pm.max_memory", values::parse_size),
            max_lifetime: self.or_default(src, map, "pm.max_lifetime", values::parse_duration),
            request_terminate_timeout: self.or_default(
                src,
                map,
                "request_terminate_timeout",
                values::parse_duration,
            ),
            request_slowlog_timeout: self.or_default(
                src,
                map,
                "request_slowlog_timeout",
                values::parse_duration,
            ),
            slowlog: self.opt(src, map, "slowlog", |s| {
                Ok(values::resolve_path(&src.dir, s))
            }),
            process_max: self.or_default(src, map, "process.max", |s| {
                values::parse_int(s, 0, 100_000).map(|n| n as u32)
            }),
            request_body_max: self.or_default(src, map, "request_body_max", values::parse_size),
            request_read_timeout: self.or_default(
                src,
                map,
                "request_read_timeout",
                values::parse_duration,
            ),
            roles: self.roles(src, map),
        };
        let slow = limits.request_slowlog_timeout;
        let terminate = limits.request_terminate_timeout;
        if !slow.is_zero() && limits.slowlog.is_none() {
            self.err(
                src,
                pos_of("request_slowlog_timeout"),
                "'slowlog' must be specified for use with 'request_slowlog_timeout'",
            );
        }
        if !slow.is_zero() && !terminate.is_zero() && slow > terminate {
            self.err(
                src,
                pos_of("request_slowlog_timeout"),
                format!(
                    "'request_slowlog_timeout' ({}) must not be greater than \
                     'request_terminate_timeout' ({})",
                    values::format_duration(slow),
                    values::format_duration(terminate)
                ),
            );
        }
        if limits.process_max != 0 && limits.process_max < max_children {
            self.err(
                src,
                pos_of("process.max"),
                format!(
                    "pm.max_children({max_children}) must not be greater than \
                     process.max({})",
                    limits.process_max
                ),
            );
        }
        limits
    }

    /// Resolve `python` / `virtualenv` to the interpreter path, checking that it exists.
    fn interpreter(
        &mut self,
        src: &Src,
        map: &BTreeMap<&'static str, (&Node, &Node)>,
        name_pos: Pos,
        pool: &str,
        meta: &mut PoolMeta,
    ) -> (PathBuf, Option<PathBuf>) {
        let python_node = map.get("python").filter(|(_, v)| !v.is_null()).map(|e| e.1);
        let venv_node = map
            .get("virtualenv")
            .filter(|(_, v)| !v.is_null())
            .map(|e| e.1);
        let errors_before = self.errors.len();
        let mut venv = None;
        let mut python = None;
        if let Some(node) = venv_node {
            let d = directives::lookup(Scope::Pool, "virtualenv").expect("in the table");
            if let Some(text) = self.text(src, d, node).filter(|t| !t.is_empty()) {
                let dir = values::resolve_path(&src.dir, &text);
                let bin_python = dir.join("bin/python");
                if !dir.is_dir() {
                    self.err(
                        src,
                        node.pos,
                        format!("'virtualenv': directory {} does not exist", dir.display()),
                    );
                } else if !bin_python.exists() {
                    self.err(
                        src,
                        node.pos,
                        format!(
                            "'virtualenv': {} is not a virtualenv ({} does not exist)",
                            dir.display(),
                            bin_python.display()
                        ),
                    );
                } else {
                    meta.python_from = Some(("virtualenv", Self::loc(src, node.pos)));
                    python = Some(bin_python);
                    venv = Some(dir);
                }
            }
        }
        if let Some(node) = python_node {
            let d = directives::lookup(Scope::Pool, "python").expect("in the table");
            if let Some(text) = self.text(src, d, node).filter(|t| !t.is_empty()) {
                match self.find_interpreter(&text, &src.dir) {
                    Ok(p) => {
                        if let Some(v) = &venv {
                            if p.parent() != Some(&v.join("bin")) {
                                self.err(
                                    src,
                                    node.pos,
                                    format!(
                                        "'python': {} is not the virtualenv's interpreter ({}); \
                                         set only one of python and virtualenv",
                                        p.display(),
                                        v.join("bin/python").display()
                                    ),
                                );
                            }
                        }
                        meta.python_from = Some(("python", Self::loc(src, node.pos)));
                        python = Some(p);
                    }
                    Err(e) => self.err(src, node.pos, format!("'python': {e}")),
                }
            }
        }
        // Neither given (or both interpolated to nothing): python3 on PATH.
        if python.is_none() && self.errors.len() == errors_before {
            let default = default_text("python");
            match self.find_interpreter(default, &src.dir) {
                Ok(p) => python = Some(p),
                Err(e) => self.err(
                    src,
                    name_pos,
                    format!("pool '{pool}': {e}; set 'python' or 'virtualenv'"),
                ),
            }
        }
        (python.unwrap_or_default(), venv)
    }

    /// A command name (searched on PATH) or a path to an executable.
    fn find_interpreter(&self, text: &str, base: &Path) -> Result<PathBuf, String> {
        if text.contains('/') {
            let p = values::resolve_path(base, text);
            if !p.exists() {
                return Err(format!("{} does not exist", p.display()));
            }
            if p.is_dir() || nix::unistd::access(&p, nix::unistd::AccessFlags::X_OK).is_err() {
                return Err(format!("{} is not an executable file", p.display()));
            }
            return Ok(p);
        }
        let path = (self.env)("PATH").unwrap_or_default();
        for dir in path.split(':') {
            let dir = if dir.is_empty() { "." } else { dir };
            let candidate = values::resolve_path(Path::new(dir), text);
            if candidate.is_file()
                && nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            {
                return Ok(candidate);
            }
        }
        Err(format!("'{text}' was not found on PATH ({path})"))
    }

    fn env_map(&mut self, src: &Src, node: &Node) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let NodeKind::Map(entries) = &node.kind else {
            self.err(
                src,
                node.pos,
                format!(
                    "'env' must be a mapping of NAME: value, not {}",
                    node.type_name()
                ),
            );
            return out;
        };
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for (key, value) in entries {
            let Some(name) = key.as_scalar() else {
                self.err(src, key.pos, "'env': variable names must be plain text");
                continue;
            };
            if !values::is_env_name(name) {
                self.err(
                    src,
                    key.pos,
                    format!(
                        "'env': invalid variable name '{name}' (letters, digits and '_', not \
                         starting with a digit)"
                    ),
                );
                continue;
            }
            if let Some(first) = seen.get(name) {
                let msg = format!(
                    "'env': {name} is set twice; the first is at {}",
                    Self::loc(src, *first)
                );
                self.err(src, key.pos, msg);
                continue;
            }
            seen.insert(name, key.pos);
            if value.is_null() {
                self.err(
                    src,
                    key.pos,
                    format!("'env': {name} has no value (write {name}: '' for an empty one)"),
                );
                continue;
            }
            let Some(raw) = value.as_scalar() else {
                self.err(
                    src,
                    value.pos,
                    format!(
                        "'env': the value of {name} must be text, not {}",
                        value.type_name()
                    ),
                );
                continue;
            };
            if let Some(v) = self.interpolate(src, value.pos, "env", raw) {
                out.insert(name.to_owned(), v);
            }
        }
        out
    }

    fn cross_checks(&mut self, main_file: &Path) {
        if self.pools.is_empty() && self.errors.is_empty() {
            self.errors.push(Diagnostic {
                location: Some(Self::whole_file(main_file)),
                message: "no pools are defined: add a pool file matching 'include' (default \
                          pools.d/*.yaml) or a 'pools:' mapping"
                    .into(),
            });
        }
        let mut taken: Vec<(&ListenAddr, &str, &Location)> = Vec::new();
        let mut found = Vec::new();
        for (pool, meta) in &self.pools {
            for (addr, loc) in pool.listen.iter().zip(&meta.listen) {
                if let Some((other, owner, at)) =
                    taken.iter().find(|(other, _, _)| conflicts(addr, other))
                {
                    let message = if addr == *other {
                        format!("'listen': {addr} is already used by pool '{owner}' ({at})")
                    } else {
                        format!(
                            "'listen': {addr} overlaps {other} of pool '{owner}' ({at}); a \
                             wildcard address takes its port on every address"
                        )
                    };
                    found.push(Diagnostic {
                        location: Some(loc.clone()),
                        message,
                    });
                }
                taken.push((addr, &pool.name, loc));
            }
        }
        self.errors.extend(found);
    }

    /// Run each distinct interpreter once; with [`CheckLevel::ImportApps`], import each
    /// clean pool's app.
    fn interpreters(&mut self, level: CheckLevel) {
        let mut probed: HashMap<PathBuf, Result<Option<PathBuf>, String>> = HashMap::new();
        let mut found = Vec::new();
        for (pool, meta) in &mut self.pools {
            if pool.python.as_os_str().is_empty() {
                continue;
            }
            let verdict = probed
                .entry(pool.python.clone())
                .or_insert_with(|| {
                    python::probe(&pool.python)
                        .and_then(|i| i.check().map(|()| i.real_executable()))
                })
                .clone();
            match &verdict {
                // Workers run the interpreter itself, not a launcher in front of it (a
                // pyenv shim needs bash on PATH and may not be executable by the pool's
                // user); a virtualenv's bin/python is kept as is, since that path is what
                // makes it the virtualenv.
                Ok(Some(real))
                    if meta
                        .python_from
                        .as_ref()
                        .is_none_or(|(d, _)| *d != "virtualenv") =>
                {
                    pool.python = real.clone();
                }
                _ => {}
            }
            if let Err(e) = verdict {
                let (location, message) = match &meta.python_from {
                    Some((directive, loc)) => (
                        loc.clone(),
                        format!("'{directive}': {} {e}", pool.python.display()),
                    ),
                    None => (
                        pool.location.clone(),
                        format!("pool '{}': {} {e}", pool.name, pool.python.display()),
                    ),
                };
                found.push(Diagnostic {
                    location: Some(location),
                    message,
                });
                continue;
            }
            if level >= CheckLevel::ImportApps && meta.clean {
                if let Err(f) = python::import_app(pool) {
                    let mut message = format!(
                        "'app': cannot import '{}' in pool '{}': {}",
                        pool.app, pool.name, f.summary
                    );
                    for line in &f.traceback {
                        message.push_str("\n    ");
                        message.push_str(line);
                    }
                    found.push(Diagnostic {
                        location: Some(meta.app.clone()),
                        message,
                    });
                }
            }
        }
        self.errors.extend(found);
    }

    fn finish(mut self, main_file: &Path, global: GlobalConfig) -> Result<Config, ConfigErrors> {
        let order: HashMap<PathBuf, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), i))
            .rev()
            .collect();
        let key = |d: &Diagnostic| match &d.location {
            Some(l) => (
                order.get(&l.file).copied().unwrap_or(usize::MAX),
                l.line,
                l.column,
            ),
            None => (usize::MAX, 0, 0),
        };
        self.errors.sort_by_key(key);
        self.warnings.sort_by_key(key);
        if !self.errors.is_empty() {
            return Err(ConfigErrors(self.errors));
        }
        Ok(Config {
            main_file: main_file.to_path_buf(),
            files: self.files,
            global,
            pools: self.pools.into_iter().map(|(p, _)| p).collect(),
            warnings: self.warnings,
        })
    }
}

/// Largest config file read: far above any real one, and a wrong `-c` (a log file,
/// `/dev/zero`) fails fast instead of filling memory.
const MAX_FILE_SIZE: u64 = 1 << 20;

fn read_limited(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err("the file is larger than 1 MiB; is it really a pyfpm config file?".into());
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// "a boolean", "an integer".
fn with_article(noun: &str) -> String {
    let article = if noun.starts_with(['a', 'e', 'i', 'o']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {noun}")
}

fn default_text(name: &str) -> &'static str {
    match directives::lookup_any(name).map(|d| d.default) {
        Some(DefaultValue::Value(v)) => v,
        _ => panic!("directive {name} has no default value in the table"),
    }
}

fn default_global() -> GlobalConfig {
    GlobalConfig {
        pid: None,
        error_log: None,
        log_level: parse_log_level(default_text("log_level")).expect("table default"),
        daemonize: values::parse_bool(default_text("daemonize")).expect("table default"),
        process_control_timeout: values::parse_duration(default_text("process_control_timeout"))
            .expect("table default"),
        worker_module: None,
        emergency_restart_threshold: 0,
        emergency_restart_interval: std::time::Duration::ZERO,
        process_max: 0,
        systemd_interval: values::parse_duration(default_text("systemd_interval"))
            .expect("table default"),
    }
}

fn unknown_key_message(scope: Scope, name: &str, pool: Option<&str>) -> String {
    let other = match scope {
        Scope::Global => Scope::Pool,
        Scope::Pool => Scope::Global,
    };
    if directives::lookup(other, name).is_some() {
        return match scope {
            Scope::Global => format!(
                "'{name}' is a pool directive; put it in a pool (under 'pools:' or in a pool file)"
            ),
            Scope::Pool => format!(
                "'{name}' is a global directive; set it in the main file, not in pool '{}'",
                pool.unwrap_or_default()
            ),
        };
    }
    let what = match pool {
        Some(p) => format!("unknown directive '{name}' in pool '{p}'"),
        None => format!("unknown global directive '{name}'"),
    };
    if let Some(var) = name.strip_prefix("env[").and_then(|r| r.strip_suffix(']')) {
        return format!("{what}; write env as a mapping: 'env: {{{var}: value}}'");
    }
    match directives::suggest(scope, name) {
        Some(s) => format!("{what}; did you mean '{s}'?"),
        None => what,
    }
}

fn parse_log_level(s: &str) -> Result<LogLevel, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "alert" => Ok(LogLevel::Alert),
        "error" => Ok(LogLevel::Error),
        "warning" | "warn" => Ok(LogLevel::Warning),
        "notice" => Ok(LogLevel::Notice),
        "debug" => Ok(LogLevel::Debug),
        _ => Err(format!(
            "unknown level '{s}' (use alert, error, warning, notice or debug)"
        )),
    }
}

fn parse_pm(s: &str) -> Result<&'static str, String> {
    match s.trim() {
        "static" => Ok("static"),
        "dynamic" => Ok("dynamic"),
        "ondemand" => Ok("ondemand"),
        _ => Err(format!(
            "invalid process manager '{s}' (static, dynamic or ondemand)"
        )),
    }
}

fn check_user(s: &str) -> Result<String, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return Ok(s.to_owned());
    }
    match nix::unistd::User::from_name(s) {
        Ok(None) => Err(format!("no such user '{s}'")),
        _ => Ok(s.to_owned()),
    }
}

fn check_group(s: &str) -> Result<String, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return Ok(s.to_owned());
    }
    match nix::unistd::Group::from_name(s) {
        Ok(None) => Err(format!("no such group '{s}'")),
        _ => Ok(s.to_owned()),
    }
}

/// Whether binding `a` would fail because `b` is bound (Linux semantics: `[::]` is
/// dual-stack, a wildcard address takes the port on every address of its family).
fn conflicts(a: &ListenAddr, b: &ListenAddr) -> bool {
    match (a, b) {
        (ListenAddr::Unix(x), ListenAddr::Unix(y)) => x == y,
        (ListenAddr::Tcp(x), ListenAddr::Tcp(y)) => {
            if x.port() != y.port() {
                return false;
            }
            let (xi, yi) = (x.ip(), y.ip());
            let v6_any = |ip: IpAddr| matches!(ip, IpAddr::V6(v) if v.is_unspecified());
            let v4_any = |ip: IpAddr| matches!(ip, IpAddr::V4(v) if v.is_unspecified());
            xi == yi
                || v6_any(xi)
                || v6_any(yi)
                || (v4_any(xi) && yi.is_ipv4())
                || (v4_any(yi) && xi.is_ipv4())
        }
        _ => false,
    }
}
