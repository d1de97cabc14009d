//! GetValue and OnUpdate through the `aws-secretsmanager-backend` binary
//! (gRPC) against the same Secrets Manager calls made directly with
//! aws-sdk-secretsmanager, in one run, on one moto server.
//!
//! `cargo bench -p aws-secretsmanager --bench direct` (needs `moto_server`:
//! see tests/setup.sh). Rows, at concurrency 1 and 32, a fixed number of calls each:
//! - `get cN backend`: GetValue of revision 1 through the backend;
//! - `get cN direct`: the two GetSecretValue calls the backend makes (the
//!   head `capact/<id>/head`, then `capact/<id>/<life>/1`);
//! - `update cN backend`: OnUpdate to the next revision, each worker on its
//!   own TypeInstance;
//! - `update cN direct`: the six calls the backend makes for one OnUpdate
//!   (read the head; the claim: put the next head version, move AWSCURRENT;
//!   create the revision secret with the backend's tags; the commit: put
//!   and move again), made directly, in alternating rounds with the backend
//!   row;
//! - `update cN create-only`: one CreateSecret of a new secret, the least a
//!   create-only revision write costs, for scale (alone it could not check
//!   a lock or claim the revision);
//! - `get c1 64 KiB`, ...: the value-size sweep, up to the backend's limit
//!   (65,535 bytes, Secrets Manager's own: 1 MiB is left out).
//!
//! Every backend row carries the backend's CPU time per call and peak RSS
//! (from /proc); the first backend row its start to SERVING and idle RSS.
//!
//! Timings are printed, never asserted. Without `--bench` (e.g. `cargo test
//! --benches`) it does nothing.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{process::ExitCode, sync::Arc, time::Instant};

use aws_sdk_secretsmanager::{Client, types::Tag};
use bench::{
    ProcessProbe, Report, RunOptions,
    cli::make_value,
    harness::{Pool, Startup, checked, p50_over},
};
use support::direct_client;
use testkit::{BackendProcess, moto::Moto};

/// The backend's default `APP_SM_NAME_PREFIX`.
const PREFIX: &str = "capact";
const VALUE_SIZE: usize = 1024;
// Enough calls that each row's backend CPU spans some 30 or more 10 ms ticks.
const GET_OPS: u64 = 3000;
/// Alternating backend/direct rounds the get rows are split into.
const GET_ROUNDS: u64 = 20;
const UPDATE_OPS: u64 = 400;
/// Alternating backend/direct rounds the update rows are split into.
const UPDATE_ROUNDS: u64 = 10;
const WARMUP_OPS: u64 = 30;
const CONCURRENCY: [usize; 2] = [1, 32];
/// TypeInstances read by the get rows (workers pick one by call number).
const GET_IDS: usize = 16;

fn main() -> ExitCode {
    bench::harness::bench_main("aws-secretsmanager direct bench", bench_all)
}

fn options(concurrency: usize, ops: u64) -> RunOptions {
    RunOptions {
        concurrency,
        duration: None,
        ops: Some(ops),
        warmup_ops: WARMUP_OPS,
    }
}

fn err(what: &str, e: impl std::fmt::Debug) -> String {
    format!("{what}: {e:?}")
}

async fn bench_all() -> Result<Report, String> {
    let moto = Moto::start();
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let spawned = Instant::now();
    let backend = BackendProcess::start(support::BIN, &["AWS_"], &env);
    let probe = ProcessProbe::new(backend.pid().ok_or("the backend is not running")?);
    let startup = Startup::measure(&backend.url, spawned, &probe).await;
    // testkit's wait panics with the backend's log if it never got there.
    let backend = backend.serving().await;
    let startup = startup?;
    let target = Arc::new(
        conformance::Target::connect(&conformance::Connect::plain(&backend.url), None).await?,
    );
    let direct = Arc::new(direct_client(&moto));
    let value = make_value(VALUE_SIZE);
    let text = Arc::new(
        String::from_utf8(value.to_vec()).map_err(|_| "bench value is not text".to_owned())?,
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let run_id = run_id[..8].to_owned();

    let mut report =
        Report::new("aws-secretsmanager-backend (gRPC) vs aws-sdk direct, moto server");
    report
        .param("moto", "5.2.5 (moto_server, in memory)")
        .param("value_size", VALUE_SIZE)
        .param("get_ops", GET_OPS)
        .param("update_ops", UPDATE_OPS)
        .param("warmup_ops", WARMUP_OPS)
        .build_profile();

    // GetValue: revision 1 of GET_IDS TypeInstances created through the backend.
    let get_ids: Arc<[String]> = (0..GET_IDS)
        .map(|i| format!("bench-{run_id}-get-{i}"))
        .collect();
    for id in get_ids.iter() {
        target
            .create(id, &value)
            .await
            .map_err(|s| format!("create {id}: {s}"))?;
    }
    for concurrency in CONCURRENCY {
        // Backend and direct in alternating rounds (bench::run_paired): the
        // store's speed drifts during a run, and both sides of a round see
        // the same drift.
        let name = format!("get c{concurrency}");
        let (client, ids) = (Arc::clone(&direct), Arc::clone(&get_ids));
        let (paired, cost) = probe
            .measure_paired(bench::run_paired(
                bench::harness::get_cycling(&target, &get_ids, 1),
                move |seq| {
                    let (client, ids) = (Arc::clone(&client), Arc::clone(&ids));
                    async move {
                        let id = &ids[(seq % ids.len() as u64) as usize];
                        let (head, _) = read_head(&client, &format!("{PREFIX}/{id}/head")).await?;
                        let life = head["life"].as_str().unwrap_or_default();
                        client
                            .get_secret_value()
                            .secret_id(format!("{PREFIX}/{id}/{life}/1"))
                            .version_stage("AWSCURRENT")
                            .send()
                            .await
                            .map(drop)
                            .map_err(|e| err("get secret value", e))
                    }
                },
                &options(concurrency, GET_OPS),
                GET_ROUNDS,
            ))
            .await?;
        bench::harness::paired_rows_with_cost(&mut report, &name, "backend", paired, Some(cost))?;
        if concurrency == 1 {
            startup.annotate(&mut report);
        }
        p50_over(
            &mut report,
            &format!("{name} backend"),
            &format!("{name} direct"),
            "p50 over direct",
        )?;
    }

    for concurrency in CONCURRENCY {
        // One CreateSecret of a fresh secret per call.
        let name = format!("update c{concurrency} create-only");
        let (client, text2, run) = (Arc::clone(&direct), Arc::clone(&text), run_id.clone());
        let stats = bench::run(
            move |seq| {
                let (client, text, run) = (Arc::clone(&client), Arc::clone(&text2), run.clone());
                async move {
                    client
                        .create_secret()
                        .name(format!("bench-direct/{run}-c{concurrency}/{seq}"))
                        .client_request_token(uuid::Uuid::new_v4().simple().to_string())
                        .secret_string(text.as_str())
                        .send()
                        .await
                        .map(drop)
                        .map_err(|e| err("create secret", e))
                }
            },
            &options(concurrency, UPDATE_OPS),
        )
        .await?;
        report.row(&name, checked(&name, stats)?);

        // Direct, the backend's six calls, each worker on its own head.
        let mut slots = Vec::new();
        for i in 0..concurrency {
            let base = format!("bench-direct6/{run_id}-c{concurrency}-{i}");
            direct
                .create_secret()
                .name(format!("{base}/head"))
                .client_request_token(uuid::Uuid::new_v4().simple().to_string())
                .secret_string(head_json(1, None))
                .send()
                .await
                .map_err(|e| err("create head", e))?;
            slots.push((base, 1u32));
        }
        let pool = Pool::new(slots);
        let (client, text2) = (Arc::clone(&direct), Arc::clone(&text));
        let direct_op = move |_| {
            let (client, pool, text) = (Arc::clone(&client), Arc::clone(&pool), Arc::clone(&text2));
            async move {
                let (base, latest) = pool.take()?;
                let result = six_calls(&client, &base, latest + 1, &text).await;
                pool.give((base, if result.is_ok() { latest + 1 } else { latest }));
                result
            }
        };

        // Through the backend.
        let mut slots = Vec::new();
        for i in 0..concurrency {
            let id = format!("bench-{run_id}-upd-c{concurrency}-{i}");
            target
                .create(&id, &value)
                .await
                .map_err(|s| format!("create {id}: {s}"))?;
            slots.push((id, 2u32));
        }
        let pool = Pool::new(slots);
        let (t, value2) = (Arc::clone(&target), value.clone());
        let backend_op = move |_| {
            let (t, pool, value) = (Arc::clone(&t), Arc::clone(&pool), value2.clone());
            async move {
                let (id, rev) = pool.take()?;
                let result = t.update(&id, rev, &value, None).await;
                // A failed update left the revision unused: retry it next.
                pool.give((id, if result.is_ok() { rev + 1 } else { rev }));
                result.map_err(|s| s.to_string())
            }
        };
        let name = format!("update c{concurrency}");
        let (paired, cost) = probe
            .measure_paired(bench::run_paired(
                backend_op,
                direct_op,
                &options(concurrency, UPDATE_OPS),
                UPDATE_ROUNDS,
            ))
            .await?;
        bench::harness::paired_rows_with_cost(&mut report, &name, "backend", paired, Some(cost))?;
        report.compare(&format!("{name} backend"), &format!("{name} create-only"))?;
        p50_over(
            &mut report,
            &format!("{name} backend"),
            &format!("{name} direct"),
            "p50 over direct",
        )?;
    }

    bench::harness::size_sweep(
        &mut report,
        &target,
        &probe,
        &format!("bench-{run_id}-sweep"),
        WARMUP_OPS,
    )
    .await?;
    drop(backend);
    drop(moto);
    Ok(report)
}

/// A head as the backend writes it; `claim` records a write of that
/// revision in progress.
fn head_json(latest: u32, claim: Option<u32>) -> String {
    let mut head = serde_json::json!({
        "managed_by": "capact-storage",
        "life": LIFE,
        "latest": latest,
        "lock": null,
        "epoch": 0,
    });
    if let Some(rev) = claim {
        head["intent"] = serde_json::json!({
            "kind": "write",
            "rev": rev,
            "nonce": uuid::Uuid::new_v4().simple().to_string()[..16],
            "digest": "00000000000000000000000000000000",
            "since": 0,
        });
    }
    head.to_string()
}

/// The life of the heads the direct rows write (16 hex characters, as the
/// backend makes them).
const LIFE: &str = "00000000000000d1";

/// The head `name` as JSON, and the version carrying AWSCURRENT.
async fn read_head(client: &Client, name: &str) -> Result<(serde_json::Value, String), String> {
    let current = client
        .get_secret_value()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .map_err(|e| err("read head", e))?;
    let head = serde_json::from_str(current.secret_string().unwrap_or_default())
        .map_err(|e| err("head is not json", e))?;
    let version = current
        .version_id
        .ok_or_else(|| "head without version id".to_owned())?;
    Ok((head, version))
}

/// The head compare-and-swap: a new version under a pending label, then
/// AWSCURRENT moved to it from `from`. Returns the new version id.
async fn swap_head(
    client: &Client,
    name: &str,
    json: String,
    from: &str,
) -> Result<String, String> {
    let version = uuid::Uuid::new_v4().simple().to_string();
    client
        .put_secret_value()
        .secret_id(name)
        .client_request_token(&version)
        .secret_string(json)
        .version_stages("capact-pending")
        .send()
        .await
        .map_err(|e| err("put head", e))?;
    client
        .update_secret_version_stage()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&version)
        .remove_from_version_id(from)
        .send()
        .await
        .map_err(|e| err("move stage", e))?;
    Ok(version)
}

/// What the backend does for one OnUpdate of a new revision, as plain SDK
/// calls: read the head, claim the revision in it (compare-and-swap),
/// create the revision secret, commit it in the head (compare-and-swap).
async fn six_calls(client: &Client, base: &str, next: u32, text: &str) -> Result<(), String> {
    let head = format!("{base}/head");
    let (_, from) = read_head(client, &head).await?;
    let claimed = swap_head(client, &head, head_json(next - 1, Some(next)), &from).await?;
    // The tags the backend puts on a revision secret.
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    client
        .create_secret()
        .name(format!("{base}/{LIFE}/{next}"))
        .client_request_token(format!("e0-{}", uuid::Uuid::new_v4().simple()))
        .secret_string(text)
        .tags(tag("managed-by", "capact-storage"))
        .tags(tag("capact-type-instance-id", base))
        .tags(tag("capact-role", "revision"))
        .send()
        .await
        .map_err(|e| err("create revision", e))?;
    swap_head(client, &head, head_json(next, None), &claimed).await?;
    Ok(())
}
