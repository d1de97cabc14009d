//! Races between two backend processes on one store (spec §3, "Atomicity
//! and concurrency" and "Fencing"). Each round sets a TypeInstance up through
//! one process, fires two conflicting calls at the same moment — one through
//! each process — and checks the outcome against every order the protocol
//! allows. An observer read made after a call was acknowledged pins what
//! that acknowledgement promised.
//!
//! The scenarios:
//! - `lock_vs_delete_revision`: OnLock by another owner against an owner-less
//!   OnDeleteRevision of the latest revision. If both succeed the delete came
//!   first, so a read after the lock's acknowledgement must not find the
//!   revision, and it must not vanish after being seen.
//! - `lock_vs_update`: OnLock against an owner-less OnUpdate. If both
//!   succeed the update came first and is visible right after the lock; if
//!   the revision was missing after the lock it stays missing.
//! - `delete_vs_create`: OnDelete against an OnCreate of the same id with
//!   other bytes. An acknowledged create is never erased.
//! - `delete_vs_update`: OnDelete against OnUpdate. Nothing written by the
//!   update outlives an acknowledged delete, and a delete never answers
//!   NOT_FOUND for a TypeInstance only it could have removed.

use std::{collections::BTreeMap, sync::Arc};

use tonic::{Code, Status};

use crate::Target;

/// What a run saw.
#[derive(Debug, Default)]
pub struct RaceReport {
    pub rounds: usize,
    /// scenario → outcome label → count (shows the races really interleaved).
    pub outcomes: BTreeMap<&'static str, BTreeMap<String, usize>>,
    pub violations: Vec<String>,
}

impl RaceReport {
    fn saw(&mut self, scenario: &'static str, label: String) {
        *self
            .outcomes
            .entry(scenario)
            .or_default()
            .entry(label)
            .or_default() += 1;
    }

    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} rounds per scenario, {} violations\n",
            self.rounds,
            self.violations.len()
        );
        for (scenario, labels) in &self.outcomes {
            out.push_str(&format!("  {scenario}:"));
            for (label, n) in labels {
                out.push_str(&format!(" {label}={n}"));
            }
            out.push('\n');
        }
        for v in self.violations.iter().take(20) {
            out.push_str(&format!("  VIOLATION {v}\n"));
        }
        out
    }
}

fn code(r: &Result<impl Sized, Status>) -> String {
    match r {
        Ok(_) => "OK".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    }
}

fn found(r: &Result<bytes::Bytes, Status>, want: &[u8]) -> Result<bool, String> {
    match r {
        Ok(v) if v.as_ref() == want => Ok(true),
        Ok(_) => Err("read returned bytes that were never written there".to_owned()),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(format!("read failed: {:?} {}", s.code(), s.message())),
    }
}

/// Runs `rounds` rounds of every scenario with the two processes `a` and `b`
/// (two connections to two backend processes on the same store). Ids are
/// taken from `a`'s prefix; everything is cleaned up.
pub async fn run(a: Arc<Target>, b: Arc<Target>, rounds: usize) -> RaceReport {
    let mut report = RaceReport {
        rounds,
        ..RaceReport::default()
    };
    for round in 0..rounds {
        // Alternate which process takes which side.
        let (x, y) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let id = a.id(&format!("race-{round}"));
        lock_vs_delete_revision(x, y, &id, round, &mut report).await;
        a.cleanup(&id).await;
        lock_vs_update(x, y, &id, round, &mut report).await;
        a.cleanup(&id).await;
        delete_vs_create(x, y, &id, round, &mut report).await;
        a.cleanup(&id).await;
        delete_vs_update(x, y, &id, round, &mut report).await;
        a.cleanup(&id).await;
    }
    report
}

async fn setup(t: &Target, id: &str, revisions: u32) -> Result<(), String> {
    t.create(id, b"\"v1\"")
        .await
        .map_err(|s| format!("setup create failed: {s}"))?;
    for rev in 2..=revisions {
        t.update(id, rev, format!("\"v{rev}\"").as_bytes(), None)
            .await
            .map_err(|s| format!("setup update failed: {s}"))?;
    }
    Ok(())
}

/// What a lock race saw: the lock's answer, revision 2 as read right after
/// the lock was acknowledged (through the locker), the other call's answer,
/// and revision 2 as read after both answered.
type LockRace = (
    Result<(), Status>,
    Result<Option<bool>, String>,
    Result<(), Status>,
    Result<bool, String>,
);

/// OnLock by another owner through `y`, at the same moment as `other`
/// through `x`.
async fn race_lock(
    x: &Target,
    y: &Target,
    id: &str,
    other: impl std::future::Future<Output = Result<(), Status>>,
) -> LockRace {
    let locker = async {
        let r = y.lock(id, "race-holder").await;
        // Read only after the lock was acknowledged.
        let seen = if r.is_ok() {
            Some(y.get(id, 2).await)
        } else {
            None
        };
        (r, seen)
    };
    let ((lock, seen), other) = tokio::join!(locker, other);
    let after = x.get(id, 2).await;
    let want = b"\"v2\"";
    let seen = seen.as_ref().map(|s| found(s, want)).transpose();
    (lock, seen, other, found(&after, want))
}

async fn lock_vs_delete_revision(
    x: &Target,
    y: &Target,
    id: &str,
    round: usize,
    report: &mut RaceReport,
) {
    const S: &str = "lock_vs_delete_revision";
    if let Err(e) = setup(x, id, 2).await {
        report.violations.push(format!("{S} round {round}: {e}"));
        return;
    }
    let (lock, seen, del, after) = race_lock(x, y, id, x.delete_revision(id, 2, None)).await;
    report.saw(S, format!("lock={} delete={}", code(&lock), code(&del)));
    let mut bad = |why: String| report.violations.push(format!("{S} round {round}: {why}"));
    let (seen, after) = match (seen, after) {
        (Ok(s), Ok(a)) => (s, a),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    match (&lock, &del) {
        (Ok(()), Ok(())) if seen == Some(true) => {
            bad("the revision was readable after the lock was acknowledged, yet the owner-less delete succeeded".into())
        }
        (Ok(()), Err(s)) if s.code() == Code::FailedPrecondition && !after => {
            bad("the delete was refused by the lock but the revision is gone".into())
        }
        (_, Ok(())) if after => bad("an acknowledged delete-revision left the revision readable".into()),
        (Ok(()), _) if seen == Some(true) && !after => {
            bad("the revision was read after the lock was acknowledged and vanished afterwards".into())
        }
        (Err(s), _) if s.code() != Code::Aborted => bad(format!("lock failed: {:?} {}", s.code(), s.message())),
        (_, Err(s)) if !matches!(s.code(), Code::FailedPrecondition | Code::Aborted) => {
            bad(format!("delete-revision failed: {:?} {}", s.code(), s.message()))
        }
        _ => {}
    }
}

async fn lock_vs_update(x: &Target, y: &Target, id: &str, round: usize, report: &mut RaceReport) {
    const S: &str = "lock_vs_update";
    if let Err(e) = setup(x, id, 1).await {
        report.violations.push(format!("{S} round {round}: {e}"));
        return;
    }
    let (lock, seen, upd, after) = race_lock(x, y, id, x.update(id, 2, b"\"v2\"", None)).await;
    report.saw(S, format!("lock={} update={}", code(&lock), code(&upd)));
    let mut bad = |why: String| report.violations.push(format!("{S} round {round}: {why}"));
    let (seen, after) = match (seen, after) {
        (Ok(s), Ok(a)) => (s, a),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    match (&lock, &upd) {
        (Ok(()), Ok(())) if seen == Some(false) => bad(
            "the update succeeded but its revision was missing after the lock was acknowledged"
                .into(),
        ),
        (Ok(()), _) if seen == Some(false) && after => bad(
            "the owner-less update took effect after another owner's lock was acknowledged".into(),
        ),
        (_, Ok(())) if !after => bad("an acknowledged update is not readable".into()),
        (_, Err(_))
            if after
                && upd
                    .as_ref()
                    .is_err_and(|s| s.code() == Code::FailedPrecondition) =>
        {
            bad("the update was refused by the lock but its revision is stored".into())
        }
        (Err(s), _) if s.code() != Code::Aborted => {
            bad(format!("lock failed: {:?} {}", s.code(), s.message()))
        }
        (_, Err(s)) if !matches!(s.code(), Code::FailedPrecondition | Code::Aborted) => {
            bad(format!("update failed: {:?} {}", s.code(), s.message()))
        }
        _ => {}
    }
}

async fn delete_vs_create(x: &Target, y: &Target, id: &str, round: usize, report: &mut RaceReport) {
    const S: &str = "delete_vs_create";
    if let Err(e) = setup(x, id, 2).await {
        report.violations.push(format!("{S} round {round}: {e}"));
        return;
    }
    let (del, cre) = tokio::join!(x.delete(id, None), y.create(id, b"\"new\""));
    let after = x.get(id, 1).await;
    let old2 = x.get(id, 2).await;
    report.saw(S, format!("delete={} create={}", code(&del), code(&cre)));
    let mut bad = |why: String| report.violations.push(format!("{S} round {round}: {why}"));
    let now = match found(&after, b"\"new\"") {
        Ok(n) => n,
        Err(_) if after.is_ok() => {
            // Old revision 1 still readable: only allowed if the delete failed.
            if del.is_ok() {
                bad("an acknowledged delete left revision 1 of the old life readable".into());
            }
            false
        }
        Err(e) => return bad(e),
    };
    if old2.is_ok() && del.is_ok() {
        bad("an acknowledged delete left revision 2 of the old life readable".into());
    }
    match (&del, &cre) {
        (_, Ok(_)) if !now => bad("an acknowledged create was erased".into()),
        (Err(s), _) if s.code() != Code::Aborted => {
            bad(format!("delete failed: {:?} {}", s.code(), s.message()))
        }
        (_, Err(s)) if !matches!(s.code(), Code::AlreadyExists | Code::Aborted) => {
            bad(format!("create failed: {:?} {}", s.code(), s.message()))
        }
        _ => {}
    }
}

async fn delete_vs_update(x: &Target, y: &Target, id: &str, round: usize, report: &mut RaceReport) {
    const S: &str = "delete_vs_update";
    if let Err(e) = setup(x, id, 1).await {
        report.violations.push(format!("{S} round {round}: {e}"));
        return;
    }
    let (del, upd) = tokio::join!(x.delete(id, None), y.update(id, 2, b"\"v2\"", None));
    let r1 = x.get(id, 1).await;
    let r2 = x.get(id, 2).await;
    report.saw(S, format!("delete={} update={}", code(&del), code(&upd)));
    let mut bad = |why: String| report.violations.push(format!("{S} round {round}: {why}"));
    if del.is_ok() && (r1.is_ok() || r2.is_ok()) {
        bad("a revision is readable after an acknowledged delete".into());
    }
    match (&del, &upd) {
        (Err(s), _) if s.code() == Code::NotFound => {
            bad("delete answered NOT_FOUND though only it could remove the TypeInstance".into())
        }
        (Err(s), _) if s.code() != Code::Aborted => {
            bad(format!("delete failed: {:?} {}", s.code(), s.message()))
        }
        (_, Err(s)) if !matches!(s.code(), Code::NotFound | Code::Aborted) => {
            bad(format!("update failed: {:?} {}", s.code(), s.message()))
        }
        _ => {}
    }
}
