//! GetValue and OnUpdate through the `s3-backend` binary (gRPC) against the
//! same S3 calls made directly with aws-sdk-s3, in one run, on a real moto
//! server (one bucket, unversioned).
//!
//! `cargo bench -p s3 --bench direct` (needs `moto_server`: see tests/setup.sh).
//! Rows, at concurrency 1 and 32, a fixed number of calls each:
//! - `get cN backend`: GetValue of revision 1 through the backend;
//! - `get cN direct`: the two GetObjects the backend makes (the head
//!   `capact/<id>/head`, then `capact/<id>/<life>/1`), run in alternating
//!   rounds with the backend row (`bench::run_paired`) so that moto's drift
//!   moves both alike; the report adds the median of the per-round p50
//!   ratios;
//! - `update cN backend`: OnUpdate to the next revision, each worker on its
//!   own TypeInstance;
//! - `update cN direct`: the four S3 calls the backend makes for one
//!   OnUpdate (GetObject of the head, the claim: PutObject of the head with
//!   If-Match, create-only PutObject of the revision, the commit: PutObject
//!   of the head with If-Match), made directly, in alternating rounds with
//!   the backend row like the get rows;
//! - `update cN put-only`: one create-only PutObject of a new key, the
//!   cheapest write S3 has, which alone could not keep the contract (no
//!   lock check, no atomic claim of the revision);
//! - `floor cN forwarder` / `floor cN direct`: the two GetObjects of the get
//!   rows through a process that only copies bytes, and straight;
//! - `get c1 64 KiB`, `update c1 1 MiB`, ...: the value-size sweep.
//!
//! Every backend row carries the backend's CPU time per call and peak RSS
//! (from /proc), the forwarder rows the forwarder's; the first backend row
//! its start to SERVING and idle RSS.
//!
//! Timings are printed, never asserted. Without `--bench` (e.g. `cargo test
//! --benches`) it does nothing.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{process::ExitCode, sync::Arc, time::Instant};

use aws_sdk_s3::{Client, primitives::ByteStream};
use bench::{
    ProcessProbe, Report, RunOptions,
    cli::make_value,
    harness::{CyclingOp, Pool, Startup, checked, p50_over},
};
use bytes::Bytes;
use support::{Moto, PREFIX, backend_env, create_bucket, s3_client, s3_client_at, start_backend};

const BUCKET: &str = "bench";
const VALUE_SIZE: usize = 1024;
// Enough calls that each row's backend CPU spans some 30 or more 10 ms ticks.
const GET_OPS: u64 = 3000;
/// Alternating backend/direct rounds the get rows are split into.
const GET_ROUNDS: u64 = 20;
const UPDATE_OPS: u64 = 600;
/// Alternating backend/direct rounds the update rows are split into.
const UPDATE_ROUNDS: u64 = 10;
const WARMUP_OPS: u64 = 30;
const CONCURRENCY: [usize; 2] = [1, 32];
/// TypeInstances read by the get rows (workers pick one by call number).
const GET_IDS: usize = 16;

fn main() -> ExitCode {
    bench::harness::bench_main("s3 direct bench", bench_all)
}

fn options(concurrency: usize, ops: u64) -> RunOptions {
    RunOptions {
        concurrency,
        duration: None,
        ops: Some(ops),
        warmup_ops: WARMUP_OPS,
    }
}

async fn get_object(s3: &Client, key: &str) -> Result<(Bytes, String), String> {
    let out = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("get {key}: {e}"))?;
    let etag = out.e_tag().unwrap_or_default().to_owned();
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| format!("body of {key}: {e}"))?;
    Ok((body.into_bytes(), etag))
}

/// The life a head names.
fn life_of(key: &str, body: &[u8]) -> Result<String, String> {
    let head: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("{key}: {e}"))?;
    head["life"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{key} names no life"))
}

/// The head then revision 1 of each of `ids` in turn, as the backend reads
/// them for GetValue.
fn get_object_cycling(s3: &Arc<Client>, ids: &Arc<[String]>) -> CyclingOp {
    let s3 = Arc::clone(s3);
    bench::harness::cycling(ids, move |id| {
        let (s3, head_key) = (Arc::clone(&s3), format!("{PREFIX}/{id}/head"));
        let base = format!("{PREFIX}/{id}");
        async move {
            let (body, _) = get_object(&s3, &head_key).await?;
            let life = life_of(&head_key, &body)?;
            get_object(&s3, &format!("{base}/{life}/1")).await.map(drop)
        }
    })
}

/// PutObject create-only (`etag` None) or with If-Match; returns the ETag.
/// Revision objects carry their epoch (`epoch`) as the backend writes them.
async fn put_object(
    s3: &Client,
    key: &str,
    body: Bytes,
    etag: Option<&str>,
    epoch: Option<u64>,
) -> Result<String, String> {
    let mut req = s3
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from(body))
        .tagging("managed-by=capact-storage");
    if let Some(e) = epoch {
        req = req.metadata("capact-epoch", e.to_string());
    }
    let req = match etag {
        Some(e) => req.if_match(e),
        None => req.if_none_match("*"),
    };
    req.send()
        .await
        .map(|o| o.e_tag().unwrap_or_default().to_owned())
        .map_err(|e| format!("put {key}: {e}"))
}

/// A head as the backend writes it; `claim` records a write of that
/// revision in progress.
fn head_body(life: &str, latest: u64, claim: Option<u64>) -> Bytes {
    let mut head = serde_json::json!({
        "managed_by": "capact-storage",
        "life": life,
        "latest": latest,
        "lock": null,
        "epoch": 0,
        "write": uuid::Uuid::new_v4().simple().to_string(),
    });
    if let Some(rev) = claim {
        head["intent"] = serde_json::json!({
            "kind": "write",
            "rev": rev,
            "nonce": uuid::Uuid::new_v4().simple().to_string(),
            "since": 0,
        });
    }
    Bytes::from(head.to_string())
}

/// A life name as the backend makes them (16 hex characters).
fn new_life() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

async fn bench_all() -> Result<Report, String> {
    let moto = Moto::start();
    let direct = Arc::new(s3_client(&moto).await);
    let forwarder =
        bench::forwarder::Forwarder::spawn(moto.endpoint().trim_start_matches("http://"))?;
    let via_forwarder = Arc::new(s3_client_at(format!("http://{}", forwarder.addr())).await);
    let forwarder_probe = ProcessProbe::new(forwarder.pid());
    create_bucket(&direct, BUCKET, false).await;
    // The backend's metrics split its latency: handler vs S3 calls.
    let metrics_port = testkit::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let spawned = Instant::now();
    let backend = start_backend(&backend_env(
        &moto,
        BUCKET,
        &[("APP_METRICS_ADDR", &metrics_addr)],
    ));
    let probe = ProcessProbe::new(backend.pid().ok_or("the backend is not running")?);
    let startup = Startup::measure(&backend.url, spawned, &probe).await;
    // testkit's wait panics with the backend's log if it never got there.
    let backend = backend.serving().await;
    let startup = startup?;
    let target = Arc::new(
        conformance::Target::connect(&conformance::Connect::plain(&backend.url), None).await?,
    );
    let value = make_value(VALUE_SIZE);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let run_id = &run_id[..8];

    let mut report = Report::new("s3-backend (gRPC) vs aws-sdk-s3 direct, moto server");
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
        // Backend and direct in alternating rounds: moto's speed drifts
        // between runs by more than the hop costs.
        let name = format!("get c{concurrency}");
        let before = bench::harness::scrape(metrics_port)?;
        let (paired, cost) = probe
            .measure_paired(bench::run_paired(
                bench::harness::get_cycling(&target, &get_ids, 1),
                get_object_cycling(&direct, &get_ids),
                &options(concurrency, GET_OPS),
                GET_ROUNDS,
            ))
            .await?;
        bench::harness::paired_rows_with_cost(&mut report, &name, "backend", paired, Some(cost))?;
        if concurrency == 1 {
            startup.annotate(&mut report);
        }
        bench::harness::split(
            &mut report,
            &format!("{name} backend"),
            &before,
            &bench::harness::scrape(metrics_port)?,
            "GetValue",
            &["get_object"],
        );
        // The floor: the same GetObject through a process that only copies
        // bytes.
        bench::harness::floor_rows(
            &mut report,
            get_object_cycling(&via_forwarder, &get_ids),
            get_object_cycling(&direct, &get_ids),
            &options(concurrency, GET_OPS),
            GET_ROUNDS,
            Some(&forwarder_probe),
        )
        .await?;
        let backend_row = format!("{name} backend");
        p50_over(
            &mut report,
            &backend_row,
            &format!("{name} direct"),
            "p50 over direct",
        )?;
        p50_over(
            &mut report,
            &backend_row,
            &format!("floor c{concurrency} forwarder"),
            "p50 over floor",
        )?;
    }

    for concurrency in CONCURRENCY {
        // One create-only PutObject of a fresh key per call.
        let name = format!("update c{concurrency} put-only");
        let (s3, v) = (Arc::clone(&direct), value.clone());
        let base = format!("bench-direct/{run_id}-c{concurrency}");
        let stats = bench::run(
            move |seq| {
                let (s3, v, key) = (Arc::clone(&s3), v.clone(), format!("{base}/{seq}"));
                async move { put_object(&s3, &key, v, None, None).await.map(drop) }
            },
            &options(concurrency, UPDATE_OPS),
        )
        .await?;
        report.row(&name, checked(&name, stats)?);

        // Direct: the backend's four calls, each worker on its own head.
        let mut slots = Vec::new();
        for i in 0..concurrency {
            let base = format!("bench-direct4/{run_id}-c{concurrency}-{i}");
            let life = new_life();
            let head = head_body(&life, 1, None);
            put_object(&direct, &format!("{base}/head"), head, None, None).await?;
            let rev1 = format!("{base}/{life}/1");
            put_object(&direct, &rev1, value.clone(), None, Some(0)).await?;
            slots.push(base);
        }
        let pool = Pool::new(slots);
        let (s3, v) = (Arc::clone(&direct), value.clone());
        let direct_op = move |_| {
            let (s3, pool, v) = (Arc::clone(&s3), Arc::clone(&pool), v.clone());
            async move {
                let base = pool.take()?;
                let result = four_calls(&s3, &base, v).await;
                pool.give(base);
                result
            }
        };

        // Through the backend, each worker on its own TypeInstance.
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
        let (t, v) = (Arc::clone(&target), value.clone());
        let backend_op = move |_| {
            let (t, pool, v) = (Arc::clone(&t), Arc::clone(&pool), v.clone());
            async move {
                let (id, rev) = pool.take()?;
                let result = t.update(&id, rev, &v, None).await;
                // A failed update left the revision unused: retry it next.
                let next = if result.is_ok() { rev + 1 } else { rev };
                pool.give((id, next));
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
        report.compare(&format!("{name} backend"), &format!("{name} put-only"))?;
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

/// What the backend does for one OnUpdate of a new revision, as plain
/// aws-sdk-s3 calls: read the head, claim the revision in it (If-Match),
/// write the revision create-only, commit it in the head (If-Match).
async fn four_calls(s3: &Client, base: &str, value: Bytes) -> Result<(), String> {
    let head_key = format!("{base}/head");
    let (body, etag) = get_object(s3, &head_key).await?;
    let head: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("{head_key}: {e}"))?;
    let latest = head["latest"]
        .as_u64()
        .ok_or_else(|| format!("{head_key} has no latest"))?;
    let life = life_of(&head_key, &body)?;
    let next = latest + 1;
    let claim = head_body(&life, latest, Some(next));
    let etag = put_object(s3, &head_key, claim, Some(&etag), None).await?;
    put_object(s3, &format!("{base}/{life}/{next}"), value, None, Some(0)).await?;
    put_object(
        s3,
        &head_key,
        head_body(&life, next, None),
        Some(&etag),
        None,
    )
    .await?;
    Ok(())
}
