//! Test-only support shared by the services' integration tests: the
//! third-party servers they run against and the backend binaries as real
//! processes. Never a dependency of anything shipped.
//!
//! Everything binds 127.0.0.1 on free ports and is stopped by its own PID
//! when dropped.

pub mod crash;
pub mod fault;
pub mod hub;
pub mod kube;
pub mod memory;
pub mod moto;
pub mod process;
pub mod registration;

pub use process::{BackendProcess, Guard, free_port, tool_bin};

use std::sync::Arc;

/// Runs the whole conformance suite against `url`, printing one line per
/// case, and returns the report.
pub async fn conformance(url: &str) -> conformance::Report {
    let target = conformance::Target::connect(&conformance::Connect::plain(url), None)
        .await
        .expect("connect the conformance suite");
    conformance::run(Arc::new(target), None, |name, outcome| {
        println!("{}", conformance::line(name, outcome));
    })
    .await
}

/// Fails the test unless every applicable case passed and at least
/// `min_passed` ran.
pub fn assert_clean(report: &conformance::Report, min_passed: usize) {
    println!("{}", report.summary());
    assert_eq!(
        report.failures(),
        Vec::<&str>::new(),
        "conformance failures"
    );
    assert!(
        report.passed() >= min_passed,
        "only {} cases passed",
        report.passed()
    );
}

/// Runs the two-process race scenarios (`conformance::races`) between the
/// backends at `url_a` and `url_b` (two processes on one store) and fails
/// the test on any violation. Prints what each scenario saw.
pub async fn assert_races_clean(url_a: &str, url_b: &str, rounds: usize) {
    let connect = |url: &str| {
        let url = url.to_owned();
        async move {
            conformance::Target::connect(&conformance::Connect::plain(&url), None)
                .await
                .expect("connect a race target")
        }
    };
    let a = Arc::new(connect(url_a).await);
    let b = Arc::new(connect(url_b).await);
    let report = conformance::races::run(a, b, rounds).await;
    println!("{}", report.summary());
    assert!(
        report.violations.is_empty(),
        "race violations:\n{}",
        report.summary()
    );
}

/// Retention through the real server: with `APP_MAX_REVISIONS=keep`, ten
/// revisions written under a lock leave the newest `keep` readable, the
/// older ones NOT_FOUND, the lock held and the TypeInstance deletable.
pub async fn assert_retention(url: &str, keep: u32, context: Option<&[u8]>) {
    use shared::client::{Client, Connect, Timeouts};
    let client = Client::connect(&Connect::plain(url), Timeouts::default())
        .await
        .expect("connect");
    let ctx = || context.map(bytes::Bytes::copy_from_slice);
    let id = format!("retention-{:08x}", fastrand::u32(..));
    let value = |n: u32| bytes::Bytes::from(format!("{{\"revision\":{n}}}"));
    client
        .create(&id, Some(value(1)), ctx())
        .await
        .expect("create");
    client
        .lock(&id, "retention-test", ctx())
        .await
        .expect("lock");
    for n in 2..=10 {
        client
            .update(&id, n, Some(value(n)), ctx(), Some("retention-test".into()))
            .await
            .unwrap_or_else(|e| panic!("update {n}: {e}"));
    }
    for n in 1..=10 {
        let got = client.get(&id, n, ctx()).await;
        if n + keep <= 10 {
            let code = got.err().map(|s| s.code());
            assert_eq!(code, Some(tonic::Code::NotFound), "revision {n} is pruned");
        } else {
            let v = got.unwrap_or_else(|e| panic!("revision {n}: {e}"));
            assert_eq!(v.as_deref(), Some(&value(n)[..]), "revision {n}");
        }
    }
    assert_eq!(
        client.locked_by(&id, ctx()).await.expect("locked_by"),
        Some("retention-test".to_owned())
    );
    client
        .delete(&id, ctx(), Some("retention-test".into()))
        .await
        .expect("delete");
}

/// The admin service (APP_ADMIN_ADDR at `admin_url`) of the backend at
/// `url`: locks are listed with holder and time, force-unlock is a
/// compare-and-set on the holder (a stale expected owner changes nothing,
/// two racing force-unlocks have one winner, and one that races a new
/// lock never clears it).
/// `lock_time`: whether the store records when a lock was taken.
pub async fn assert_admin(url: &str, admin_url: &str, context: Option<&[u8]>, lock_time: bool) {
    use shared::{
        client::{Client, Connect, Timeouts},
        proto::admin::{
            ForceUnlockRequest, ListLocksRequest, storage_admin_client::StorageAdminClient,
        },
    };
    let client = Client::connect(&Connect::plain(url), Timeouts::default())
        .await
        .expect("connect");
    let admin = StorageAdminClient::new(
        Connect::plain(admin_url)
            .channel()
            .await
            .expect("connect to the admin listener"),
    );
    let ctx = || context.map(bytes::Bytes::copy_from_slice);
    let run = format!("{:06x}", fastrand::u32(..0xffffff));
    let (locked, free) = (format!("admin-{run}-locked"), format!("admin-{run}-free"));
    for id in [&locked, &free] {
        client
            .create(id, Some(bytes::Bytes::from_static(b"{}")), ctx())
            .await
            .expect("create");
    }
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    client.lock(&locked, "owner-a", ctx()).await.expect("lock");
    let locks = admin
        .clone()
        .list_locks(ListLocksRequest {})
        .await
        .expect("list locks")
        .into_inner()
        .locks;
    let mine: Vec<_> = locks
        .iter()
        .filter(|l| l.type_instance_id.starts_with(&format!("admin-{run}")))
        .collect();
    assert_eq!(mine.len(), 1, "{locks:?}");
    assert_eq!(mine[0].type_instance_id, locked);
    assert_eq!(mine[0].owner, "owner-a");
    match mine[0].locked_at_unix_ms {
        Some(at) => assert!(
            at + 5_000 >= before && at <= before + 60_000,
            "lock time {at} vs {before}"
        ),
        None => assert!(!lock_time, "lock time not recorded"),
    }

    let force = |id: String, expected: &'static str| {
        let mut admin = admin.clone();
        async move {
            admin
                .force_unlock(ForceUnlockRequest {
                    type_instance_id: id,
                    expected_owner: expected.into(),
                })
                .await
                .map(drop)
        }
    };
    let stale = force(locked.clone(), "owner-b")
        .await
        .expect_err("stale owner");
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
    assert_eq!(
        client.locked_by(&locked, ctx()).await.expect("locked_by"),
        Some("owner-a".into())
    );
    // Two at once, one of them stale: exactly the right one wins.
    let (a, b) = tokio::join!(
        force(locked.clone(), "owner-a"),
        force(locked.clone(), "owner-b")
    );
    assert!(a.is_ok(), "{a:?}");
    assert_eq!(
        b.map_err(|s| s.code()),
        Err(tonic::Code::FailedPrecondition)
    );
    assert_eq!(
        client.locked_by(&locked, ctx()).await.expect("locked_by"),
        None
    );
    // A force-unlock racing a new holder never clears the new lock.
    for round in 0..10 {
        client
            .lock(&locked, "owner-a", ctx())
            .await
            .expect("lock a");
        let relock = async {
            client.unlock(&locked, ctx()).await.expect("unlock");
            client.lock(&locked, "owner-b", ctx()).await
        };
        let (forced, relocked) = tokio::join!(force(locked.clone(), "owner-a"), relock);
        let holder = client.locked_by(&locked, ctx()).await.expect("locked_by");
        if relocked.is_ok() {
            assert_eq!(
                holder.as_deref(),
                Some("owner-b"),
                "round {round}: {forced:?}"
            );
        }
        client.unlock(&locked, ctx()).await.expect("unlock");
    }
    let unknown = force(format!("admin-{run}-missing"), "owner-a")
        .await
        .expect_err("unknown id");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    for id in [&locked, &free] {
        client.delete(id, ctx(), None).await.expect("delete");
    }
}
