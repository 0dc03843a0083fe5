//! `pyfpm -t` / `-tt` as a user runs them: the real binary on the configurations in
//! `tests/fixtures/config/`, run from the repository root so the reported paths are the
//! ones given with `-c`. Needs the worker module beside the binary (`cargo build
//! --workspace`), as `-t` checks that it can be found.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = "tests/fixtures/config";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pyfpm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pyfpm"))
        .args(args)
        .current_dir(repo())
        .env_remove("PYFPM_TEST_UNSET_TOKEN")
        .env_remove("FIXTURE_SOCK_DIR")
        .output()
        .expect("run pyfpm")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Files the good fixture names but `-t` must never create.
fn side_effect_files() -> Vec<PathBuf> {
    let good = repo().join(FIXTURES).join("good");
    [
        "pools.d/www.sock",
        "pools.d/api.sock",
        "pyfpm.pid",
        "pyfpm.log",
    ]
    .iter()
    .map(|f| good.join(f))
    .collect()
}

#[test]
fn good_config_passes_and_creates_nothing() {
    for flag in ["-t", "-tt", "--test-config"] {
        let out = pyfpm(&[flag, "-c", "tests/fixtures/config/good/pyfpm.yaml"]);
        assert_eq!(
            stderr_lines(&out),
            [
                "pyfpm: configuration file tests/fixtures/config/good/pyfpm.yaml test is successful (2 pools)"
            ],
            "{flag}"
        );
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(out.stdout.is_empty());
        for f in side_effect_files() {
            assert!(!f.exists(), "{flag} created {}", f.display());
        }
    }
}

#[test]
fn every_mistake_is_reported_with_its_position() {
    let out = pyfpm(&["-t", "-c", "tests/fixtures/config/bad/pyfpm.yaml"]);
    let b = "tests/fixtures/config/bad";
    let expected = [
        format!(
            "{b}/pyfpm.yaml:2:12: 'daemonize': invalid boolean 'maybe' (use true/false, yes/no, on/off or 1/0)"
        ),
        format!(
            "{b}/pyfpm.yaml:3:1: unknown global directive 'log-level'; did you mean 'log_level'?"
        ),
        format!(
            "{b}/pyfpm.yaml:4:26: 'process_control_timeout': invalid duration '10 parsecs' (use a whole number with ms, s, m, h or d, e.g. 30s)"
        ),
        format!(
            "{b}/pyfpm.yaml:5:27: 'include': directory {b}/nowhere does not exist (pattern 'nowhere/*.yaml')"
        ),
        format!("{b}/pools.d/a.yaml:1:1: pool 'www' has no 'pm.max_children' (integer required)"),
        format!(
            "{b}/pools.d/a.yaml:2:12: 'listen': 'localhost' is not an IP address; host names are not accepted, write an IP address such as 127.0.0.1:9000"
        ),
        format!(
            "{b}/pools.d/a.yaml:3:7: 'pm': invalid process manager 'dynamik' (static, dynamic or ondemand)"
        ),
        format!(
            "{b}/pools.d/a.yaml:4:3: unknown directive 'pm.max_chidren' in pool 'www'; did you mean 'pm.max_children'?"
        ),
        format!(
            "{b}/pools.d/a.yaml:5:16: 'listen.mode': invalid mode '0999' (use octal digits, e.g. 0660)"
        ),
        format!(
            "{b}/pools.d/a.yaml:6:23: 'request_params_max': invalid size '10Q' (use a whole number with an optional K, M or G, e.g. 1M)"
        ),
        format!(
            "{b}/pools.d/a.yaml:7:8: 'app': 'app' is not module:callable (e.g. myproject.wsgi:application)"
        ),
        format!(
            "{b}/pools.d/a.yaml:8:14: 'python_path' is a directive, but here the keys are pool names; indent it under a pool name such as 'www:'"
        ),
        format!(
            "{b}/pools.d/b.yaml:2:11: 'listen': 127.0.0.1:9000 is already used by pool 'www' ({b}/pools.d/a.yaml:2:28)"
        ),
        format!(
            "{b}/pools.d/b.yaml:6:16: 'env': environment variable 'PYFPM_TEST_UNSET_TOKEN' is not set (give a default with '${{PYFPM_TEST_UNSET_TOKEN:-value}}')"
        ),
        format!("{b}/pools.d/b.yaml:7:1: pool 'www' is already defined at {b}/pools.d/a.yaml:1:1"),
        format!("{b}/pools.d/c.yaml:3:6: YAML syntax error: illegal placement of ':' indicator"),
        format!("pyfpm: configuration file {b}/pyfpm.yaml test failed: 16 errors"),
    ];
    assert_eq!(stderr_lines(&out), expected);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn missing_main_file() {
    let out = pyfpm(&["-t", "-c", "tests/fixtures/config/nonexistent.yaml"]);
    assert_eq!(
        stderr_lines(&out),
        [
            "tests/fixtures/config/nonexistent.yaml: cannot read the file: No such file or directory (os error 2)",
            "pyfpm: configuration file tests/fixtures/config/nonexistent.yaml test failed: 1 error",
        ]
    );
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn tt_imports_the_app_and_shows_the_traceback() {
    let main = "tests/fixtures/config/badapp/pyfpm.yaml";
    let out = pyfpm(&["-t", "-c", main]);
    assert_eq!(out.status.code(), Some(0), "{:?}", stderr_lines(&out));

    let out = pyfpm(&["-tt", "-c", main]);
    let lines = stderr_lines(&out);
    let app = repo().join("tests/fixtures/config/apps/badimport.py");
    assert_eq!(
        lines[0],
        "tests/fixtures/config/badapp/pools.d/www.yaml:4:8: 'app': cannot import \
         'badimport:application' in pool 'www': ConnectionError: cannot reach the database at db:5432"
    );
    assert_eq!(lines[1], "    Traceback (most recent call last):");
    // Only the app's frames, innermost last (carets under the code vary by Python version).
    let frames: Vec<&String> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("File "))
        .collect();
    assert_eq!(
        frames,
        [
            &format!("      File \"{}\", line 10, in <module>", app.display()),
            &format!("      File \"{}\", line 7, in connect", app.display()),
        ]
    );
    assert!(lines.contains(
        &"        raise ConnectionError(\"cannot reach the database at db:5432\")".to_owned()
    ));
    assert_eq!(
        lines[lines.len() - 2..],
        [
            "    ConnectionError: cannot reach the database at db:5432".to_owned(),
            "pyfpm: configuration file tests/fixtures/config/badapp/pyfpm.yaml test failed: 1 error".to_owned(),
        ]
    );
    assert_eq!(out.status.code(), Some(78));
    let pycache = repo().join("tests/fixtures/config/apps/__pycache__");
    assert!(!pycache.exists(), "-tt wrote {}", pycache.display());
}

#[test]
fn an_interpreter_older_than_3_9_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let python = dir.path().join("python3.8");
    std::fs::write(
        &python,
        "#!/bin/sh\necho '{\"version\": [3, 8, 18], \"implementation\": \"cpython\", \
         \"gil_disabled\": false, \"executable\": \"/usr/bin/python3.8\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let main = dir.path().join("pyfpm.yaml");
    std::fs::write(
        &main,
        "include: []\npools:\n  legacy:\n    listen: 127.0.0.1:9020\n    pm.max_children: 1\n    \
         app: legacy:app\n    python: ./python3.8\n",
    )
    .unwrap();
    let out = pyfpm(&["-t", "-c", main.to_str().unwrap()]);
    assert_eq!(
        stderr_lines(&out),
        [
            format!(
                "{}:7:13: 'python': {} is CPython 3.8.18; pyfpm needs CPython 3.9 or newer",
                main.display(),
                python.display()
            ),
            format!(
                "pyfpm: configuration file {} test failed: 1 error",
                main.display()
            ),
        ]
    );
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn warnings_do_not_fail_the_test() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let main = dir.path().join("pyfpm.yaml");
    std::fs::write(
        &main,
        "include: empty/*.yaml\npools:\n  www:\n    listen: 127.0.0.1:9021\n    pm.max_children: 1\n    \
         app: good:application\n",
    )
    .unwrap();
    let out = pyfpm(&["-t", "-c", main.to_str().unwrap()]);
    assert_eq!(
        stderr_lines(&out),
        [
            format!(
                "{}:1:10: warning: 'include': 'empty/*.yaml' matches no file",
                main.display()
            ),
            format!(
                "pyfpm: configuration file {} test is successful (1 pool)",
                main.display()
            ),
        ]
    );
    assert_eq!(out.status.code(), Some(0));
}
