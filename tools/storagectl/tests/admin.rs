//! `storagectl locks` / `force-unlock` against a backend's admin listener
//! (the revision engine served in-process), and the admin contract itself.

use std::process::Command;

use shared::client::{Client, Connect, Timeouts};
use testkit::memory::MemoryBackend;

const BIN: &str = env!("CARGO_BIN_EXE_storagectl");

fn storagectl(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .env_remove("STORAGECTL_URL")
        .args(["--url", url, "--timeout", "5s"])
        .args(args)
        .output()
        .expect("run storagectl")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_service_lists_locks_and_force_unlocks_by_compare_and_set() {
    let backend = MemoryBackend::start().await;
    testkit::assert_admin(&backend.url, &backend.admin_url, None, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_prints_holder_and_time_and_force_unlock_needs_the_current_holder() {
    let backend = MemoryBackend::start().await;
    let client = Client::connect(&Connect::plain(&backend.url), Timeouts::default())
        .await
        .expect("connect");
    client
        .create("ti-1", Some(bytes::Bytes::from_static(b"1")), None)
        .await
        .expect("create");
    client
        .lock("ti-1", "hub/action-7", None)
        .await
        .expect("lock");

    let out = storagectl(&backend.admin_url, &["locks"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().nth(1).unwrap_or_default();
    assert!(row.starts_with("ti-1\thub/action-7\t20"), "{text}");

    let json = storagectl(&backend.admin_url, &["locks", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(rows[0]["typeInstanceId"], "ti-1");
    assert_eq!(rows[0]["owner"], "hub/action-7");

    let stale = storagectl(
        &backend.admin_url,
        &["force-unlock", "ti-1", "--expected-owner", "someone-else"],
    );
    assert_eq!(stale.status.code(), Some(1));
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("hub/action-7"),
        "{err}"
    );
    assert_eq!(
        client.locked_by("ti-1", None).await.expect("locked_by"),
        Some("hub/action-7".into())
    );

    let ok = storagectl(
        &backend.admin_url,
        &["force-unlock", "ti-1", "--expected-owner", "hub/action-7"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        client.locked_by("ti-1", None).await.expect("locked_by"),
        None
    );
    let empty = storagectl(&backend.admin_url, &["locks"]);
    assert_eq!(String::from_utf8_lossy(&empty.stdout).lines().count(), 1);

    // The Hub's port does not serve the admin service.
    let hub_port = storagectl(&backend.url, &["locks"]);
    assert_eq!(hub_port.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&hub_port.stderr).contains("UNIMPLEMENTED"),
        "{}",
        String::from_utf8_lossy(&hub_port.stderr)
    );
}
