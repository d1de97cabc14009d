//! GetValue and OnUpdate through the `kubernetes-secret-backend` binary
//! (gRPC) against the same Secrets API calls made directly with kube, in one
//! run, on a real kube-apiserver + etcd (testkit::kube).
//!
//! `cargo bench -p kubernetes-secret --bench direct` (needs the binaries of
//! tests/kube/build.sh). Rows, at concurrency 1 and 32:
//! - `get cN backend`: GetValue of revision 1 through the backend;
//! - `get cN direct`: the two GETs the backend makes for it (the head
//!   Secret, then the revision Secret, whose name the head's life gives);
//! - `update cN backend`: OnUpdate to the next revision, each worker on its
//!   own TypeInstance;
//! - `update cN direct`: one create of a Secret (the write a revision needs);
//! - `update cN direct-5`: the five calls the backend makes for one
//!   OnUpdate (GET the head, PUT the claim at its resourceVersion, GET the
//!   revision Secret, create it, PUT the commit);
//! - `floor cN forwarder` / `floor cN direct`: the two GETs of the get rows
//!   through a process that only copies bytes (TLS passes through), and
//!   straight;
//! - `get c1 64 KiB`, ...: the value-size sweep, up to the backend's limit
//!   (1 MiB less the data key's 5 bytes).
//!
//! Every backend row carries the backend's CPU time per call and peak RSS
//! (from /proc), the forwarder rows the forwarder's; the first backend row
//! its start to SERVING and idle RSS.
//!
//! Timings are printed, never asserted. Without `--bench` it does nothing.

use std::{
    collections::{BTreeMap, HashMap},
    process::ExitCode,
    sync::Arc,
    time::Instant,
};

use bench::{
    ProcessProbe, Report, RunOptions,
    cli::make_value,
    harness::{CyclingOp, Pool, Startup, checked, p50_over},
};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use kubernetes_secret::secret_key;
use testkit::{BackendProcess, kube::Cluster};

const VALUE_SIZE: usize = 1024;
// Enough calls that each row's backend CPU spans some 30 or more 10 ms ticks.
const GET_OPS: u64 = 4000;
/// Alternating backend/direct rounds the get rows are split into.
const GET_ROUNDS: u64 = 20;
const UPDATE_OPS: u64 = 800;
const WARMUP_OPS: u64 = 50;
const CONCURRENCY: [usize; 2] = [1, 32];
const GET_IDS: usize = 16;

fn main() -> ExitCode {
    bench::harness::bench_main("kubernetes-secret direct bench", bench_all)
}

fn options(concurrency: usize, ops: u64) -> RunOptions {
    RunOptions {
        concurrency,
        duration: None,
        ops: Some(ops),
        warmup_ops: WARMUP_OPS,
    }
}

fn secret(name: &str, value: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            "value".to_owned(),
            ByteString(value.to_vec()),
        )])),
        ..Default::default()
    }
}

/// The GETs of the head and of revision 1's Secret of each of `ids` in
/// turn, as the backend makes them for GetValue (`names`: id → revision 1's
/// Secret, found once by label).
fn secret_get_cycling(
    api: &Arc<Api<Secret>>,
    ids: &Arc<[String]>,
    names: &Arc<HashMap<String, String>>,
) -> CyclingOp {
    let (api, names) = (Arc::clone(api), Arc::clone(names));
    bench::harness::cycling(ids, move |id| {
        let head = format!("capact-{}", secret_key(id));
        let rev = names.get(id).cloned().unwrap_or_default();
        let api = Arc::clone(&api);
        async move {
            api.get(&head)
                .await
                .map_err(|e| format!("get {head}: {e}"))?;
            api.get(&rev)
                .await
                .map(drop)
                .map_err(|e| format!("get {rev}: {e}"))
        }
    })
}

/// Revision 1's Secret of each of `ids` (its name carries the head's life).
async fn revision_names(
    api: &Api<Secret>,
    ids: &[String],
) -> Result<Arc<HashMap<String, String>>, String> {
    let mut out = HashMap::new();
    for id in ids {
        let selector = format!(
            "capact.io/type-instance-key={},capact.io/role=revision,capact.io/revision=1",
            secret_key(id)
        );
        let found = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("list revisions of {id}: {e}"))?;
        let name = found
            .items
            .first()
            .and_then(|s| s.metadata.name.clone())
            .ok_or_else(|| format!("no revision 1 of {id}"))?;
        out.insert(id.clone(), name);
    }
    Ok(Arc::new(out))
}

/// The cluster's admin client, connecting to `addr` instead of the API
/// server (same TLS: the forwarder only copies bytes).
async fn client_through(cluster: &Cluster, addr: &str) -> Result<kube::Client, String> {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig_path())
        .map_err(|e| format!("read kubeconfig: {e}"))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("kubeconfig: {e}"))?;
    config.cluster_url = format!("https://{addr}")
        .parse()
        .map_err(|e| format!("forwarder url: {e}"))?;
    kube::Client::try_from(config).map_err(|e| format!("kube client: {e}"))
}

async fn bench_all() -> Result<Report, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = Cluster::start().await;
    let ns = cluster.create_namespace("bench").await;
    let mut env: Vec<(String, String)> = cluster.env();
    env.push(("APP_K8S_NAMESPACE".into(), ns.clone()));
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let spawned = Instant::now();
    let backend = BackendProcess::start(
        env!("CARGO_BIN_EXE_kubernetes-secret-backend"),
        &["KUBECONFIG"],
        &env_ref,
    );
    let probe = ProcessProbe::new(backend.pid().ok_or("the backend is not running")?);
    let startup = Startup::measure(&backend.url, spawned, &probe).await;
    // testkit's wait panics with the backend's log if it never got there.
    let backend = backend.serving().await;
    let startup = startup?;
    let target = Arc::new(
        conformance::Target::connect(&conformance::Connect::plain(&backend.url), None).await?,
    );
    let secrets: Arc<Api<Secret>> = Arc::new(Api::namespaced(cluster.client().await, &ns));
    let forwarder = bench::forwarder::Forwarder::spawn(&format!("127.0.0.1:{}", cluster.port()))?;
    let forwarder_probe = ProcessProbe::new(forwarder.pid());
    let via_forwarder: Arc<Api<Secret>> = Arc::new(Api::namespaced(
        client_through(&cluster, &forwarder.addr()).await?,
        &ns,
    ));
    let value = make_value(VALUE_SIZE);

    let mut report = Report::new(
        "kubernetes-secret-backend (gRPC) vs kube direct, kube-apiserver v1.37.2 + etcd",
    );
    report
        .param("value_size", VALUE_SIZE)
        .param("get_ops", GET_OPS)
        .param("update_ops", UPDATE_OPS)
        .param("warmup_ops", WARMUP_OPS)
        .build_profile();

    let get_ids: Arc<[String]> = (0..GET_IDS).map(|i| format!("bench-get-{i}")).collect();
    for id in get_ids.iter() {
        target
            .create(id, &value)
            .await
            .map_err(|s| format!("create {id}: {s}"))?;
    }
    let names = revision_names(&secrets, &get_ids).await?;
    for concurrency in CONCURRENCY {
        // Backend and direct in alternating rounds (bench::run_paired): the
        // store's speed drifts during a run, and both sides of a round see
        // the same drift.
        let name = format!("get c{concurrency}");
        let (paired, cost) = probe
            .measure_paired(bench::run_paired(
                bench::harness::get_cycling(&target, &get_ids, 1),
                secret_get_cycling(&secrets, &get_ids, &names),
                &options(concurrency, GET_OPS),
                GET_ROUNDS,
            ))
            .await?;
        bench::harness::paired_rows_with_cost(&mut report, &name, "backend", paired, Some(cost))?;
        if concurrency == 1 {
            startup.annotate(&mut report);
        }
        // The floor: the same GET through a process that only copies bytes
        // (TLS passes through it untouched).
        bench::harness::floor_rows(
            &mut report,
            secret_get_cycling(&via_forwarder, &get_ids, &names),
            secret_get_cycling(&secrets, &get_ids, &names),
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

    let value = Arc::new(value);
    for concurrency in CONCURRENCY {
        // Direct: one create of a new Secret per call.
        let name = format!("update c{concurrency} direct");
        let (api, v) = (Arc::clone(&secrets), Arc::clone(&value));
        let stats = bench::run(
            move |seq| {
                let (api, v) = (Arc::clone(&api), Arc::clone(&v));
                async move {
                    let name = format!("direct-c{concurrency}-{seq}");
                    api.create(&PostParams::default(), &secret(&name, &v))
                        .await
                        .map(drop)
                        .map_err(|e| format!("create {name}: {e}"))
                }
            },
            &options(concurrency, UPDATE_OPS),
        )
        .await?;
        report.row(&name, checked(&name, stats)?);

        // Direct, the backend's five calls.
        let mut slots = Vec::new();
        for i in 0..concurrency {
            let head = format!("direct5-c{concurrency}-{i}");
            let mut s = secret(&head, b"");
            s.immutable = None;
            s.metadata.annotations = Some(BTreeMap::from([(
                "capact.io/latest-revision".to_owned(),
                "1".to_owned(),
            )]));
            secrets
                .create(&PostParams::default(), &s)
                .await
                .map_err(|e| format!("create {head}: {e}"))?;
            slots.push(head);
        }
        let pool = Pool::new(slots);
        let (api, v) = (Arc::clone(&secrets), Arc::clone(&value));
        let name = format!("update c{concurrency} direct-5");
        let stats = bench::run(
            move |_| {
                let (api, pool, v) = (Arc::clone(&api), Arc::clone(&pool), Arc::clone(&v));
                async move {
                    let head = pool.take()?;
                    let result = five_calls(&api, &head, &v).await;
                    pool.give(head);
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
            let id = format!("bench-upd-c{concurrency}-{i}");
            target
                .create(&id, &value)
                .await
                .map_err(|s| format!("create {id}: {s}"))?;
            slots.push((id, 2u32));
        }
        let pool = Pool::new(slots);
        let (t, v) = (Arc::clone(&target), Arc::clone(&value));
        let name = format!("update c{concurrency} backend");
        let (stats, cost) = probe
            .measure(bench::run(
                move |_| {
                    let (t, pool, v) = (Arc::clone(&t), Arc::clone(&pool), Arc::clone(&v));
                    async move {
                        let (id, rev) = pool.take()?;
                        let result = t.update(&id, rev, &v, None).await;
                        pool.give((id, rev + 1));
                        result.map_err(|s| s.to_string())
                    }
                },
                &options(concurrency, UPDATE_OPS),
            ))
            .await?;
        report.row_with_cost(&name, checked(&name, stats)?, cost);
        let backend_row = format!("update c{concurrency} backend");
        report.compare(&backend_row, &format!("update c{concurrency} direct"))?;
        report.compare(&backend_row, &format!("update c{concurrency} direct-5"))?;
        // direct-5 makes the backend's own store calls.
        p50_over(
            &mut report,
            &backend_row,
            &format!("update c{concurrency} direct-5"),
            "p50 over direct",
        )?;
    }

    bench::harness::size_sweep(&mut report, &target, &probe, "bench-sweep", WARMUP_OPS).await?;
    drop(backend);
    drop(cluster);
    Ok(report)
}

/// What the backend does for one OnUpdate of a new revision, as plain kube
/// calls: read the head, claim the revision in it at its resourceVersion,
/// look for the revision Secret, create it, commit the head.
async fn five_calls(api: &Api<Secret>, head: &str, value: &[u8]) -> Result<(), String> {
    let mut h = api
        .get(head)
        .await
        .map_err(|e| format!("get {head}: {e}"))?;
    let ann = h.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let latest: u32 = ann
        .get("capact.io/latest-revision")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{head} has no latest"))?;
    let next = latest + 1;
    ann.insert("capact.io/latest-revision".into(), next.to_string());
    let claimed = api
        .replace(head, &PostParams::default(), &h)
        .await
        .map_err(|e| format!("replace {head}: {e}"))?;
    let rev = format!("{head}-r{next}");
    api.get_opt(&rev)
        .await
        .map_err(|e| format!("get {rev}: {e}"))?;
    api.create(&PostParams::default(), &secret(&rev, value))
        .await
        .map_err(|e| format!("create {rev}: {e}"))?;
    api.replace(head, &PostParams::default(), &claimed)
        .await
        .map(drop)
        .map_err(|e| format!("commit {head}: {e}"))
}
