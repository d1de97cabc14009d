//! A real Kubernetes API server for tests: kube-apiserver and etcd built
//! from the published Go modules by `tests/kube/build.sh` (see
//! tests/kube/README.md), run on 127.0.0.1 with free ports, self-made
//! certificates (openssl), a static admin token and RBAC authorization.
//!
//! There is no controller manager and no kubelet: objects are stored,
//! validated, authorized and watched like on any cluster, but nothing
//! reconciles them (namespaces are never emptied, pods never run, service
//! account tokens come only from TokenRequest).
//!
//! ```ignore
//! let cluster = testkit::kube::Cluster::start().await;
//! let ns = cluster.create_namespace("secrets").await;
//! let client = cluster.client().await;            // admin (system:masters)
//! let sa = cluster.identity(&ns, "backend", rules).await; // RBAC-bound token
//! // give a process `sa.env()` (KUBECONFIG=…) or `cluster.env()` (admin)
//! ```

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{DynamicObject, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    discovery::{Discovery, Scope},
};
use tonic::codegen::http;

use crate::process::{Guard, free_port, read, spawn_logged, wait_for_port};

/// The Kubernetes release the test binaries are built from (tests/kube/build.sh);
/// the workspace's k8s-openapi feature matches it.
pub const KUBE_VERSION: &str = "v1.37.2";

/// The static admin token (user `admin`, group `system:masters`).
pub const ADMIN_TOKEN: &str = "capact-test-admin-token-3c9f1e";

/// A path to one of the cached binaries: `$<env_var>` if set, else
/// `$CAPACT_STORAGE_CACHE/kube/<version>/<name>` (default cache
/// `~/.cache/capact-storage`). Missing is a test failure with a hint.
pub fn kube_bin(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("CAPACT_STORAGE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/capact-storage")))
        .unwrap_or_else(|| PathBuf::from(".cache/capact-storage"));
    let p = cache.join("kube").join(KUBE_VERSION).join(name);
    assert!(
        p.is_file(),
        "{} was not found: run ./tests/run.sh or tests/kube/build.sh (or set {env_var})",
        p.display()
    );
    p
}

/// A service account's credentials: its token and a kubeconfig using it,
/// with the namespace as the context's default.
pub struct Identity {
    pub namespace: String,
    pub name: String,
    pub token: String,
    pub kubeconfig: PathBuf,
}

impl Identity {
    /// What a child process needs to act as this identity.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "KUBECONFIG".into(),
            self.kubeconfig.to_string_lossy().into_owned(),
        )]
    }

    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }
}

/// etcd plus kube-apiserver, killed (by PID) on drop, data in a tempdir.
pub struct Cluster {
    // Field order is drop order: the API server goes before its etcd.
    apiserver: Guard,
    etcd: Guard,
    port: u16,
    etcd_port: u16,
    dir: tempfile::TempDir,
}

static NAMES: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers ok.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        make_certs(dir.path());
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,\"system:masters\"\n"),
        )
        .expect("token file");
        let etcd_port = free_port();
        let etcd = start_etcd(dir.path(), etcd_port);
        let port = free_port();
        let mut cluster = Self {
            apiserver: Guard(None),
            etcd,
            port,
            etcd_port,
            dir,
        };
        write_kubeconfig(
            &cluster.kubeconfig_path(),
            &cluster.server_url(),
            &cluster.ca_path(),
            ADMIN_TOKEN,
            "default",
        );
        cluster.start_apiserver().await;
        cluster
    }

    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the API server's certificate (PEM).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A kubeconfig for the admin (system:masters), default namespace `default`.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn admin_token(&self) -> &'static str {
        ADMIN_TOKEN
    }

    /// `KUBECONFIG` of the admin, for a child process.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "KUBECONFIG".into(),
            self.kubeconfig_path().to_string_lossy().into_owned(),
        )]
    }

    /// An admin client.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig_path()).await
    }

    /// The API server's output so far (all its runs).
    pub fn apiserver_logs(&self) -> String {
        read(&self.dir.path().join("kube-apiserver.log"))
    }

    pub fn etcd_logs(&self) -> String {
        read(&self.dir.path().join("etcd.log"))
    }

    /// Kills the API server (etcd keeps the data); see [`Cluster::start_apiserver`].
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop();
    }

    /// Starts the API server again on the same port and waits until ready.
    pub async fn start_apiserver(&mut self) {
        self.apiserver.stop();
        let d = self.dir.path();
        let log = d.join("kube-apiserver.log");
        let p = |name: &str| d.join(name).to_string_lossy().into_owned();
        let mut cmd = Command::new(kube_bin("kube-apiserver", "KUBE_APISERVER_BIN"));
        cmd.arg(format!(
            "--etcd-servers=http://127.0.0.1:{}",
            self.etcd_port
        ))
        .arg(format!("--secure-port={}", self.port))
        .arg("--bind-address=127.0.0.1")
        // Only published in the (unreconciled) kubernetes.default
        // endpoints, which refuse a loopback address; nothing dials it.
        .arg("--advertise-address=192.0.2.1")
        .arg("--endpoint-reconciler-type=none")
        .arg(format!("--cert-dir={}", p("apiserver-certs")))
        .arg(format!("--tls-cert-file={}", p("server.crt")))
        .arg(format!("--tls-private-key-file={}", p("server.key")))
        .arg(format!("--client-ca-file={}", p("ca.crt")))
        .arg(format!("--token-auth-file={}", p("tokens.csv")))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", p("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            p("sa.key")
        ))
        .arg("--authorization-mode=RBAC")
        .arg("--service-cluster-ip-range=10.96.0.0/24")
        .arg("--profiling=false")
        .arg("--v=1");
        self.apiserver = spawn_logged(&mut cmd, &log);
        let started = Instant::now();
        wait_for_port(
            self.port,
            &mut self.apiserver,
            "kube-apiserver",
            &log,
            Duration::from_secs(60),
        );
        let client = self.client().await;
        let deadline = started + Duration::from_secs(90);
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return,
                _ if Instant::now() > deadline => panic!(
                    "kube-apiserver was not ready within 90s; its log:\n{}",
                    self.apiserver_logs()
                ),
                _ => {}
            }
            if let Some(status) = self.apiserver.exited() {
                panic!(
                    "kube-apiserver exited with {status}; its log:\n{}",
                    self.apiserver_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops and starts the API server on the same port.
    pub async fn restart(&mut self) {
        self.stop_apiserver();
        self.start_apiserver().await;
    }

    /// Kills both processes now (drop does the same).
    pub fn stop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
    }

    /// Creates a namespace named `<prefix>-<n>` (unique in this process).
    pub async fn create_namespace(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NAMES.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        name
    }

    /// A ServiceAccount `name` in `namespace` bound (Role + RoleBinding of
    /// the same name) to exactly `rules`, with a fresh token (TokenRequest,
    /// 1 hour) and a kubeconfig whose default namespace is `namespace`.
    pub async fn identity(&self, namespace: &str, name: &str, rules: Vec<PolicyRule>) -> Identity {
        let client = self.client().await;
        let meta = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        };
        let pp = PatchParams::apply("testkit").force();
        Api::<Role>::namespaced(client.clone(), namespace)
            .patch(
                name,
                &pp,
                &Patch::Apply(Role {
                    metadata: meta.clone(),
                    rules: Some(rules),
                }),
            )
            .await
            .expect("apply role");
        Api::<RoleBinding>::namespaced(client.clone(), namespace)
            .patch(
                name,
                &pp,
                &Patch::Apply(RoleBinding {
                    metadata: meta,
                    role_ref: RoleRef {
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        kind: "Role".into(),
                        name: name.to_owned(),
                    },
                    subjects: Some(vec![Subject {
                        kind: "ServiceAccount".into(),
                        name: name.to_owned(),
                        namespace: Some(namespace.to_owned()),
                        ..Default::default()
                    }]),
                }),
            )
            .await
            .expect("apply role binding");
        self.service_account_identity(namespace, name).await
    }

    /// Credentials of the ServiceAccount `name` in `namespace` (created if
    /// missing), for RBAC set up by other means (e.g. [`Cluster::apply`]).
    pub async fn service_account_identity(&self, namespace: &str, name: &str) -> Identity {
        let client = self.client().await;
        let sas = Api::<ServiceAccount>::namespaced(client, namespace);
        if sas
            .get_opt(name)
            .await
            .expect("read service account")
            .is_none()
        {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..Default::default()
                },
                ..Default::default()
            };
            sas.create(&PostParams::default(), &sa)
                .await
                .expect("create service account");
        }
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: None,
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .expect("token request")
            .status
            .expect("token request status")
            .token
            .expect("token in the token request status");
        let kubeconfig = self
            .dir
            .path()
            .join(format!("{namespace}.{name}.kubeconfig"));
        write_kubeconfig(
            &kubeconfig,
            &self.server_url(),
            &self.ca_path(),
            &token,
            namespace,
        );
        Identity {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            token,
            kubeconfig,
        }
    }

    /// Server-side applies every document of a multi-document YAML as the
    /// admin (kinds resolved by discovery); namespaced objects without a
    /// namespace go to `default_namespace`. Returns the applied objects.
    pub async fn apply(&self, yaml: &str, default_namespace: &str) -> Vec<DynamicObject> {
        let client = self.client().await;
        let discovery = Discovery::new(client.clone())
            .run()
            .await
            .expect("api discovery");
        let mut applied = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = <serde_json::Value as k8s_openapi::serde::Deserialize>::deserialize(doc)
                .expect("a YAML document");
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(value).expect("a Kubernetes object");
            let types = obj.types.clone().expect("apiVersion and kind");
            let gvk = kube::api::GroupVersionKind::try_from(&types).expect("group/version/kind");
            let (ar, caps) = discovery
                .resolve_gvk(&gvk)
                .unwrap_or_else(|| panic!("{gvk:?} is not served by the API server"));
            let name = obj.metadata.name.clone().expect("metadata.name");
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => Api::namespaced_with(
                    client.clone(),
                    obj.metadata
                        .namespace
                        .as_deref()
                        .unwrap_or(default_namespace),
                    &ar,
                ),
                Scope::Cluster => Api::all_with(client.clone(), &ar),
            };
            let out = api
                .patch(
                    &name,
                    &PatchParams::apply("testkit").force(),
                    &Patch::Apply(&obj),
                )
                .await
                .unwrap_or_else(|e| panic!("apply {} {name}: {e}", types.kind));
            applied.push(out);
        }
        applied
    }

    /// Installs the CustomResourceDefinition(s) in the YAML file at `path`
    /// and waits until each is Established (its API is served).
    pub async fn install_crd(&self, path: &Path) {
        let yaml = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let applied = self.apply(&yaml, "default").await;
        let crds = Api::<CustomResourceDefinition>::all(self.client().await);
        let deadline = Instant::now() + Duration::from_secs(30);
        for obj in applied {
            let name = obj.metadata.name.clone().unwrap_or_default();
            loop {
                let crd = crds.get(&name).await.expect("read crd");
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "crd {name} was not established within 30s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn client_from(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("kube client")
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str, namespace: &str) {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: test
  user:
    token: {token}
contexts:
- name: test
  context:
    cluster: test
    user: test
    namespace: {namespace}
current-context: test
",
        ca = ca.display()
    );
    std::fs::write(path, text).expect("write kubeconfig");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (install it: tests/setup.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a serving certificate for 127.0.0.1/localhost signed by it, and the
/// service-account signing key (all P-256: fast to make).
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "3650"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=capact-storage-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=kube-apiserver",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            "sa.key",
        ],
    );
    openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}

fn start_etcd(dir: &Path, port: u16) -> Guard {
    let peer = free_port();
    let log = dir.join("etcd.log");
    let mut cmd = Command::new(kube_bin("etcd", "ETCD_BIN"));
    cmd.arg("--name=test")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=test=http://127.0.0.1:{peer}"))
        // Test data: durability across a machine crash is not needed.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    let mut guard = spawn_logged(&mut cmd, &log);
    wait_for_port(port, &mut guard, "etcd", &log, Duration::from_secs(30));
    guard
}
