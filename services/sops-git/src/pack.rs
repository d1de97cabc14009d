//! Keeps a repository's object store small: loose objects (one file each,
//! a whole filesystem block for a few hundred bytes) go into packs, where
//! libgit2 stores each new tree as a delta of the previous one, and packs
//! are merged before there are so many that every lookup scans them all.
//!
//! Safe while the repository is used: a loose object is removed only after
//! the pack holding it is complete (pack first, index last, so a reader sees
//! either the loose copy or the pack), and libgit2 looks again at the packs
//! of an object it cannot find. Removing merged packs is the one step a
//! reader could trip over; [`crate::store::GitStore`] does it with readers
//! and the writer held, and reopens its handles after.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use git2::{Oid, Repository};

/// Loose objects beyond which they are packed.
pub const LOOSE_LIMIT: usize = 64;

/// Packs beyond which the smaller ones are merged.
pub const PACK_LIMIT: usize = 8;

/// Every loose object of the repository at `git_dir`, with its file.
pub fn loose_objects(git_dir: &Path) -> io::Result<Vec<(Oid, PathBuf)>> {
    let mut out = Vec::new();
    for fan in fs::read_dir(git_dir.join("objects"))? {
        let fan = fan?;
        let prefix = fan.file_name();
        let Some(prefix) = prefix.to_str().filter(|p| is_hex(p, 2)) else {
            continue;
        };
        for file in fs::read_dir(fan.path())? {
            let file = file?;
            let name = file.file_name();
            let Some(rest) = name.to_str().filter(|n| is_hex(n, 38)) else {
                continue;
            };
            if let Ok(oid) = Oid::from_str(&format!("{prefix}{rest}")) {
                out.push((oid, file.path()));
            }
        }
    }
    Ok(out)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The packs of the repository (their `.pack` files) with their sizes,
/// largest first.
pub fn packs(git_dir: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let dir = git_dir.join("objects").join("pack");
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        // A pack counts once its index is there: that is when libgit2 uses it.
        if path.extension().is_some_and(|e| e == "pack") && path.with_extension("idx").is_file() {
            out.push((path.clone(), fs::metadata(&path)?.len()));
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Writes one pack of `objects` (all present in the repository) into its
/// pack directory. Deltas are searched among them.
pub fn write_pack(repo: &Repository, objects: &[Oid]) -> Result<(), git2::Error> {
    let mut pb = repo.packbuilder()?;
    // One thread: this runs beside the requests on a small pod.
    pb.set_threads(1);
    for oid in objects {
        pb.insert_object(*oid, None)?;
    }
    pb.write(&repo.path().join("objects").join("pack"), 0o444)
}

/// Packs every loose object and removes the loose copies; how many.
pub fn pack_loose(git_dir: &Path) -> Result<usize, PackError> {
    let loose = loose_objects(git_dir)?;
    if loose.is_empty() {
        return Ok(0);
    }
    let repo = Repository::open_bare(git_dir)?;
    let ids: Vec<Oid> = loose.iter().map(|(id, _)| *id).collect();
    write_pack(&repo, &ids)?;
    for (_, path) in &loose {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(loose.len())
}

/// Removes the loose objects of `git_dir` that the repository at `other`
/// holds (the clone's copies of what was pushed to a remote it borrows
/// from); how many.
pub fn drop_held_by(git_dir: &Path, other: &Path) -> Result<usize, PackError> {
    let loose = loose_objects(git_dir)?;
    if loose.is_empty() {
        return Ok(0);
    }
    let repo = Repository::open_bare(other)?;
    let odb = repo.odb()?;
    let mut dropped = 0;
    for (id, path) in loose {
        if odb.exists(id) {
            match fs::remove_file(&path) {
                Ok(()) => dropped += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(dropped)
}

/// Which packs to merge so that at most [`PACK_LIMIT`] remain and sizes
/// stay geometric (each kept pack more than twice all smaller ones
/// together), so an object is rewritten O(log n) times over its life.
pub fn packs_to_merge(packs: &[(PathBuf, u64)]) -> Vec<PathBuf> {
    if packs.len() <= PACK_LIMIT {
        return Vec::new();
    }
    let mut keep = 0;
    while keep < packs.len() {
        let rest: u64 = packs[keep + 1..].iter().map(|p| p.1).sum();
        if packs[keep].1 > 2 * rest {
            keep += 1;
        } else {
            break;
        }
    }
    let keep = keep.min(PACK_LIMIT - 1);
    packs[keep..].iter().map(|p| p.0.clone()).collect()
}

/// The object ids a pack index lists (format version 2).
pub fn pack_objects(idx: &Path) -> Result<Vec<Oid>, PackError> {
    let raw = fs::read(idx)?;
    let bad = || PackError::Format(idx.display().to_string());
    if raw.get(0..8) != Some(&[0xff, b't', b'O', b'c', 0, 0, 0, 2][..]) {
        return Err(bad());
    }
    let count = raw
        .get(8 + 255 * 4..8 + 256 * 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(bad)? as usize;
    let start = 8 + 256 * 4;
    let ids = raw.get(start..start + count * 20).ok_or_else(bad)?;
    ids.chunks_exact(20)
        .map(|c| Oid::from_bytes(c).map_err(PackError::Git))
        .collect()
}

/// Writes one pack holding every object of `merge`; removing those is the
/// caller's (see the module docs).
pub fn merge_packs(git_dir: &Path, merge: &[PathBuf]) -> Result<(), PackError> {
    let mut ids = Vec::new();
    for pack in merge {
        ids.extend(pack_objects(&pack.with_extension("idx"))?);
    }
    ids.sort_unstable();
    ids.dedup();
    let repo = Repository::open_bare(git_dir)?;
    write_pack(&repo, &ids)?;
    Ok(())
}

/// Removes a merged pack (index first, so no reader starts using it).
pub fn remove_pack(pack: &Path) -> io::Result<()> {
    for ext in ["idx", "pack", "rev", "keep"] {
        match fs::remove_file(pack.with_extension(ext)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("unreadable pack index {0}")]
    Format(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_with_loose(dir: &Path, n: usize) -> Repository {
        let repo = Repository::init_bare(dir).expect("init");
        for i in 0..n {
            repo.blob(format!("object {i}").as_bytes()).expect("blob");
        }
        repo
    }

    #[test]
    fn packing_keeps_every_object_and_leaves_none_loose() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = repo_with_loose(dir.path(), 40);
        let ids: Vec<Oid> = loose_objects(dir.path())
            .expect("loose")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids.len(), 40);
        assert_eq!(pack_loose(dir.path()).expect("pack"), 40);
        assert!(loose_objects(dir.path()).expect("loose").is_empty());
        let fresh = Repository::open_bare(dir.path()).expect("open");
        for id in &ids {
            assert!(fresh.find_blob(*id).is_ok(), "{id} lost");
        }
        // The long-lived handle finds them too: libgit2 rescans the packs
        // on a miss.
        assert!(repo.find_blob(ids[0]).is_ok());
        let packs = packs(dir.path()).expect("packs");
        assert_eq!(packs.len(), 1);
        let mut listed = pack_objects(&packs[0].0.with_extension("idx")).expect("idx");
        let mut want = ids.clone();
        listed.sort_unstable();
        want.sort_unstable();
        assert_eq!(listed, want);
    }

    #[test]
    fn merging_packs_keeps_every_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("init");
        let mut ids = Vec::new();
        for round in 0..PACK_LIMIT + 2 {
            for i in 0..5 {
                ids.push(repo.blob(format!("{round} {i}").as_bytes()).expect("blob"));
            }
            pack_loose(dir.path()).expect("pack");
        }
        let before = packs(dir.path()).expect("packs");
        assert_eq!(before.len(), PACK_LIMIT + 2);
        let merge = packs_to_merge(&before);
        assert!(merge.len() >= 3, "{merge:?}");
        merge_packs(dir.path(), &merge).expect("merge");
        for pack in &merge {
            remove_pack(pack).expect("remove");
        }
        assert!(packs(dir.path()).expect("packs").len() <= PACK_LIMIT);
        let fresh = Repository::open_bare(dir.path()).expect("open");
        for id in &ids {
            assert!(fresh.find_blob(*id).is_ok(), "{id} lost");
        }
    }

    #[test]
    fn merging_keeps_large_packs_and_merges_the_small_tail() {
        let p = |n: &str, s: u64| (PathBuf::from(n), s);
        let packs = [
            p("a", 10_000),
            p("b", 1000),
            p("c", 100),
            p("d", 40),
            p("e", 30),
            p("f", 20),
            p("g", 10),
            p("h", 10),
            p("i", 10),
        ];
        let merge = packs_to_merge(&packs);
        assert_eq!(
            merge,
            ["c", "d", "e", "f", "g", "h", "i"]
                .map(PathBuf::from)
                .to_vec()
        );
        assert!(packs_to_merge(&packs[..PACK_LIMIT]).is_empty());
    }
}
