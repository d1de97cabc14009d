//! GetValue and OnUpdate through the `flux-helmrelease-backend` binary
//! (gRPC) against the Kubernetes calls they make, done directly with kube,
//! in one run on a real kube-apiserver + etcd (testkit::kube) with the Flux
//! HelmRelease CRD.
//!
//! `cargo bench -p flux-helmrelease --bench direct` (needs tests/kube/build.sh).
//! Rows, at concurrency 1 and 32, a fixed number of calls each:
//! - `get-latest cN backend`: GetValue of the latest revision (GET the
//!   HelmRelease, project it); `direct`: one GET of the HelmRelease;
//! - `get-older cN backend`: GetValue of revision 1 of 2 (GET the release,
//!   GET the snapshot); `direct`: the same two GETs;
//! - `update cN backend`: OnUpdate to the next revision, each worker on its
//!   own HelmRelease; `direct`: GET the release, create the snapshot
//!   ConfigMap, patch the annotation with its resourceVersion.
//!
//! Every backend row carries the backend's CPU time per call and peak RSS
//! (from /proc); the first backend row its start to SERVING and idle RSS.
//! The backend takes no value, so there is no value-size sweep.
//!
//! Timings are printed, never asserted. Without `--bench` it does nothing.

use std::{process::ExitCode, sync::Arc, time::Instant};

use bench::{
    ProcessProbe, Report, RunOptions,
    harness::{Pool, Startup, checked, p50_over},
};
use bytes::Bytes;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;
use shared::client::{Client, Connect, Timeouts};
use testkit::{BackendProcess, kube::Cluster};

// Enough calls that each row's backend CPU spans some 30 or more 10 ms ticks.
const GET_OPS: u64 = 3000;
const UPDATE_OPS: u64 = 500;
const WARMUP_OPS: u64 = 30;
const CONCURRENCY: [usize; 2] = [1, 32];

fn main() -> ExitCode {
    bench::harness::bench_main("flux-helmrelease direct bench", bench_all)
}

fn options(concurrency: usize, ops: u64) -> RunOptions {
    RunOptions {
        concurrency,
        duration: None,
        ops: Some(ops),
        warmup_ops: WARMUP_OPS,
    }
}

fn context(ns: &str, name: &str) -> Option<Bytes> {
    Some(Bytes::from(
        json!({"name": name, "namespace": ns}).to_string(),
    ))
}

async fn create_release(api: &Api<DynamicObject>, name: &str) -> Result<(), String> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": name},
        "spec": {"interval": "5m",
                 "chart": {"spec": {"chart": "podinfo", "version": "6.5.4",
                                    "sourceRef": {"kind": "HelmRepository", "name": "podinfo"}}},
                 "values": {"replicaCount": 1, "ingress": {"enabled": true, "hosts": ["a.example"]}}}
    }))
    .map_err(|e| e.to_string())?;
    api.create(&PostParams::default(), &obj)
        .await
        .map(drop)
        .map_err(|e| format!("create helmrelease {name}: {e}"))
}

async fn bench_all() -> Result<Report, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/helm.toolkit.fluxcd.io_helmreleases.yaml"
    );
    let cluster = Cluster::start().await;
    cluster.install_crd(std::path::Path::new(crd)).await;
    let ns = cluster.create_namespace("bench").await;
    let env = cluster.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let spawned = Instant::now();
    let backend = BackendProcess::start(
        env!("CARGO_BIN_EXE_flux-helmrelease-backend"),
        &["KUBECONFIG"],
        &env,
    );
    let probe = ProcessProbe::new(backend.pid().ok_or("the backend is not running")?);
    let startup = Startup::measure(&backend.url, spawned, &probe).await;
    // testkit's wait panics with the backend's log if it never got there.
    let backend = backend.serving().await;
    let startup = startup?;
    let hub = Arc::new(
        Client::connect(&Connect::plain(&backend.url), Timeouts::default())
            .await
            .map_err(|e| e.to_string())?,
    );
    let kube = cluster.client().await;
    let releases: Api<DynamicObject> =
        Api::namespaced_with(kube.clone(), &ns, &flux_helmrelease::helmrelease_resource());
    let config_maps: Api<ConfigMap> = Api::namespaced(kube.clone(), &ns);

    let mut report = Report::new(
        "flux-helmrelease-backend (gRPC) vs kube direct, kube-apiserver v1.37.2 + etcd",
    );
    report
        .param("get_ops", GET_OPS)
        .param("update_ops", UPDATE_OPS)
        .param("warmup_ops", WARMUP_OPS)
        .build_profile();

    // One tracked release with revisions 1 and 2.
    create_release(&releases, "read").await?;
    let ctx = context(&ns, "read");
    hub.create("bench-read", None, ctx.clone())
        .await
        .map_err(|s| s.to_string())?;
    hub.update("bench-read", 2, None, ctx.clone(), None)
        .await
        .map_err(|s| s.to_string())?;
    let snapshot = flux_helmrelease::snapshot::name("bench-read", 1);

    for concurrency in CONCURRENCY {
        let name = format!("get-latest c{concurrency} direct");
        let api = releases.clone();
        let stats = bench::run(
            move |_| {
                let api = api.clone();
                async move { api.get("read").await.map(drop).map_err(|e| e.to_string()) }
            },
            &options(concurrency, GET_OPS),
        )
        .await?;
        report.row(&name, checked(&name, stats)?);

        let name = format!("get-latest c{concurrency} backend");
        let (h, c) = (Arc::clone(&hub), ctx.clone());
        let (stats, cost) = probe
            .measure(bench::run(
                move |_| {
                    let (h, c) = (Arc::clone(&h), c.clone());
                    async move {
                        h.get("bench-read", 2, c)
                            .await
                            .map(drop)
                            .map_err(|s| s.to_string())
                    }
                },
                &options(concurrency, GET_OPS),
            ))
            .await?;
        report.row_with_cost(&name, checked(&name, stats)?, cost);
        if concurrency == 1 {
            startup.annotate(&mut report);
        }
        report.compare(&name, &format!("get-latest c{concurrency} direct"))?;
        p50_over(
            &mut report,
            &name,
            &format!("get-latest c{concurrency} direct"),
            "p50 over direct",
        )?;

        let name = format!("get-older c{concurrency} direct");
        let (api, cms, snap) = (releases.clone(), config_maps.clone(), snapshot.clone());
        let stats = bench::run(
            move |_| {
                let (api, cms, snap) = (api.clone(), cms.clone(), snap.clone());
                async move {
                    api.get("read").await.map_err(|e| e.to_string())?;
                    cms.get(&snap).await.map(drop).map_err(|e| e.to_string())
                }
            },
            &options(concurrency, GET_OPS),
        )
        .await?;
        report.row(&name, checked(&name, stats)?);

        let name = format!("get-older c{concurrency} backend");
        let (h, c) = (Arc::clone(&hub), ctx.clone());
        let (stats, cost) = probe
            .measure(bench::run(
                move |_| {
                    let (h, c) = (Arc::clone(&h), c.clone());
                    async move {
                        h.get("bench-read", 1, c)
                            .await
                            .map(drop)
                            .map_err(|s| s.to_string())
                    }
                },
                &options(concurrency, GET_OPS),
            ))
            .await?;
        report.row_with_cost(&name, checked(&name, stats)?, cost);
        report.compare(&name, &format!("get-older c{concurrency} direct"))?;
        p50_over(
            &mut report,
            &name,
            &format!("get-older c{concurrency} direct"),
            "p50 over direct",
        )?;
    }

    // OnUpdate: every worker on its own HelmRelease (one resourceVersion each).
    for concurrency in CONCURRENCY {
        let mut slots = Vec::new();
        for i in 0..concurrency {
            let name = format!("upd-c{concurrency}-{i}");
            create_release(&releases, &name).await?;
            let id = format!("bench-{name}");
            hub.create(&id, None, context(&ns, &name))
                .await
                .map_err(|s| s.to_string())?;
            slots.push((id, name, 2u32));
        }
        let pool = Pool::new(slots);
        let (h, ns2) = (Arc::clone(&hub), ns.clone());
        let name = format!("update c{concurrency} backend");
        let (stats, cost) = probe
            .measure(bench::run(
                move |_| {
                    let (h, pool, ns) = (Arc::clone(&h), Arc::clone(&pool), ns2.clone());
                    async move {
                        let (id, release, rev) = pool.take()?;
                        let result = h
                            .update(&id, rev, None, context(&ns, &release), None)
                            .await
                            .map(drop)
                            .map_err(|s| s.to_string());
                        pool.give((id, release, rev + 1));
                        result
                    }
                },
                &options(concurrency, UPDATE_OPS),
            ))
            .await?;
        report.row_with_cost(&name, checked(&name, stats)?, cost);

        let mut slots = Vec::new();
        for i in 0..concurrency {
            let name = format!("direct-c{concurrency}-{i}");
            create_release(&releases, &name).await?;
            slots.push((name, 1u32));
        }
        let pool = Pool::new(slots);
        let (api, cms) = (releases.clone(), config_maps.clone());
        let name = format!("update c{concurrency} direct");
        let stats = bench::run(
            move |_| {
                let (api, cms, pool) = (api.clone(), cms.clone(), Arc::clone(&pool));
                async move {
                    let (release, rev) = pool.take()?;
                    let result = direct_update(&api, &cms, &release, rev).await;
                    pool.give((release, rev + 1));
                    result
                }
            },
            &options(concurrency, UPDATE_OPS),
        )
        .await?;
        report.row(&name, checked(&name, stats)?);
        report.compare(
            &format!("update c{concurrency} backend"),
            &format!("update c{concurrency} direct"),
        )?;
        p50_over(
            &mut report,
            &format!("update c{concurrency} backend"),
            &format!("update c{concurrency} direct"),
            "p50 over direct",
        )?;
    }
    drop(backend);
    Ok(report)
}

/// The three calls of one OnUpdate, made directly.
async fn direct_update(
    api: &Api<DynamicObject>,
    cms: &Api<ConfigMap>,
    release: &str,
    rev: u32,
) -> Result<(), String> {
    let obj = api.get(release).await.map_err(|e| e.to_string())?;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": format!("{release}-direct-r{rev}")},
        "data": {"value.json": serde_json::to_string(&obj.data).map_err(|e| e.to_string())?}
    }))
    .map_err(|e| e.to_string())?;
    cms.create(&PostParams::default(), &cm)
        .await
        .map_err(|e| e.to_string())?;
    let patch = json!({"metadata": {
        "resourceVersion": obj.metadata.resource_version,
        "annotations": {"storage.capact.io/tracking": format!("{{\"latest\":{rev}}}")}
    }});
    api.patch(release, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
