//! `locks` and `force-unlock`: the backend's operator-only admin service
//! (`proto/admin.proto`), reached at its APP_ADMIN_ADDR.

use std::{io::Write, time::Duration};

use serde_json::json;
use shared::proto::admin::{
    ForceUnlockRequest, ListLocksRequest, storage_admin_client::StorageAdminClient,
};
use tonic::transport::Channel;

use crate::{connect::ConnectArgs, error::Error};

async fn client(args: &ConnectArgs) -> Result<StorageAdminClient<Channel>, Error> {
    let channel = args.settings().channel_with(args.timeouts()).await?;
    Ok(StorageAdminClient::new(channel))
}

/// Prints every lock: a table (id, owner, since, age) or JSON.
pub async fn locks(args: &ConnectArgs, as_json: bool) -> Result<(), Error> {
    let locks = client(args)
        .await?
        .list_locks(ListLocksRequest {})
        .await?
        .into_inner()
        .locks;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut out = String::new();
    if as_json {
        let rows: Vec<_> = locks
            .iter()
            .map(|l| {
                json!({
                    "typeInstanceId": l.type_instance_id,
                    "owner": l.owner,
                    "lockedAt": l.locked_at_unix_ms.map(rfc3339),
                })
            })
            .collect();
        out.push_str(&serde_json::to_string_pretty(&rows).unwrap_or_default());
        out.push('\n');
    } else {
        out.push_str("TYPE INSTANCE\tOWNER\tLOCKED AT\tAGE\n");
        for l in &locks {
            let (at, age) = match l.locked_at_unix_ms {
                Some(ms) => (
                    rfc3339(ms),
                    humantime::format_duration(Duration::from_secs(
                        now_ms.saturating_sub(ms) / 1000,
                    ))
                    .to_string(),
                ),
                None => ("-".into(), "-".into()),
            };
            out.push_str(&format!(
                "{}\t{}\t{at}\t{age}\n",
                l.type_instance_id, l.owner
            ));
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::other(format!("cannot write to stdout: {e}")))
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Clears the lock of `id` if `expected` still holds it.
pub async fn force_unlock(args: &ConnectArgs, id: &str, expected: &str) -> Result<(), Error> {
    client(args)
        .await?
        .force_unlock(ForceUnlockRequest {
            type_instance_id: id.to_owned(),
            expected_owner: expected.to_owned(),
        })
        .await?;
    eprintln!("lock of {id} held by {expected} cleared");
    Ok(())
}
