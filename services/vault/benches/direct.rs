//! GetValue and OnUpdate through the `vault-backend` binary (gRPC) against
//! the same KV v2 calls made directly with vaultrs, in one run, on a real
//! OpenBao dev server (in memory, KV v2 at `secret/`).
//!
//! `cargo bench -p vault --bench direct` (needs `bao`: see tests/setup.sh).
//! Rows, at concurrency 1 and 32, a fixed number of calls each:
//! - `hop c1 (health check)`: a gRPC health check, answered from memory;
//!   it carries the backend's start to SERVING and idle RSS;
//! - `get cN backend`: GetValue of revision 1 through the backend;
//! - `get cN direct`: the two kv2 reads the backend makes for it (the head
//!   `capact/<id>/meta`, then the revision secret `capact/<id>/<life>/1`);
//! - `update cN backend`: OnUpdate to the next revision, each worker on its
//!   own TypeInstance;
//! - `update cN direct`: one kv2 set with cas (the brief's "direct" write);
//! - `update cN direct-4`: the four kv2 calls the backend makes for one
//!   OnUpdate (read the head, claim the revision in it with cas, write the
//!   revision with cas=0, commit the head with cas), to separate the gRPC
//!   hop from the layout's cost;
//! - `floor cN forwarder` / `floor cN direct`: the kv2 read of the get rows
//!   through a process that only copies bytes, and straight;
//! - `get c1 64 KiB`, `update c1 1 MiB`, ...: the value-size sweep.
//!
//! Every backend row carries the backend's CPU time per call and peak RSS
//! (from /proc), the forwarder rows the forwarder's.
//!
//! Timings are printed, never asserted. Without `--bench` (e.g. `cargo test
//! --benches`) it does nothing.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{process::ExitCode, sync::Arc, time::Instant};

use base64::Engine as _;
use bench::{
    ProcessProbe, Report, RunOptions,
    cli::make_value,
    harness::{CyclingOp, Pool, Startup, checked, p50_over},
};
use serde_json::{Map, Value as Json, json};
use shared::engine::{Head, Intent};
use support::{Bao, ROOT_TOKEN};
use vaultrs::{
    api::{self, kv2::requests::ReadSecretRequest, kv2::requests::SetSecretRequestOptions},
    client::{VaultClient, VaultClientSettingsBuilder},
};

const MOUNT: &str = "secret";
/// The backend's default `APP_VAULT_PATH_PREFIX`.
const PREFIX: &str = "capact";
const VALUE_SIZE: usize = 1024;
// Enough calls that each row's backend CPU spans some 30 or more 10 ms ticks.
const GET_OPS: u64 = 6000;
/// Alternating backend/direct rounds the get rows are split into.
const GET_ROUNDS: u64 = 20;
const UPDATE_OPS: u64 = 1500;
const WARMUP_OPS: u64 = 50;
const CONCURRENCY: [usize; 2] = [1, 32];
/// TypeInstances read by the get rows (workers pick one by call number).
const GET_IDS: usize = 16;

fn main() -> ExitCode {
    bench::harness::bench_main("vault direct bench", bench_all)
}

fn options(concurrency: usize, ops: u64) -> RunOptions {
    RunOptions {
        concurrency,
        duration: None,
        ops: Some(ops),
        warmup_ops: WARMUP_OPS,
    }
}

/// The data of a revision secret, as the backend writes it.
fn rev_data(value: &[u8]) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("managed_by".into(), json!("capact-storage"));
    m.insert(
        "value".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(value)),
    );
    m.insert("epoch".into(), json!(0));
    m
}

/// The life of the direct rows' heads (the backend draws one per create).
const LIFE: &str = "00000000000000b1";

fn head(latest: u32, intent: Option<Intent>) -> Head {
    Head {
        life: LIFE.to_owned(),
        latest,
        lock: None,
        epoch: 0,
        floor: 0,
        locked_at: None,
        intent,
    }
}

/// Reads a secret: its data and version.
async fn read(client: &VaultClient, path: &str) -> Result<(Map<String, Json>, u64), String> {
    let endpoint = ReadSecretRequest::builder()
        .mount(MOUNT)
        .path(path)
        .build()
        .map_err(|e| format!("read request: {e}"))?;
    let secret = api::exec_with_result(client, endpoint)
        .await
        .map_err(|e| format!("read {path}: {e}"))?;
    match secret.data {
        Json::Object(m) => Ok((m, secret.metadata.version)),
        _ => Err(format!("{path} holds no object")),
    }
}

/// The folder of revision 1 of `id`, as the backend laid it out.
async fn rev1_path(client: &VaultClient, id: &str) -> Result<String, String> {
    let (data, _) = read(client, &format!("{PREFIX}/{id}/meta")).await?;
    let life = data
        .get("life")
        .and_then(Json::as_str)
        .ok_or_else(|| format!("the head of {id} has no life"))?;
    Ok(format!("{PREFIX}/{id}/{life}/1"))
}

fn vault_client(addr: &str) -> Result<VaultClient, String> {
    let settings = VaultClientSettingsBuilder::default()
        .address(addr)
        .token(ROOT_TOKEN)
        .build()
        .map_err(|e| format!("vault client settings: {e}"))?;
    VaultClient::new(settings).map_err(|e| format!("vault client: {e}"))
}

async fn set_cas(
    client: &VaultClient,
    path: &str,
    data: &Map<String, Json>,
    cas: u64,
) -> Result<u64, String> {
    let cas = u32::try_from(cas).map_err(|_| "cas above u32".to_owned())?;
    vaultrs::kv2::set_with_options(client, MOUNT, path, data, SetSecretRequestOptions { cas })
        .await
        .map(|m| m.version)
        .map_err(|e| format!("set {path}: {e}"))
}

/// The two kv2 reads the backend makes for GetValue, for each of `paths`
/// (revision secrets `capact/<id>/<life>/<rev>`) in turn: the head
/// (`capact/<id>/meta`), then the revision.
fn kv2_read_cycling(client: &Arc<VaultClient>, paths: &Arc<[String]>) -> CyclingOp {
    let client = Arc::clone(client);
    bench::harness::cycling(paths, move |path| {
        let (client, path) = (Arc::clone(&client), path.to_owned());
        let id_dir = path.rsplitn(3, '/').nth(2).unwrap_or_default().to_owned();
        async move {
            let head = format!("{id_dir}/meta");
            vaultrs::kv2::read::<Map<String, Json>>(client.as_ref(), MOUNT, &head)
                .await
                .map_err(|e| format!("read {head}: {e}"))?;
            vaultrs::kv2::read::<Map<String, Json>>(client.as_ref(), MOUNT, &path)
                .await
                .map(drop)
                .map_err(|e| format!("read {path}: {e}"))
        }
    })
}

async fn bench_all() -> Result<Report, String> {
    // reqwest is built without a crypto provider (see vault::build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bao = Bao::start();
    let addr = bao.addr();
    // The backend's own metrics split its latency: time inside the RPC
    // handler vs time in the Vault call; the rest is the gRPC hop.
    let metrics_port = testkit::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let spawned = Instant::now();
    let backend = support::start_backend(&[
        ("VAULT_ADDR", &addr),
        ("VAULT_TOKEN", ROOT_TOKEN),
        ("APP_METRICS_ADDR", &metrics_addr),
    ]);
    let probe = ProcessProbe::new(backend.pid().ok_or("the backend is not running")?);
    let startup = Startup::measure(&backend.url, spawned, &probe).await;
    // testkit's wait panics with the backend's log if it never got there.
    let backend = backend.serving().await;
    let startup = startup?;
    let target = Arc::new(
        conformance::Target::connect(&conformance::Connect::plain(&backend.url), None).await?,
    );
    let direct = Arc::new(vault_client(&addr)?);
    let forwarder = bench::forwarder::Forwarder::spawn(
        addr.trim_start_matches("http://")
            .trim_start_matches("https://"),
    )?;
    let via_forwarder = Arc::new(vault_client(&format!("http://{}", forwarder.addr()))?);
    let forwarder_probe = ProcessProbe::new(forwarder.pid());
    let value = make_value(VALUE_SIZE);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let run_id = &run_id[..8];

    let mut report = Report::new("vault-backend (gRPC) vs vaultrs direct, OpenBao dev server");
    report
        .param("openbao", bao.cli(&["version"]).unwrap_or_default())
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
    let mut get_paths = Vec::new();
    for id in get_ids.iter() {
        get_paths.push(rev1_path(&direct, id).await?);
    }
    let get_paths: Arc<[String]> = get_paths.into();
    // The gRPC hop alone: a health check answers from memory.
    let channel = conformance::Connect::plain(&backend.url)
        .channel()
        .await
        .map_err(|e| e.to_string())?;
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let (stats, cost) = probe
        .measure(bench::run(
            move |_| {
                let mut health = health.clone();
                async move {
                    health
                        .check(tonic_health::pb::HealthCheckRequest::default())
                        .await
                        .map(drop)
                        .map_err(|s| s.to_string())
                }
            },
            &options(1, GET_OPS),
        ))
        .await?;
    report.row_with_cost("hop c1 (health check)", checked("hop", stats)?, cost);
    startup.annotate(&mut report);

    for concurrency in CONCURRENCY {
        // Backend and direct in alternating rounds (bench::run_paired): the
        // store's speed drifts during a run, and both sides of a round see
        // the same drift.
        let name = format!("get c{concurrency}");
        let before = bench::harness::scrape(metrics_port)?;
        let (paired, cost) = probe
            .measure_paired(bench::run_paired(
                bench::harness::get_cycling(&target, &get_ids, 1),
                kv2_read_cycling(&direct, &get_paths),
                &options(concurrency, GET_OPS),
                GET_ROUNDS,
            ))
            .await?;
        bench::harness::paired_rows_with_cost(&mut report, &name, "backend", paired, Some(cost))?;
        bench::harness::split(
            &mut report,
            &format!("{name} backend"),
            &before,
            &bench::harness::scrape(metrics_port)?,
            "GetValue",
            &["kv2_read"],
        );
        // The floor: the same read through a process that only copies bytes.
        bench::harness::floor_rows(
            &mut report,
            kv2_read_cycling(&via_forwarder, &get_paths),
            kv2_read_cycling(&direct, &get_paths),
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

    // OnUpdate: every worker writes its own TypeInstance / secret.
    let data = rev_data(&value);
    for concurrency in CONCURRENCY {
        // Direct: one kv2 set with cas on the worker's own secret.
        let mut slots = Vec::new();
        for i in 0..concurrency {
            let path = format!("bench-direct/{run_id}-c{concurrency}-{i}");
            let version = set_cas(&direct, &path, &data, 0).await?;
            slots.push((path, version));
        }
        let pool = Pool::new(slots);
        let (client, data2) = (Arc::clone(&direct), Arc::new(data.clone()));
        let name = format!("update c{concurrency} direct");
        let stats = bench::run(
            move |_| {
                let (client, pool, data) =
                    (Arc::clone(&client), Arc::clone(&pool), Arc::clone(&data2));
                async move {
                    let (path, version) = pool.take()?;
                    let result = set_cas(&client, &path, &data, version).await;
                    pool.give((path, *result.as_ref().unwrap_or(&version)));
                    result.map(drop)
                }
            },
            &options(concurrency, UPDATE_OPS),
        )
        .await?;
        report.row(&name, checked(&name, stats)?);

        // Direct, the backend's four calls (see `four_calls`).
        let mut slots = Vec::new();
        for i in 0..concurrency {
            let base = format!("bench-direct4/{run_id}-c{concurrency}-{i}");
            set_cas(&direct, &format!("{base}/meta"), &head(1, None).to_map(), 0).await?;
            set_cas(&direct, &format!("{base}/{LIFE}/1"), &data, 0).await?;
            slots.push(base);
        }
        let pool = Pool::new(slots);
        let (client, data2) = (Arc::clone(&direct), Arc::new(data.clone()));
        let name = format!("update c{concurrency} direct-4");
        let stats = bench::run(
            move |_| {
                let (client, pool, data) =
                    (Arc::clone(&client), Arc::clone(&pool), Arc::clone(&data2));
                async move {
                    let base = pool.take()?;
                    let result = four_calls(&client, &base, &data).await;
                    pool.give(base);
                    result
                }
            },
            &options(concurrency, UPDATE_OPS),
        )
        .await?;
        report.row(&name, checked(&name, stats)?);

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
        let name = format!("update c{concurrency} backend");
        let before = bench::harness::scrape(metrics_port)?;
        let (stats, cost) = probe
            .measure(bench::run(
                move |_| {
                    let (t, pool, value) = (Arc::clone(&t), Arc::clone(&pool), value2.clone());
                    async move {
                        let (id, rev) = pool.take()?;
                        let result = t.update(&id, rev, &value, None).await;
                        pool.give((id, rev + 1));
                        result.map_err(|s| s.to_string())
                    }
                },
                &options(concurrency, UPDATE_OPS),
            ))
            .await?;
        report.row_with_cost(&name, checked(&name, stats)?, cost);
        bench::harness::split(
            &mut report,
            &name,
            &before,
            &bench::harness::scrape(metrics_port)?,
            "OnUpdate",
            &["kv2_read", "kv2_write"],
        );
        let backend_row = format!("update c{concurrency} backend");
        report.compare(&backend_row, &format!("update c{concurrency} direct"))?;
        report.compare(&backend_row, &format!("update c{concurrency} direct-4"))?;
        // direct-4 makes the backend's own store calls.
        p50_over(
            &mut report,
            &backend_row,
            &format!("update c{concurrency} direct-4"),
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
    drop(bao);
    Ok(report)
}

/// What the backend does for one OnUpdate of a new revision, as plain
/// vaultrs calls: read the head, claim the revision in it (cas), write the
/// revision create-only (cas=0), commit (cas).
async fn four_calls(
    client: &VaultClient,
    base: &str,
    data: &Map<String, Json>,
) -> Result<(), String> {
    let head_path = format!("{base}/meta");
    let (current, version) = read(client, &head_path).await?;
    let latest = current
        .get("latest")
        .and_then(Json::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{head_path} has no latest"))?;
    let next = latest + 1;
    let claim = Intent::Write {
        rev: next,
        nonce: "0000000000000001".to_owned(),
        digest: "00000000000000000000000000000001".to_owned(),
        since: 1,
    };
    let claimed = set_cas(
        client,
        &head_path,
        &head(latest, Some(claim)).to_map(),
        version,
    )
    .await?;
    let rev_path = format!("{base}/{LIFE}/{next}");
    set_cas(client, &rev_path, data, 0).await?;
    set_cas(client, &head_path, &head(next, None).to_map(), claimed).await?;
    Ok(())
}
