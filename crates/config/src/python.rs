//! Checks that run a pool's interpreter: what it is (version, implementation,
//! free-threading) and, for `-tt`, whether the pool's app imports.
//!
//! Both run a short-lived child process with a deadline and read its output; neither
//! writes anything (the import check sets PYTHONDONTWRITEBYTECODE so no `__pycache__`
//! appears).

use crate::PoolConfig;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long an interpreter may take to describe itself.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long importing an app may take (large apps import slowly).
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Oldest supported CPython.
pub const MIN_VERSION: (u32, u32) = (3, 9);

/// Prints what the interpreter is. Runs with `-E -s -S`, so only the standard library is
/// involved; written to run (and report) on Python 2 as well.
const PROBE: &str = "\
import sys, json, sysconfig
impl = getattr(sys, 'implementation', None)
print(json.dumps({
    'version': list(sys.version_info[:3]),
    'implementation': impl.name if impl else 'python2',
    'gil_disabled': bool(sysconfig.get_config_var('Py_GIL_DISABLED')),
    'executable': sys.executable,
}))
";

/// Imports `sys.argv[2]` (`module:callable`) after putting the JSON list `sys.argv[1]`
/// first on sys.path, as the worker does. Exit 4: import failed (traceback on stderr);
/// exit 5: not callable (type name on stderr).
const IMPORT: &str = "\
import sys, json, importlib, traceback
sys.path[0:0] = json.loads(sys.argv[1])
module, _, attr = sys.argv[2].partition(':')
try:
    obj = importlib.import_module(module)
    for part in attr.split('.'):
        obj = getattr(obj, part)
except BaseException as e:
    # Only the app's frames: not this script's, not importlib's.
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith('<') and f.filename != importlib.__file__]
    sys.stderr.write('Traceback (most recent call last):\\n')
    sys.stderr.write(''.join(traceback.format_list(frames)))
    sys.stderr.write(''.join(traceback.format_exception_only(type(e), e)))
    sys.exit(4)
if not callable(obj):
    sys.stderr.write(type(obj).__name__)
    sys.exit(5)
";

/// What an interpreter said about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Interpreter {
    /// `sys.version_info[:3]`.
    pub version: Vec<u32>,
    /// `sys.implementation.name`.
    pub implementation: String,
    /// Built with `Py_GIL_DISABLED` (free-threaded).
    pub gil_disabled: bool,
    /// `sys.executable`.
    pub executable: String,
}

impl Interpreter {
    fn version_text(&self) -> String {
        self.version
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The interpreter binary itself (`sys.executable`), or `None` when it did not say.
    pub fn real_executable(&self) -> Option<PathBuf> {
        let path = PathBuf::from(&self.executable);
        (path.is_absolute() && path.is_file()).then_some(path)
    }

    /// `Err(reason)` unless this is a supported CPython.
    pub fn check(&self) -> Result<(), String> {
        let name = match self.implementation.as_str() {
            "cpython" => "CPython".to_owned(),
            "pypy" => "PyPy".to_owned(),
            other => other.to_owned(),
        };
        let major_minor = (
            self.version.first().copied().unwrap_or(0),
            self.version.get(1).copied().unwrap_or(0),
        );
        if self.implementation != "cpython" || major_minor < MIN_VERSION {
            return Err(format!(
                "is {name} {}; pyfpm needs CPython {}.{} or newer",
                self.version_text(),
                MIN_VERSION.0,
                MIN_VERSION.1
            ));
        }
        if self.gil_disabled {
            return Err(format!(
                "is a free-threaded build of CPython {}, which pyfpm does not support yet; \
                 use the regular build (python3.X rather than python3.Xt)",
                self.version_text()
            ));
        }
        Ok(())
    }
}

/// Run `python -E -s -S -c PROBE` and parse its answer.
pub fn probe(python: &Path) -> Result<Interpreter, String> {
    let mut cmd = Command::new(python);
    cmd.args(["-E", "-s", "-S", "-c", PROBE]);
    let out = run(cmd, PROBE_TIMEOUT)?;
    if !out.success {
        return Err(format!(
            "is not a working Python interpreter ({}{})",
            out.status,
            first_line(&out.stderr)
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ));
    }
    serde_json::from_str(out.stdout.trim()).map_err(|_| {
        format!(
            "is not a working Python interpreter (unexpected answer: {:?})",
            out.stdout.trim().chars().take(80).collect::<String>()
        )
    })
}

/// Why an app did not import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportFailure {
    /// One line: what went wrong.
    pub summary: String,
    /// The traceback, one entry per line, when there is one.
    pub traceback: Vec<String>,
}

/// Import the pool's app in a throwaway interpreter set up like a worker: the pool's
/// working directory, environment (cleared first when `clear_env`), virtualenv and
/// python_path.
pub fn import_app(pool: &PoolConfig) -> Result<(), ImportFailure> {
    let mut cmd = Command::new(&pool.python);
    let paths: Vec<String> = pool
        .python_path
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    cmd.arg("-c")
        .arg(IMPORT)
        .arg(serde_json::to_string(&paths).unwrap_or_else(|_| "[]".into()))
        .arg(&pool.app);
    if pool.clear_env {
        cmd.env_clear();
    }
    if let Some(venv) = &pool.virtualenv {
        let bin = venv.join("bin");
        let path = match std::env::var_os("PATH").filter(|_| !pool.clear_env) {
            Some(p) => format!("{}:{}", bin.display(), p.to_string_lossy()),
            None => format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
        };
        cmd.env("VIRTUAL_ENV", venv).env("PATH", path);
    }
    cmd.envs(&pool.env);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    if let Some(dir) = &pool.chdir {
        cmd.current_dir(dir);
    }
    let out = run(cmd, IMPORT_TIMEOUT).map_err(|summary| ImportFailure {
        summary,
        traceback: Vec::new(),
    })?;
    if out.success {
        return Ok(());
    }
    let lines: Vec<String> = out.stderr.lines().map(str::to_owned).collect();
    match out.code {
        Some(4) => Err(ImportFailure {
            summary: lines
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .cloned()
                .unwrap_or_else(|| "import failed".into()),
            traceback: lines,
        }),
        Some(5) => Err(ImportFailure {
            summary: format!("it is a {}, not a callable", out.stderr.trim()),
            traceback: Vec::new(),
        }),
        _ => Err(ImportFailure {
            summary: format!("the interpreter failed ({})", out.status),
            traceback: lines,
        }),
    }
}

fn first_line(s: &str) -> Option<&str> {
    s.lines().map(str::trim).find(|l| !l.is_empty())
}

struct Output {
    success: bool,
    code: Option<i32>,
    status: String,
    stdout: String,
    stderr: String,
}

/// Run `cmd` with no stdin, capturing output, killing it at `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot be run: {e}"))?;
    // Read both pipes on threads so a chatty child cannot block on a full pipe while we
    // wait for it to exit.
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(1 << 20).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {timeout:?}"));
            }
            Err(e) => return Err(format!("cannot be waited for: {e}")),
        }
    };
    let mut texts = readers.into_iter().map(|h| h.join().unwrap_or_default());
    let stdout = texts.next().unwrap_or_default();
    let stderr = texts.next().unwrap_or_default();
    Ok(Output {
        success: status.success(),
        code: status.code(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp(version: &[u32], implementation: &str, gil_disabled: bool) -> Interpreter {
        Interpreter {
            version: version.to_vec(),
            implementation: implementation.into(),
            gil_disabled,
            executable: "/x".into(),
        }
    }

    #[test]
    fn supported_interpreters() {
        assert_eq!(interp(&[3, 9, 0], "cpython", false).check(), Ok(()));
        assert_eq!(interp(&[3, 13, 1], "cpython", false).check(), Ok(()));
        assert_eq!(
            interp(&[3, 8, 18], "cpython", false).check().unwrap_err(),
            "is CPython 3.8.18; pyfpm needs CPython 3.9 or newer"
        );
        assert_eq!(
            interp(&[2, 7, 18], "python2", false).check().unwrap_err(),
            "is python2 2.7.18; pyfpm needs CPython 3.9 or newer"
        );
        assert!(interp(&[3, 13, 0], "cpython", true).check().is_err());
    }

    #[test]
    fn a_child_past_its_deadline_is_killed() {
        let started = Instant::now();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        assert_eq!(
            run(cmd, Duration::from_millis(200)).err().as_deref(),
            Some("did not finish within 200ms")
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn output_and_status_are_captured() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run(cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("out\n", "err\n")
        );
        assert_eq!((out.success, out.code), (false, Some(3)));
        assert_eq!(
            run(Command::new("/nonexistent/python"), Duration::from_secs(1))
                .err()
                .as_deref(),
            Some("cannot be run: No such file or directory (os error 2)")
        );
    }
}
