//! The real binary killed at any moment (SIGKILL as after a grace period or
//! from the OOM killer, or an abort at a chosen step of a write): what it
//! acknowledged survives, nothing deleted comes back, and a restart on the
//! same data directory serves again. Also: one process per data directory.

mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use shared::client::{Client, Connect, Timeouts};
use support::{
    bare_repo, free_port, git, git_daemon, spawn_backend_on, start_backend, start_backend_on,
};
use tonic::{Code, Status};

async fn client(url: &str) -> Client {
    Client::connect(
        &Connect::plain(url),
        Timeouts::both(Duration::from_secs(30)),
    )
    .await
    .expect("connect")
}

/// One call of the protocol, as a test writer issues it.
#[derive(Clone, Debug)]
enum Op {
    Create {
        id: String,
        value: Vec<u8>,
    },
    Update {
        id: String,
        rev: u32,
        value: Vec<u8>,
        owner: Option<String>,
    },
    DeleteRevision {
        id: String,
        rev: u32,
        owner: Option<String>,
    },
    Delete {
        id: String,
        owner: Option<String>,
    },
    Lock {
        id: String,
        owner: String,
    },
    Unlock {
        id: String,
    },
}

impl Op {
    async fn call(&self, c: &Client) -> Result<(), Status> {
        match self {
            Op::Create { id, value } => c
                .create(id, Some(value.clone().into()), None)
                .await
                .map(|_| ()),
            Op::Update {
                id,
                rev,
                value,
                owner,
            } => c
                .update(id, *rev, Some(value.clone().into()), None, owner.clone())
                .await
                .map(|_| ()),
            Op::DeleteRevision { id, rev, owner } => {
                c.delete_revision(id, *rev, None, owner.clone()).await
            }
            Op::Delete { id, owner } => c.delete(id, None, owner.clone()).await,
            Op::Lock { id, owner } => c.lock(id, owner, None).await,
            Op::Unlock { id } => c.unlock(id, None).await,
        }
    }

    /// A delete that took effect before its answer was lost is retried
    /// into NOT_FOUND (the backend keeps no record of deletes); every other
    /// call is answered as if it ran once (same bytes, same owner).
    fn retried_after_it_landed(&self) -> Result<(), Code> {
        match self {
            Op::Delete { .. } | Op::DeleteRevision { .. } => Err(Code::NotFound),
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Ti {
    revs: BTreeMap<u32, Vec<u8>>,
    lock: Option<String>,
}

/// What the acknowledged calls of one writer left (its ids are its own).
#[derive(Debug, Default)]
struct Model {
    live: BTreeMap<String, Ti>,
    gone_revisions: Vec<(String, u32)>,
    gone: Vec<String>,
    acknowledged: usize,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        self.acknowledged += 1;
        match op {
            Op::Create { id, value } => {
                let mut ti = Ti::default();
                ti.revs.insert(1, value.clone());
                self.live.insert(id.clone(), ti);
            }
            Op::Update { id, rev, value, .. } => {
                self.gone_revisions.retain(|g| g != &(id.clone(), *rev));
                if let Some(ti) = self.live.get_mut(id) {
                    ti.revs.insert(*rev, value.clone());
                }
            }
            Op::DeleteRevision { id, rev, .. } => {
                let emptied = self.live.get_mut(id).is_some_and(|ti| {
                    ti.revs.remove(rev);
                    ti.revs.is_empty()
                });
                self.gone_revisions.push((id.clone(), *rev));
                if emptied {
                    self.live.remove(id);
                    self.gone.push(id.clone());
                }
            }
            Op::Delete { id, .. } => {
                self.live.remove(id);
                self.gone.push(id.clone());
            }
            Op::Lock { id, owner } => {
                if let Some(ti) = self.live.get_mut(id) {
                    ti.lock = Some(owner.clone());
                }
            }
            Op::Unlock { id } => {
                if let Some(ti) = self.live.get_mut(id) {
                    ti.lock = None;
                }
            }
        }
    }

    /// Every acknowledged revision reads back byte for byte, with its lock;
    /// nothing deleted is readable.
    async fn verify(&self, c: &Client, why: &str) {
        for (id, ti) in &self.live {
            for (rev, value) in &ti.revs {
                let got = c
                    .get(id, *rev, None)
                    .await
                    .unwrap_or_else(|s| panic!("{why}: {id} revision {rev} lost: {s:?}"));
                assert_eq!(
                    got.as_deref(),
                    Some(&value[..]),
                    "{why}: {id} revision {rev}"
                );
            }
            let lock = c.locked_by(id, None).await.expect("locked_by");
            assert_eq!(lock, ti.lock, "{why}: lock of {id}");
        }
        for (id, rev) in &self.gone_revisions {
            let gone = c.get(id, *rev, None).await.expect_err("deleted revision");
            assert_eq!(
                gone.code(),
                Code::NotFound,
                "{why}: deleted revision {rev} of {id} came back"
            );
        }
        for id in &self.gone {
            let gone = c.locked_by(id, None).await.expect_err("deleted");
            assert_eq!(gone.code(), Code::NotFound, "{why}: deleted {id} came back");
        }
    }
}

fn owner_of(model: &Model, id: &str) -> Option<String> {
    model.live.get(id).and_then(|ti| ti.lock.clone())
}

/// Before a crash at each step: several TypeInstances, one locked, one to
/// delete.
fn setup_ops() -> Vec<Op> {
    let create = |id: &str, v: &str| Op::Create {
        id: id.into(),
        value: v.as_bytes().to_vec(),
    };
    vec![
        create("a", "a1"),
        Op::Update {
            id: "a".into(),
            rev: 2,
            value: b"a2".to_vec(),
            owner: None,
        },
        create("b", "b1"),
        create("gone", "g1"),
        create("c", "c1"),
        Op::Lock {
            id: "c".into(),
            owner: "alice".into(),
        },
    ]
}

/// Each interrupted by a crash, then retried.
fn crashing_ops() -> Vec<Op> {
    vec![
        Op::Create {
            id: "new".into(),
            value: b"\"n1\"".to_vec(),
        },
        Op::Update {
            id: "a".into(),
            rev: 3,
            value: vec![0xff, 0, b'a', b'3'],
            owner: None,
        },
        Op::DeleteRevision {
            id: "a".into(),
            rev: 1,
            owner: None,
        },
        Op::Delete {
            id: "gone".into(),
            owner: None,
        },
        Op::Lock {
            id: "b".into(),
            owner: "bob".into(),
        },
        Op::Unlock { id: "c".into() },
    ]
}

/// For every kind of write: start the backend armed to abort right after
/// `step`, issue the write (the process dies), restart it on the same data
/// directory, retry the same call, and check everything acknowledged.
async fn a_kill_after(step: &str, remote: Option<&str>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut env: Vec<(&str, &str)> = remote.map(|r| ("APP_GIT_REMOTE", r)).into_iter().collect();
    let plain = env.clone();
    env.push(("APP_SOPS_GIT_TEST_CRASH_AT", step));
    let landed = matches!(step, "push" | "tracking-ref");

    let mut model = Model::default();
    {
        let _backend = start_backend_on(port, &data, &plain).await;
        let c = client(&url).await;
        for op in setup_ops() {
            op.call(&c).await.expect("setup");
            model.apply(&op);
        }
    }
    for op in crashing_ops() {
        let mut crashing = start_backend_on(port, &data, &env).await;
        let c = client(&url).await;
        op.call(&c)
            .await
            .expect_err("the backend died during the call");
        let (code, log) = crashing.wait_exit(Duration::from_secs(10));
        assert_eq!(code, None, "not killed by a signal: {log}");
        assert!(
            log.contains(&format!("aborting after {step}")),
            "{op:?} did not reach {step}: {log}"
        );
        drop(crashing);

        let backend = start_backend_on(port, &data, &plain).await;
        let c = client(&url).await;
        let retried = op.call(&c).await.map_err(|s| s.code());
        let want = if landed {
            op.retried_after_it_landed()
        } else {
            Ok(())
        };
        assert_eq!(
            retried,
            want,
            "retry of {op:?} after a kill after {step}; log:\n{}",
            backend.logs()
        );
        model.apply(&op);
        model
            .verify(&c, &format!("after a kill after {step} during {op:?}"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the crash hook is in debug builds only"
)]
async fn a_kill_after_the_blobs_are_written_loses_nothing_after_restart() {
    a_kill_after("blob", None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the crash hook is in debug builds only"
)]
async fn a_kill_after_the_commit_loses_nothing_after_restart() {
    a_kill_after("commit", None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the crash hook is in debug builds only"
)]
async fn a_kill_after_the_objects_reach_the_local_remote_loses_nothing_after_restart() {
    a_kill_after("remote-objects", None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the crash hook is in debug builds only"
)]
async fn a_kill_after_the_push_loses_nothing_after_restart() {
    a_kill_after("push", None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the crash hook is in debug builds only"
)]
async fn a_kill_after_the_tracking_ref_update_loses_nothing_after_restart() {
    a_kill_after("tracking-ref", None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the crash hook is in debug builds only"
)]
async fn a_kill_after_the_push_to_git_daemon_loses_nothing_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_daemon, base) = git_daemon(dir.path()).await;
    let remote = format!("{base}/remote.git");
    a_kill_after("push", Some(&remote)).await;
}

/// The files a killed git writer leaves, as in the reported incident.
fn plant(repo: &Path, files: &[&str]) {
    for f in files {
        let path = repo.join(f);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"").expect("plant");
    }
}

const CLONE_LEFTOVERS: [&str; 7] = [
    "refs/remotes/origin/main.lock",
    "refs/heads/main.lock",
    "index.lock",
    "packed-refs.lock",
    "HEAD.lock",
    "config.lock",
    "objects/tmp_object_git2_0123456789abcdef",
];

/// Restart after a kill that left lock and temporary files everywhere a
/// git writer takes them: the backend serves, every acknowledged revision
/// reads back, and writes succeed.
async fn stale_locks_are_cleared_at_start(remote: Option<&str>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env: Vec<(&str, &str)> = remote.map(|r| ("APP_GIT_REMOTE", r)).into_iter().collect();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut model = Model::default();
    {
        let mut backend = start_backend_on(port, &data, &env).await;
        let c = client(&url).await;
        for op in setup_ops() {
            op.call(&c).await.expect("setup");
            model.apply(&op);
        }
        backend.process.stop();
    }
    plant(&data.join("clone.git"), &CLONE_LEFTOVERS);
    // The default remote is ours too (it lives in the data directory).
    let own_remote = data.join("remote.git");
    if remote.is_none() {
        plant(
            &own_remote,
            &["refs/heads/main.lock", "objects/tmp_object_git2_ff"],
        );
    }

    let backend = start_backend_on(port, &data, &env).await;
    let c = client(&url).await;
    model.verify(&c, "after the restart").await;
    for op in crashing_ops() {
        op.call(&c)
            .await
            .unwrap_or_else(|s| panic!("{op:?}: {s:?}\n{}", backend.logs()));
        model.apply(&op);
    }
    model.verify(&c, "after writes").await;
    for f in CLONE_LEFTOVERS {
        assert!(!data.join("clone.git").join(f).exists(), "{f} left");
    }
    if remote.is_none() {
        assert!(!own_remote.join("refs/heads/main.lock").exists());
        git(&own_remote, &["fsck", "--no-progress"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_git_lock_files_of_a_killed_backend_are_cleared_at_start() {
    stale_locks_are_cleared_at_start(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_git_lock_files_in_the_clone_of_a_git_daemon_remote_are_cleared_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_daemon, base) = git_daemon(dir.path()).await;
    stale_locks_are_cleared_at_start(Some(&format!("{base}/remote.git"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_backend_on_the_same_data_dir_stops_at_start_naming_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let first = start_backend(&data, &[]).await;
    let mut second = spawn_backend_on(free_port(), &data, &[]);
    let (code, log) = second.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(2), "{log}");
    let canonical = std::fs::canonicalize(&data).expect("canonical");
    assert!(
        log.contains(&canonical.display().to_string()) && log.contains("in use"),
        "{log}"
    );
    // The first one never noticed.
    let c = client(&first.url).await;
    c.create("still", Some(b"fine".to_vec().into()), None)
        .await
        .expect("the first backend still writes");
}

/// A small seeded generator (splitmix64): the same seed gives the same
/// writers' calls and kill delays.
struct Rng(u64);

impl Rng {
    fn with_seed(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough below `n` (n > 0) for picking calls.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Whether a failed attempt may have been cut short by the kill (or hit the
/// restart), so that the same call is retried: the transport's errors, and
/// the retryable answers of the spec.
fn retry_after(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted => true,
        // h2 reports a connection cut mid-response this way; the backend's
        // own INTERNAL names it and is a failure.
        Code::Internal => !s.message().contains("sops-git backend"),
        _ => false,
    }
}

/// Calls until the backend gives an answer of its own; says whether an
/// earlier attempt was cut short (its effect unknown).
async fn call_until_answered(c: &Client, op: &Op) -> (Result<(), Status>, bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut interrupted = false;
    loop {
        match op.call(c).await {
            Err(s) if retry_after(&s) && Instant::now() < deadline => {
                interrupted = true;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answer => return (answer, interrupted),
        }
    }
}

/// The next call of writer `w`, valid on its model (so any refusal is a
/// bug): mostly updates, and creates, revision deletes, deletes, locks.
fn next_op(rng: &mut Rng, model: &Model, w: usize, n: usize) -> Op {
    let mut value = format!("w{w}-n{n}-").into_bytes();
    value.push(rng.below(256) as u8);
    let ids: Vec<&String> = model.live.keys().collect();
    if ids.is_empty() || (ids.len() < 5 && rng.below(100) < 20) {
        return Op::Create {
            id: format!("w{w}-{n}"),
            value,
        };
    }
    let id = ids[rng.below(ids.len() as u64) as usize].clone();
    let owner = owner_of(model, &id);
    let revs: Vec<u32> = model.live[&id].revs.keys().copied().collect();
    let latest = revs.last().copied().unwrap_or(0);
    match rng.below(100) {
        0..=54 => Op::Update {
            id,
            rev: latest + 1,
            value,
            owner,
        },
        55..=69 => Op::DeleteRevision {
            id,
            rev: revs[rng.below(revs.len() as u64) as usize],
            owner,
        },
        70..=77 => Op::Delete { id, owner },
        _ if owner.is_some() => Op::Unlock { id },
        _ => Op::Lock {
            id,
            owner: format!("owner-{w}"),
        },
    }
}

/// One writer: sequential calls on its own TypeInstances, each retried
/// until answered; returns what its acknowledged calls left.
async fn writer(w: usize, url: String, seed: u64, stop: Arc<AtomicBool>) -> (Model, usize) {
    let c = client(&url).await;
    let mut rng = Rng::with_seed(seed);
    let mut model = Model::default();
    let mut interrupted_calls = 0;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let op = next_op(&mut rng, &model, w, n);
        let (answer, interrupted) = call_until_answered(&c, &op).await;
        match answer {
            Ok(()) => {}
            Err(s) if interrupted && op.retried_after_it_landed() == Err(s.code()) => {}
            Err(s) => {
                panic!("writer {w}: {op:?} answered {s:?} (interrupted before: {interrupted})")
            }
        }
        interrupted_calls += usize::from(interrupted);
        model.apply(&op);
    }
    (model, interrupted_calls)
}

/// Four writers through the shared client while the backend is SIGKILLed
/// `kills` times at seeded random moments and restarted on the same port
/// and data directory.
async fn random_kills(remote: Option<&str>, kills: usize, seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env: Vec<(&str, &str)> = remote.map(|r| ("APP_GIT_REMOTE", r)).into_iter().collect();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut backend = start_backend_on(port, &data, &env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(writer(
                w,
                url.clone(),
                seed.wrapping_add(w as u64 + 1),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let mut rng = Rng::with_seed(seed);
    // Restarts that found files a kill left mid-way through a git write.
    let mut recovered = 0;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(30 + rng.below(370))).await;
        backend.process.stop();
        backend = start_backend_on(port, &data, &env).await;
        recovered += usize::from(backend.logs().contains("removed a stale"));
    }
    stop.store(true, Ordering::SeqCst);
    let mut models = Vec::new();
    let mut interrupted = 0;
    for w in writers {
        let (model, cut) = w.await.expect("writer");
        interrupted += cut;
        models.push(model);
    }
    let acknowledged: usize = models.iter().map(|m| m.acknowledged).sum();
    assert!(
        interrupted > 0,
        "no call was ever cut by a kill in {kills} kills ({acknowledged} calls acknowledged, \
         {recovered} restarts cleared stale git files): the test proves nothing"
    );
    // A fresh life, then check everything every writer was told.
    backend.process.stop();
    let backend = start_backend_on(port, &data, &env).await;
    let c = client(&backend.url).await;
    for (w, model) in models.iter().enumerate() {
        model.verify(&c, &format!("writer {w}")).await;
    }
    if remote.is_none() {
        git(&data.join("remote.git"), &["fsck", "--no-progress"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_under_four_concurrent_writers_lose_no_acknowledged_write() {
    random_kills(None, 30, 0x5eed_2025).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_over_git_daemon_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    bare_repo(dir.path(), "remote.git");
    let (_daemon, base) = git_daemon(dir.path()).await;
    random_kills(Some(&format!("{base}/remote.git")), 12, 0x5eed_0018).await;
}
