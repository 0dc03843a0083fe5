//! Finding the worker-core extension module this manager was built with.
//!
//! The worker core is a cdylib (`libpyfpm_worker.so`) that each pool's interpreter loads
//! from an explicit path (see [`pyfpm_ipc::BOOTSTRAP`]), so nothing has to be installed
//! into a pool's virtualenv. Candidates, first match wins:
//!
//! 1. `--worker-module PATH` on the command line;
//! 2. the `PYFPM_WORKER_MODULE` environment variable;
//! 3. `worker_module:` in the main config file;
//! 4. beside the `pyfpm` executable: `libpyfpm_worker.so` (a cargo build: both land in
//!    `target/<profile>/`), `pyfpm_worker.abi3.so`;
//! 5. `../lib/pyfpm/pyfpm_worker.abi3.so` relative to the executable (an installed
//!    layout such as `/usr/bin/pyfpm` + `/usr/lib/pyfpm/`).
//!
//! Every build of the worker embeds [`pyfpm_ipc::BUILD_MARKER`]; a module whose marker
//! differs from the manager's is refused here with a clear message, before any worker
//! is started (the worker checks again on start-up).

use std::path::{Path, PathBuf};

/// Environment variable naming the worker module explicitly.
pub const ENV: &str = "PYFPM_WORKER_MODULE";

/// Why no usable worker module was found.
#[derive(Debug, thiserror::Error)]
pub enum WorkerModuleError {
    /// No candidate exists.
    #[error(
        "cannot find the pyfpm worker module (looked in: {}); build it with \
         `cargo build --workspace` (add --release for target/release), or name it with \
         --worker-module / {ENV}",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        /// Every path tried.
        searched: Vec<PathBuf>,
    },
    /// The file exists but cannot be read.
    #[error("cannot read the worker module {path}: {source}")]
    Unreadable {
        /// The module path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a pyfpm worker module, or is from another build.
    #[error(
        "the worker module {path} is from another pyfpm build ({found}; this manager is \
         {expected}); rebuild both with `cargo build --workspace`"
    )]
    Mismatch {
        /// The module path.
        path: PathBuf,
        /// What the module says it is.
        found: String,
        /// What this manager expects.
        expected: String,
    },
}

/// The candidate paths, in order, given the explicit choices (flag or env, then config).
pub fn candidates(explicit: Option<&Path>, configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os(ENV).filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    if let Some(p) = configured {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join("libpyfpm_worker.so"));
        out.push(dir.join("pyfpm_worker.abi3.so"));
        // `cargo test` runs test binaries from target/<profile>/deps/.
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(parent) = dir.parent() {
                out.push(parent.join("libpyfpm_worker.so"));
            }
        }
        out.push(dir.join("../lib/pyfpm/pyfpm_worker.abi3.so"));
    }
    out
}

/// Find the worker module and check that it comes from this build.
pub fn locate(
    explicit: Option<&Path>,
    configured: Option<&Path>,
) -> Result<PathBuf, WorkerModuleError> {
    let searched = candidates(explicit, configured);
    let path = searched
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| WorkerModuleError::NotFound {
            searched: searched.clone(),
        })?;
    let path = path.canonicalize().unwrap_or(path);
    verify(&path)?;
    Ok(path)
}

/// Check the build marker embedded in the module at `path`.
pub fn verify(path: &Path) -> Result<(), WorkerModuleError> {
    let bytes = std::fs::read(path).map_err(|source| WorkerModuleError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let expected = pyfpm_ipc::BUILD_MARKER;
    let found = find_marker(&bytes).unwrap_or_else(|| "no pyfpm build marker".to_string());
    if found == expected {
        Ok(())
    } else {
        Err(WorkerModuleError::Mismatch {
            path: path.to_path_buf(),
            found,
            expected: expected.to_string(),
        })
    }
}

/// The marker text embedded in a module image, if any.
fn find_marker(image: &[u8]) -> Option<String> {
    let prefix = pyfpm_ipc::BUILD_MARKER_PREFIX.as_bytes();
    let start = image.windows(prefix.len()).position(|w| w == prefix)?;
    let rest = &image[start..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_graphic())
        .unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_found_inside_an_image() {
        let mut image = vec![0u8, 1, 2, 3];
        image.extend_from_slice(pyfpm_ipc::BUILD_MARKER.as_bytes());
        image.extend_from_slice(&[0, 9, 9]);
        assert_eq!(
            find_marker(&image).as_deref(),
            Some(pyfpm_ipc::BUILD_MARKER)
        );
    }

    #[test]
    fn an_image_without_marker_has_none() {
        assert_eq!(find_marker(b"\x7fELF nothing here"), None);
    }
}
