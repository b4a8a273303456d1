//! Optional bubblewrap isolation for run steps.
//!
//! Owns discovering `bwrap` and building its argument vector. Kept apart so
//! the isolation policy (what is visible, what is writable, no network) can
//! be read and reviewed in one place. It must not spawn anything itself and
//! must never degrade to running unsandboxed: callers check
//! `bwrap_available()` and fail the attempt instead.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Used when the host has no usable PATH, so behaviour does not depend on how
/// the orchestrator itself was launched.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// True if a `bwrap` executable is on the host PATH.
pub fn bwrap_available() -> bool {
    find_bwrap().is_some()
}

pub(crate) fn find_bwrap() -> Option<PathBuf> {
    find_in_path("bwrap")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Arguments for `bwrap` (without the program itself) that run `inner` with
/// the host filesystem read-only, a private /tmp, no network, no
/// capabilities, its own PID namespace and only `workspace` writable.
pub(crate) fn bwrap_args(workspace: &Path, cwd: &Path, inner: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        // Every namespace, including network: sandboxed steps are offline.
        "--unshare-all",
        // If we die (or kill bwrap), everything inside dies with it; with the
        // PID namespace this also catches processes that setsid to escape our
        // process group.
        "--die-with-parent",
        // A new session stops sandboxed code from injecting input into a
        // controlling terminal via TIOCSTI.
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/",
        "/",
        "--tmpfs",
        "/tmp",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    // The workspace bind comes after --tmpfs /tmp so a workspace below /tmp
    // is still visible.
    args.push("--bind".into());
    args.push(workspace.into());
    args.push(workspace.into());
    args.push("--chdir".into());
    args.push(cwd.into());
    args.push("--".into());
    args.extend(inner.iter().map(OsString::from));
    args
}
