//! The data directory is owned by one process: an exclusive lock taken at
//! start and held for the process lifetime, and the clean-up of what a
//! killed process leaves behind, which that ownership makes safe.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
};

use shared::{Error, Result};

/// The lock file inside the data directory.
pub const LOCK_FILE: &str = "sops-git-backend.lock";

/// The exclusive advisory lock (`flock`) on the data directory. The kernel
/// releases it when the process ends, however it ends (SIGKILL and the OOM
/// killer included), so a stale lock file never blocks a restart.
#[derive(Debug)]
pub struct DataDirLock {
    // Held only to keep the lock: closing the file would release it.
    _file: File,
}

impl DataDirLock {
    /// Takes the lock, or fails at once naming the directory when another
    /// process holds it. Blocking (file I/O only, never waits for the lock).
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        // No truncation before the lock is ours: the holder's pid is in it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                startup(format!(
                    "cannot open the lock file {} of APP_DATA_DIR: {e}",
                    path.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let pid = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(startup(format!(
                    "APP_DATA_DIR {} is in use by another sops-git-backend process{pid}: every process needs its own data directory; stop the other process or point APP_DATA_DIR elsewhere",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                // Without the lock, clearing stale git lock files at start
                // could break another process's write: refuse.
                return Err(startup(format!(
                    "cannot lock APP_DATA_DIR {}: {e} (it must be on a filesystem that supports file locks)",
                    dir.display()
                )));
            }
        }
        // The pid only helps the message of a second process; failing to
        // write it changes nothing about the lock.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(Self { _file: file })
    }
}

fn startup(message: String) -> Error {
    // Startup errors reach only the operator's terminal/log.
    Error::invalid_argument(message)
}

/// What [`clear_stale_git_files`] removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Lock files outside `objects/` (refs, packed-refs, HEAD, config,
    /// index, FETCH_HEAD, reflogs): the ones that make later writes fail.
    /// Cheap enough for every health probe.
    Locks,
    /// Also every lock and temporary file under `objects/` (half-written
    /// loose objects and packs): harmless but never cleaned by anyone
    /// else; one walk of the object store, done at start.
    All,
}

/// Removes what a git writer killed mid-operation leaves in the repository
/// at `repo_dir`: `*.lock` files (git never names a ref or file of its own
/// that way) and, with [`Sweep::All`], libgit2's and git's temporary object
/// and pack files. Returns what it removed.
///
/// Only safe where no other process may be writing: the caller holds the
/// data directory's [`DataDirLock`] and no writer of its own is running.
pub fn clear_stale_git_files(repo_dir: &Path, sweep: Sweep) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !repo_dir.is_dir() {
        return Ok(removed);
    }
    let mut stack = vec![(repo_dir.to_path_buf(), false)];
    while let Some((dir, in_objects)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // Removed by ourselves or never created: nothing to clean.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Never follows symlinks: only what lies inside the repository.
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                let objects = in_objects || (dir == repo_dir && name == "objects");
                if !objects || sweep == Sweep::All {
                    stack.push((path, objects));
                }
                continue;
            }
            let stale = name.ends_with(".lock")
                || (in_objects && (name.starts_with("tmp_") || name.contains("_git2_")));
            if stale && kind.is_file() {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(removed)
}

/// Writes and removes a small file in `dir`: a read-only or full
/// filesystem, or lost permissions, show here before a write trips on them.
pub fn check_writable(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!("probe-{}.tmp", std::process::id()));
    let result = std::fs::write(&path, b"probe\n");
    let removed = std::fs::remove_file(&path);
    result?;
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first");
        let err = DataDirLock::acquire(dir.path()).expect_err("second");
        assert!(
            err.message().contains(&dir.path().display().to_string()),
            "{}",
            err.message()
        );
        assert!(
            err.message()
                .contains(&format!("pid {}", std::process::id()))
        );
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again once released");
    }

    #[test]
    fn stale_lock_and_temporary_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path();
        let keep = [
            "HEAD",
            "config",
            "refs/heads/main",
            "refs/remotes/origin/main",
            "objects/ab/cdef",
            "objects/pack/pack-1.pack",
        ];
        let stale = [
            "HEAD.lock",
            "config.lock",
            "index.lock",
            "packed-refs.lock",
            "refs/heads/main.lock",
            "refs/remotes/origin/main.lock",
            "logs/refs/heads/main.lock",
            "objects/tmp_object_git2_a1b2",
            "objects/ab/tmp_obj_x",
            "objects/pack/pack_git2_0011",
            "objects/pack/tmp_pack_y",
        ];
        for f in keep.iter().chain(&stale) {
            let p = repo.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, b"x").expect("write");
        }
        let locks = clear_stale_git_files(repo, Sweep::Locks).expect("sweep");
        assert_eq!(locks.len(), 7, "{locks:?}");
        assert!(repo.join("objects/tmp_object_git2_a1b2").exists());
        let rest = clear_stale_git_files(repo, Sweep::All).expect("sweep");
        assert_eq!(rest.len(), 4, "{rest:?}");
        for f in stale {
            assert!(!repo.join(f).exists(), "{f} left");
        }
        for f in keep {
            assert!(repo.join(f).exists(), "{f} removed");
        }
    }

    #[test]
    fn a_missing_repository_has_nothing_to_clear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let none = clear_stale_git_files(&dir.path().join("absent"), Sweep::All).expect("sweep");
        assert!(none.is_empty());
    }
}
