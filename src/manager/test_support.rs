//! Fixtures shared by the manager's unit tests.

use pyfpm_config::{ListenAddr, Location, PmMode, PoolConfig};

/// A static pool `name` of one worker on `listen`, running `app:application` with
/// `python3`, a 0660 socket mode, a backlog of 16 and a cleared environment; a test
/// overrides the fields it is about.
pub(crate) fn pool_config(name: &str, listen: Vec<ListenAddr>) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        location: Location {
            file: "t.yaml".into(),
            line: 1,
            column: 1,
        },
        listen,
        listen_owner: None,
        listen_group: None,
        listen_mode: 0o660,
        listen_backlog: 16,
        user: None,
        group: None,
        pm: PmMode::Static,
        max_children: 1,
        threads: 1,
        app: "app:application".into(),
        preload: false,
        python: "python3".into(),
        virtualenv: None,
        python_path: vec![],
        mount: String::new(),
        chdir: None,
        clear_env: true,
        env: Default::default(),
        request_params_max: 1 << 20,
        limits: Default::default(),
    }
}
