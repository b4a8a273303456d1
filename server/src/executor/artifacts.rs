//! Collecting declared artifacts out of a finished workspace.
//!
//! Owns glob expansion, the copy out of the workspace and streaming SHA-256
//! hashing. Separate because it is pure filesystem work with its own safety
//! rules: it must never read outside the workspace (symlinks are resolved and
//! checked), never load a whole file into memory, and never run job code.
//! All functions here are blocking and are meant for `spawn_blocking`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::executor::CollectedArtifact;
use crate::executor::error::ExecError;

const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// Copies every declared artifact from `workspace` into `out_dir`, keeping
/// relative paths, and hashes them on the way.
pub(crate) fn collect(
    workspace: &Path,
    out_dir: &Path,
    declared: &[String],
) -> Result<Vec<CollectedArtifact>, ExecError> {
    let real_ws = workspace
        .canonicalize()
        .map_err(|source| ExecError::Workspace {
            path: workspace.to_path_buf(),
            source,
        })?;

    // name -> path relative to the workspace; a BTreeMap both dedupes
    // overlapping declarations and gives a stable order.
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for decl in declared {
        let pattern = normalise(decl)?;
        let matches = expand(workspace, &pattern);
        if matches.is_empty() {
            return Err(ExecError::ArtifactNotFound(decl.clone()));
        }
        let literal = !decl.contains('*');
        for rel in matches {
            let full = workspace.join(&rel);
            let real = checked_target(&real_ws, &full, decl)?;
            if real.is_dir() {
                walk(&real_ws, &full, &rel, &mut files)?;
            } else if literal {
                // A plainly declared file keeps the name it was declared with.
                files.insert(decl.clone(), rel);
            } else {
                files.insert(slash_path(&rel), rel);
            }
        }
    }

    if out_dir.exists() {
        // Only a crashed earlier run of this same attempt can have left this.
        fs::remove_dir_all(out_dir).map_err(|source| ExecError::Workspace {
            path: out_dir.to_path_buf(),
            source,
        })?;
    }
    files
        .into_iter()
        .map(|(name, rel)| {
            let dest = out_dir.join(&rel);
            let (size, sha256) = copy_and_hash(&workspace.join(&rel), &dest).map_err(|source| {
                ExecError::ArtifactIo {
                    name: name.clone(),
                    source,
                }
            })?;
            Ok(CollectedArtifact {
                name,
                path: dest,
                size,
                sha256,
            })
        })
        .collect()
}

/// The declared path as plain components, rejecting anything that could
/// address a file outside the workspace.
fn normalise(decl: &str) -> Result<Vec<String>, ExecError> {
    let mut parts = Vec::new();
    for component in Path::new(decl).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ExecError::InvalidSpec(format!(
                    "artifact path {decl:?} must be relative and stay inside the workspace"
                )));
            }
        }
    }
    if parts.is_empty() {
        return Err(ExecError::InvalidSpec(format!(
            "artifact path {decl:?} names the whole workspace"
        )));
    }
    Ok(parts)
}

/// Paths (relative to `workspace`) matching the components, where a component
/// may contain `*` wildcards. Like a shell, `*` does not match hidden names
/// unless the pattern itself starts with a dot.
fn expand(workspace: &Path, pattern: &[String]) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for part in pattern {
        let mut next = Vec::new();
        for base in &found {
            if part.contains('*') {
                let Ok(entries) = fs::read_dir(workspace.join(base)) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|name| !name.starts_with('.') || part.starts_with('.'))
                    .filter(|name| wildcard_match(part, name))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|name| base.join(name)));
            } else {
                let candidate = base.join(part);
                if fs::symlink_metadata(workspace.join(&candidate)).is_ok() {
                    next.push(candidate);
                }
            }
        }
        found = next;
    }
    found
}

/// `*`-only glob matching (any run of characters, including none).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ni = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Resolves symlinks and refuses targets outside the workspace, so a job
/// cannot exfiltrate host files by declaring a link to them.
fn checked_target(real_ws: &Path, full: &Path, decl: &str) -> Result<PathBuf, ExecError> {
    let real = full
        .canonicalize()
        .map_err(|source| ExecError::ArtifactIo {
            name: decl.to_owned(),
            source,
        })?;
    if !real.starts_with(real_ws) {
        return Err(ExecError::InvalidSpec(format!(
            "artifact {decl:?} resolves outside the workspace"
        )));
    }
    Ok(real)
}

/// Adds every regular file below `dir`. Symlinked files are followed when
/// they stay inside the workspace; symlinked directories are skipped, which
/// also rules out cycles.
fn walk(
    real_ws: &Path,
    dir: &Path,
    rel: &Path,
    files: &mut BTreeMap<String, PathBuf>,
) -> Result<(), ExecError> {
    let io_err = |source| ExecError::ArtifactIo {
        name: slash_path(rel),
        source,
    };
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err)?
        .collect::<Result<_, _>>()
        .map_err(io_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let child_rel = rel.join(entry.file_name());
        let file_type = entry.file_type().map_err(io_err)?;
        if file_type.is_dir() {
            walk(real_ws, &entry.path(), &child_rel, files)?;
        } else if file_type.is_file() {
            files.insert(slash_path(&child_rel), child_rel);
        } else if file_type.is_symlink() {
            let name = slash_path(&child_rel);
            let real = checked_target(real_ws, &entry.path(), &name)?;
            if real.is_file() {
                files.insert(name, child_rel);
            }
        }
    }
    Ok(())
}

fn slash_path(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Streams `src` to `dest` while hashing, so artifacts of any size use a
/// fixed amount of memory.
fn copy_and_hash(src: &Path, dest: &Path) -> io::Result<(u64, String)> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut input = File::open(src)?;
    let mut output = File::create(dest)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
        size += n as u64;
    }
    output.flush()?;
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.log", "build.log"));
        assert!(wildcard_match("a*b*c", "aXXbYc"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("*.log", "build.txt"));
        assert!(!wildcard_match("a*c", "ab"));
    }
}
