//! A test Capact Hub: an in-process GraphQL server speaking the Local Hub's
//! API over HTTP/1 (`POST /graphql`), with the semantics of hub-js (the real
//! Hub, TypeScript over Neo4j) reimplemented over an in-memory model.
//!
//! Every request is parsed and validated against the Hub's real schema
//! (`tests/fixtures/capact-hub/local-schema.graphql`) with apollo-compiler,
//! so a client query with a misspelled field fails with HTTP 400 and is
//! recorded in [`Hub::rejected`]. Accepted operations are executed by
//! apollo-compiler's executor (aliases, fragments, variables, `__typename`,
//! null propagation) over resolvers written here.
//!
//! The subset implemented:
//! - Query `typeInstances(filter)` and `typeInstance(id)`, with every field
//!   of `TypeInstance` and its revisions (`spec.instrumentation` is null, as
//!   in the Hub);
//! - Mutation `createTypeInstance`, `createTypeInstances`,
//!   `updateTypeInstances`, `deleteTypeInstance`, `lockTypeInstances`,
//!   `unlockTypeInstances`, with hub-js' error texts.
//!
//! TypeInstances stored in an external backend are delegated over gRPC
//! (`shared::client`) to the `url` of the backend's storage TypeInstance,
//! in the order hub-js calls them and with its rollbacks. The test knobs
//! ([`Hub::set_down`], [`Hub::lose_next_responses`], authorization) act at
//! the HTTP layer, as a proxy in front of the Hub would.
//!
//! The server runs on its own thread (a current-thread runtime): the
//! executor's futures are not `Send`, and this keeps the Hub independent of
//! the flavour of the test's runtime.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use apollo_compiler::{
    ExecutableDocument, Schema,
    executable::OperationType,
    request::coerce_variable_values,
    resolvers::{AsyncObjectValue, AsyncResolvedValue, Execution, FieldError, ResolveInfo},
    response::{GraphQLError, JsonMap, JsonValue},
    validation::Valid,
};
use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::{Value as Json, json};
use shared::client::{Client, Connect, Timeouts};
use tonic::{Code, Status};

/// The id of the Hub's built-in (abstract) storage TypeInstance.
pub const BUILTIN_STORAGE_ID: &str = "00000000-0000-0000-0000-000000000000";

const BUILTIN_STORAGE_PATH: &str = "cap.core.type.hub.storage.neo4j";
const BUILTIN_STORAGE_REVISION: &str = "0.1.0";

const SCHEMA_SDL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/capact-hub/local-schema.graphql"
));

/// What a request must carry in `Authorization`; none required by default.
/// With both set, either is accepted.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    pub bearer_token: Option<String>,
    pub basic_auth: Option<(String, String)>,
}

/// One TypeInstance as the Hub holds it.
#[derive(Clone, Debug)]
pub struct StoredTypeInstance {
    pub id: String,
    pub type_path: String,
    pub type_revision: String,
    pub backend_id: String,
    pub backend_abstract: bool,
    pub locked_by: Option<String>,
    /// Ascending `resourceVersion`, starting at 1.
    pub revisions: Vec<StoredRevision>,
    /// Ids this TypeInstance USES, in the order the relations were made; the
    /// first is its storage backend's (the built-in one included, as in the
    /// Hub).
    pub uses: Vec<String>,
}

/// One revision. `value` is kept only for the built-in storage (an external
/// backend holds it); `context` is the backend context (none is `None`).
#[derive(Clone, Debug)]
pub struct StoredRevision {
    pub resource_version: u32,
    pub created_by: Option<String>,
    pub value: Option<Json>,
    pub context: Option<Json>,
    pub attributes: Vec<(String, String)>,
}

/// The test Hub; dropping it stops the server.
pub struct Hub {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    /// Serves on 127.0.0.1 on a free port, no authorization required.
    pub async fn start() -> Hub {
        Self::start_with(HubOptions::default()).await
    }

    /// Serves on 127.0.0.1 on a free port; requests without the
    /// `Authorization` that `opts` asks for get HTTP 401.
    pub async fn start_with(opts: HubOptions) -> Hub {
        // Parsed once per process and checked before anything listens: a
        // broken fixture is a clear failure here, not a 500 later.
        schema();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the test Hub");
        listener
            .set_nonblocking(true)
            .expect("make the test Hub's listener non-blocking");
        let addr = listener.local_addr().expect("the test Hub's address");
        let inner = Arc::new(Inner::new(opts));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let served = Arc::clone(&inner);
        // Built here, so that a failure fails the test that starts the Hub.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build the test Hub's runtime");
        let listener = {
            let _in_runtime = rt.enter();
            tokio::net::TcpListener::from_std(listener).expect("listen with the test Hub")
        };
        let thread = std::thread::Builder::new()
            .name("test-hub".into())
            .spawn(move || {
                // The executor's futures are not Send: one thread, local tasks.
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, accept_loop(listener, served, stop_rx));
            })
            .expect("start the test Hub's thread");
        Hub {
            inner,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    /// While down, every request gets HTTP 503 and the state is untouched.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// The next `n` mutations are applied but answered HTTP 502: the client
    /// cannot tell whether they happened.
    pub fn lose_next_responses(&self, n: usize) {
        self.inner.state().lose = n;
    }

    /// Every TypeInstance, in the order they were created.
    pub fn type_instances(&self) -> Vec<StoredTypeInstance> {
        let st = self.inner.state();
        let mut entries: Vec<&Entry> = st.tis.values().collect();
        entries.sort_by_key(|e| e.seq);
        entries.into_iter().map(|e| e.ti.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Option<StoredTypeInstance> {
        self.inner.state().tis.get(id).map(|e| e.ti.clone())
    }

    /// Root field names of every accepted request, in order.
    pub fn operations(&self) -> Vec<String> {
        self.inner.state().operations.clone()
    }

    /// The errors of every rejected request (one entry per request).
    pub fn rejected(&self) -> Vec<String> {
        self.inner.state().rejected.clone()
    }

    /// Sets `lockedBy` in the Hub only, without calling any backend.
    pub fn lock_directly(&self, id: &str, owner: &str) {
        if let Some(e) = self.inner.state().tis.get_mut(id) {
            e.ti.locked_by = Some(owner.to_owned());
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The thread only drops its tasks once told to stop, so this is quick
        // and the port is closed when drop returns.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---- state ----

struct Inner {
    opts: HubOptions,
    down: AtomicBool,
    state: Mutex<State>,
    /// Serializes mutations, as the Hub's write transactions are: a mutation
    /// checks, calls backends (without the state lock) and then commits.
    writer: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    tis: HashMap<String, Entry>,
    next_seq: u64,
    operations: Vec<String>,
    rejected: Vec<String>,
    lose: usize,
}

#[derive(Clone)]
struct Entry {
    ti: StoredTypeInstance,
    created_at: String,
    /// Creation order; breaks ties of `created_at`.
    seq: u64,
}

impl Inner {
    fn new(opts: HubOptions) -> Self {
        let mut st = State::default();
        // hub-js registers its built-in storage like this at start: stored in
        // itself, abstract, value kept in the Hub.
        st.insert(StoredTypeInstance {
            id: BUILTIN_STORAGE_ID.into(),
            type_path: BUILTIN_STORAGE_PATH.into(),
            type_revision: BUILTIN_STORAGE_REVISION.into(),
            backend_id: BUILTIN_STORAGE_ID.into(),
            backend_abstract: true,
            locked_by: None,
            revisions: vec![StoredRevision {
                resource_version: 1,
                created_by: Some("core".into()),
                value: Some(json!({"acceptValue": false, "contextSchema": null})),
                context: None,
                attributes: Vec::new(),
            }],
            uses: Vec::new(),
        });
        Self {
            opts,
            down: AtomicBool::new(false),
            state: Mutex::new(st),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// The state; a panic elsewhere does not make it unreadable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn authorized(&self, headers: &hyper::HeaderMap) -> bool {
        let HubOptions {
            bearer_token,
            basic_auth,
        } = &self.opts;
        if bearer_token.is_none() && basic_auth.is_none() {
            return true;
        }
        let Some((scheme, credentials)) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
        else {
            return false;
        };
        let bearer_ok = bearer_token
            .as_ref()
            .is_some_and(|t| scheme.eq_ignore_ascii_case("bearer") && credentials == t);
        let basic_ok = basic_auth.as_ref().is_some_and(|(user, pass)| {
            let want = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            scheme.eq_ignore_ascii_case("basic") && credentials == want
        });
        bearer_ok || basic_ok
    }
}

impl State {
    fn insert(&mut self, ti: StoredTypeInstance) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.tis.insert(
            ti.id.clone(),
            Entry {
                ti,
                created_at: rfc3339_now(),
                seq,
            },
        );
    }

    /// Ids of the TypeInstances that USE `id`, in creation order.
    fn used_by(&self, id: &str) -> Vec<String> {
        let mut users: Vec<&Entry> = self
            .tis
            .values()
            .filter(|e| e.ti.uses.iter().any(|u| u == id))
            .collect();
        users.sort_by_key(|e| e.seq);
        users.into_iter().map(|e| e.ti.id.clone()).collect()
    }
}

/// The Hub's list order: TypeRef path ascending, revision descending, newest
/// first.
fn sort_hub_order(entries: &mut [Entry]) {
    entries.sort_by(|a, b| {
        a.ti.type_path
            .cmp(&b.ti.type_path)
            .then_with(|| b.ti.type_revision.cmp(&a.ti.type_revision))
            .then_with(|| b.created_at.cmp(&a.created_at))
            .then_with(|| b.seq.cmp(&a.seq))
    });
}

fn schema() -> &'static Valid<Schema> {
    static SCHEMA: OnceLock<Valid<Schema>> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::parse_and_validate(SCHEMA_SDL, "local-schema.graphql")
            .unwrap_or_else(|e| panic!("the Hub's schema fixture is invalid: {e}"))
    })
}

// ---- HTTP ----

type Body = Full<Bytes>;

async fn accept_loop(
    listener: tokio::net::TcpListener,
    inner: Arc<Inner>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let inner = Arc::clone(&inner);
                    // spawn_local: the executor's futures are not Send.
                    tokio::task::spawn_local(async move {
                        let svc = service_fn(move |req| {
                            let inner = Arc::clone(&inner);
                            async move { Ok::<_, Infallible>(handle(&inner, req).await) }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                // Out of descriptors or the like: back off, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphQlRequest {
    query: Option<String>,
    variables: Option<Json>,
    operation_name: Option<String>,
}

async fn handle(inner: &Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    if inner.down.load(Ordering::SeqCst) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the test Hub is down\n");
    }
    if !inner.authorized(req.headers()) {
        let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer, Basic realm=\"test Hub\""),
        );
        return resp;
    }
    if req.uri().path() != "/graphql" {
        return text(StatusCode::NOT_FOUND, "only /graphql is served\n");
    }
    if req.method() != hyper::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only POST is served\n");
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reject(
                inner,
                vec![plain_error(format!("cannot read the body: {e}"))],
            );
        }
    };
    let request: GraphQlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return reject(
                inner,
                vec![plain_error(format!(
                    "the body is not a GraphQL request: {e}"
                ))],
            );
        }
    };
    execute(inner, request).await
}

fn plain_error(message: String) -> GraphQLError {
    GraphQLError {
        message,
        locations: Vec::new(),
        path: Vec::new(),
        extensions: JsonMap::new(),
    }
}

/// HTTP 400 without `data`, as apollo-server answers a request that does
/// not parse or validate; recorded for [`Hub::rejected`].
fn reject(inner: &Inner, errors: Vec<GraphQLError>) -> Response<Body> {
    let text = errors
        .iter()
        .map(|e| match e.locations.first() {
            Some(l) => format!("{} (at {}:{})", e.message, l.line, l.column),
            None => e.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ");
    inner.state().rejected.push(text);
    let body = serde_json::to_vec(&json!({ "errors": errors })).unwrap_or_default();
    json_response(StatusCode::BAD_REQUEST, body)
}

async fn execute(inner: &Arc<Inner>, request: GraphQlRequest) -> Response<Body> {
    let schema = schema();
    let Some(query) = request.query else {
        return reject(
            inner,
            vec![plain_error("Must provide query string.".into())],
        );
    };
    let doc = match ExecutableDocument::parse_and_validate(schema, query, "request.graphql") {
        Ok(doc) => doc,
        Err(e) => return reject(inner, e.errors.iter().map(|d| d.to_json()).collect()),
    };
    let op = match doc.operations.get(request.operation_name.as_deref()) {
        Ok(op) => op,
        Err(e) => return reject(inner, vec![e.to_graphql_error(&doc.sources)]),
    };
    let raw_variables = match request.variables {
        None | Some(Json::Null) => JsonMap::new(),
        Some(v @ Json::Object(_)) => match JsonValue::from(v) {
            JsonValue::Object(map) => map,
            _ => JsonMap::new(),
        },
        Some(_) => {
            return reject(
                inner,
                vec![plain_error(
                    "Variables must be provided as an Object".into(),
                )],
            );
        }
    };
    let variables = match coerce_variable_values(schema, op, &raw_variables) {
        Ok(v) => v,
        Err(e) => return reject(inner, vec![e.to_graphql_error(&doc.sources)]),
    };

    let is_mutation = op.operation_type == OperationType::Mutation;
    let lose = {
        let mut st = inner.state();
        st.operations
            .extend(op.root_fields(&doc).map(|f| f.name.to_string()));
        let lose = is_mutation && st.lose > 0;
        if lose {
            st.lose -= 1;
        }
        lose
    };
    let root = if is_mutation {
        Obj::Mutation(Arc::clone(inner))
    } else {
        Obj::Query(Arc::clone(inner))
    };
    let _writer = if is_mutation {
        Some(inner.writer.lock().await)
    } else {
        None
    };
    let executed = Execution::new(schema, &doc)
        .operation(op)
        .coerced_variable_values(&variables)
        // apollo-server 3 (the Hub's) answers introspection outside production.
        .enable_schema_introspection(true)
        .execute_async(&root)
        .await;
    let mut response = match executed {
        Ok(r) => r,
        Err(e) => return reject(inner, vec![e.to_graphql_error(&doc.sources)]),
    };
    // apollo-compiler prefixes resolver errors; the Hub (graphql-js) sends
    // the thrown message as is, and clients match on it.
    for e in &mut response.errors {
        if let Some(message) = e.message.strip_prefix("resolver error: ") {
            e.message = message.to_owned();
        }
    }
    if lose {
        // Applied, but the answer is lost on the way back.
        return text(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
    }
    match serde_json::to_vec(&response) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot serialize the response\n",
        ),
    }
}

// ---- GraphQL objects ----

/// One revision with what its resolvers need of its TypeInstance.
#[derive(Clone)]
struct RevView {
    ti_id: String,
    backend_id: String,
    backend_abstract: bool,
    rev: StoredRevision,
}

/// Every object type of the schema this Hub resolves; a TypeInstance is a
/// snapshot taken when its parent field was resolved.
enum Obj {
    Query(Arc<Inner>),
    Mutation(Arc<Inner>),
    TypeInstance(Arc<Inner>, Box<Entry>),
    Revision(Arc<Inner>, Box<RevView>),
    Metadata(Vec<(String, String)>),
    Spec(Arc<Inner>, Box<RevView>),
    SpecBackend(Option<Json>),
    TypeRef(String, String),
    BackendRef(String, bool),
    Attribute(String, String),
    Created { id: String, alias: String },
}

/// Invariant in its lifetime (a stream of itself), so every resolver is
/// generic over it rather than returning `'static`.
type Resolved<'a> = Result<AsyncResolvedValue<'a>, FieldError>;

fn field_error(message: impl Into<String>) -> FieldError {
    FieldError {
        message: message.into(),
    }
}

fn leaf<'a>(value: Json) -> AsyncResolvedValue<'a> {
    AsyncResolvedValue::leaf(JsonValue::from(value))
}

fn opt_leaf<'a>(value: Option<impl Into<Json>>) -> AsyncResolvedValue<'a> {
    leaf(value.map_or(Json::Null, Into::into))
}

fn objects<'a>(items: impl IntoIterator<Item = Obj>) -> AsyncResolvedValue<'a> {
    AsyncResolvedValue::list(
        items
            .into_iter()
            .map(AsyncResolvedValue::object)
            .collect::<Vec<_>>(),
    )
}

fn arg<T: DeserializeOwned>(args: &Json, name: &str) -> Result<T, FieldError> {
    serde_json::from_value(args.get(name).cloned().unwrap_or(Json::Null))
        .map_err(|e| field_error(format!("argument {name}: {e}")))
}

impl AsyncObjectValue for Obj {
    fn type_name(&self) -> &str {
        match self {
            Obj::Query(_) => "Query",
            Obj::Mutation(_) => "Mutation",
            Obj::TypeInstance(..) => "TypeInstance",
            Obj::Revision(..) => "TypeInstanceResourceVersion",
            Obj::Metadata(_) => "TypeInstanceResourceVersionMetadata",
            Obj::Spec(..) => "TypeInstanceResourceVersionSpec",
            Obj::SpecBackend(_) => "TypeInstanceResourceVersionSpecBackend",
            Obj::TypeRef(..) => "TypeInstanceTypeReference",
            Obj::BackendRef(..) => "TypeInstanceBackendReference",
            Obj::Attribute(..) => "AttributeReference",
            Obj::Created { .. } => "CreateTypeInstanceOutput",
        }
    }

    fn resolve_field<'a>(
        &'a self,
        info: &'a ResolveInfo<'a>,
    ) -> BoxFuture<'a, Result<AsyncResolvedValue<'a>, FieldError>> {
        let field = info.field_name();
        let args = serde_json::to_value(info.arguments()).unwrap_or(Json::Null);
        match self {
            Obj::Mutation(inner) => {
                let inner = Arc::clone(inner);
                Box::pin(async move { mutation(&inner, field, &args).await })
            }
            Obj::Spec(inner, rev) if field == "value" => {
                let inner = Arc::clone(inner);
                let rev = rev.clone();
                Box::pin(async move { spec_value(&inner, &rev).await })
            }
            _ => {
                let out = self.resolve_now(field, &args);
                Box::pin(async move { out })
            }
        }
    }
}

impl Obj {
    /// Every field that needs no backend.
    fn resolve_now<'a>(&self, field: &str, args: &Json) -> Resolved<'a> {
        let unknown = || {
            Err(field_error(format!(
                "the test Hub does not implement {}.{field}",
                self.type_name()
            )))
        };
        match self {
            Obj::Query(inner) => match field {
                "typeInstances" => {
                    let filter: Option<Filter> = arg(args, "filter")?;
                    let filter = filter.unwrap_or_default();
                    let mut found: Vec<Entry> = inner
                        .state()
                        .tis
                        .values()
                        .filter(|e| filter.matches(&e.ti))
                        .cloned()
                        .collect();
                    sort_hub_order(&mut found);
                    Ok(objects(found.into_iter().map(|e| {
                        Obj::TypeInstance(Arc::clone(inner), Box::new(e))
                    })))
                }
                "typeInstance" => {
                    let id: String = arg(args, "id")?;
                    let found = inner.state().tis.get(&id).cloned();
                    Ok(AsyncResolvedValue::nullable_object(found.map(|e| {
                        Obj::TypeInstance(Arc::clone(inner), Box::new(e))
                    })))
                }
                _ => unknown(),
            },
            Obj::TypeInstance(inner, e) => {
                let ti = &e.ti;
                let rev = |r: Option<&StoredRevision>| {
                    AsyncResolvedValue::nullable_object(
                        r.map(|r| Obj::Revision(Arc::clone(inner), Box::new(rev_view(ti, r)))),
                    )
                };
                let related = |ids: &[String]| {
                    let st = inner.state();
                    let mut found: Vec<Entry> = ids
                        .iter()
                        .filter_map(|id| st.tis.get(id).cloned())
                        .collect();
                    drop(st);
                    sort_hub_order(&mut found);
                    objects(
                        found
                            .into_iter()
                            .map(|e| Obj::TypeInstance(Arc::clone(inner), Box::new(e))),
                    )
                };
                match field {
                    "id" => Ok(leaf(ti.id.clone().into())),
                    "createdAt" => Ok(leaf(e.created_at.clone().into())),
                    "lockedBy" => Ok(opt_leaf(ti.locked_by.clone())),
                    "typeRef" => Ok(AsyncResolvedValue::object(Obj::TypeRef(
                        ti.type_path.clone(),
                        ti.type_revision.clone(),
                    ))),
                    "backend" => Ok(AsyncResolvedValue::object(Obj::BackendRef(
                        ti.backend_id.clone(),
                        ti.backend_abstract,
                    ))),
                    "latestResourceVersion" => Ok(rev(ti.revisions.last())),
                    "firstResourceVersion" => Ok(rev(ti.revisions.first())),
                    "previousResourceVersion" => Ok(rev(ti.revisions.iter().rev().nth(1))),
                    "resourceVersion" => {
                        let wanted: i64 = arg(args, "resourceVersion")?;
                        Ok(rev(ti
                            .revisions
                            .iter()
                            .find(|r| i64::from(r.resource_version) == wanted)))
                    }
                    "resourceVersions" => {
                        Ok(objects(ti.revisions.iter().map(|r| {
                            Obj::Revision(Arc::clone(inner), Box::new(rev_view(ti, r)))
                        })))
                    }
                    "uses" => Ok(related(&ti.uses)),
                    "usedBy" => {
                        let users = inner.state().used_by(&ti.id);
                        Ok(related(&users))
                    }
                    _ => unknown(),
                }
            }
            Obj::Revision(inner, r) => match field {
                "resourceVersion" => Ok(leaf(r.rev.resource_version.into())),
                "createdBy" => Ok(opt_leaf(r.rev.created_by.clone())),
                "metadata" => Ok(AsyncResolvedValue::object(Obj::Metadata(
                    r.rev.attributes.clone(),
                ))),
                "spec" => Ok(AsyncResolvedValue::object(Obj::Spec(
                    Arc::clone(inner),
                    r.clone(),
                ))),
                _ => unknown(),
            },
            Obj::Metadata(attrs) => match field {
                "attributes" => Ok(objects(
                    attrs
                        .iter()
                        .map(|(p, r)| Obj::Attribute(p.clone(), r.clone())),
                )),
                _ => unknown(),
            },
            Obj::Spec(_, r) => match field {
                "backend" => Ok(AsyncResolvedValue::object(Obj::SpecBackend(
                    r.rev.context.clone(),
                ))),
                // Not implemented by the Hub either.
                "instrumentation" => Ok(AsyncResolvedValue::null()),
                _ => unknown(),
            },
            Obj::SpecBackend(context) => match field {
                "context" => Ok(opt_leaf(context.clone())),
                _ => unknown(),
            },
            Obj::TypeRef(path, revision) | Obj::Attribute(path, revision) => match field {
                "path" => Ok(leaf(path.clone().into())),
                "revision" => Ok(leaf(revision.clone().into())),
                _ => unknown(),
            },
            Obj::BackendRef(id, abstract_) => match field {
                "id" => Ok(leaf(id.clone().into())),
                "abstract" => Ok(leaf((*abstract_).into())),
                _ => unknown(),
            },
            Obj::Created { id, alias } => match field {
                "id" => Ok(leaf(id.clone().into())),
                "alias" => Ok(leaf(alias.clone().into())),
                _ => unknown(),
            },
            Obj::Mutation(_) => unknown(),
        }
    }
}

fn rev_view(ti: &StoredTypeInstance, rev: &StoredRevision) -> RevView {
    RevView {
        ti_id: ti.id.clone(),
        backend_id: ti.backend_id.clone(),
        backend_abstract: ti.backend_abstract,
        rev: rev.clone(),
    }
}

/// `spec.value`: the stored value for the built-in storage, else GetValue
/// from the backend; a failure is an error on this field only.
async fn spec_value<'a>(inner: &Inner, r: &RevView) -> Resolved<'a> {
    let value = if r.backend_abstract {
        r.rev.value.clone()
    } else {
        let fetched = async {
            let spec = backend_spec(inner, &r.backend_id)?;
            fetch_value(
                &spec,
                &r.ti_id,
                r.rev.resource_version,
                r.rev.context.as_ref(),
            )
            .await
        };
        Some(fetched.await.map_err(|e| field_error(e.message))?)
    };
    match value {
        // graphql-js' words, which the Hub answers with.
        None | Some(Json::Null) => Err(field_error(
            "Cannot return null for non-nullable field TypeInstanceResourceVersionSpec.value.",
        )),
        Some(v) => Ok(leaf(v)),
    }
}

// ---- filter ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    attributes: Option<Vec<Option<AttributeFilter>>>,
    type_ref: Option<TypeRefFilter>,
    created_by: Option<String>,
}

#[derive(Deserialize)]
struct AttributeFilter {
    path: String,
    rule: Option<String>,
    revision: Option<String>,
}

#[derive(Deserialize)]
struct TypeRefFilter {
    path: String,
    revision: Option<String>,
}

impl Filter {
    /// As the Hub's Cypher: the TypeRef matches, and some revision matches
    /// `createdBy` and the attribute rules together. (The Cypher checks
    /// several INCLUDE rules against one attribute at a time, so that two of
    /// them never match; here each must be met by some attribute.)
    fn matches(&self, ti: &StoredTypeInstance) -> bool {
        if let Some(tr) = &self.type_ref
            && (ti.type_path != tr.path
                || tr.revision.as_ref().is_some_and(|r| *r != ti.type_revision))
        {
            return false;
        }
        ti.revisions.iter().any(|rev| {
            let created_by_ok = self
                .created_by
                .as_ref()
                .is_none_or(|c| rev.created_by.as_ref() == Some(c));
            let has = |a: &AttributeFilter| {
                rev.attributes
                    .iter()
                    .any(|(p, r)| *p == a.path && a.revision.as_ref().is_none_or(|want| want == r))
            };
            let attributes_ok =
                self.attributes
                    .iter()
                    .flatten()
                    .flatten()
                    .all(|a| match a.rule.as_deref() {
                        Some("INCLUDE") => has(a),
                        Some("EXCLUDE") => !has(a),
                        _ => true,
                    });
            created_by_ok && attributes_ok
        })
    }
}

// ---- mutation inputs ----

/// `Some(Null)` for an explicit null, `None` when absent: hub-js encodes
/// them differently for a backend.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Json>, D::Error> {
    Json::deserialize(d).map(Some)
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    alias: Option<String>,
    created_by: Option<String>,
    type_ref: RefInput,
    attributes: Option<Vec<RefInput>>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Json>,
    backend: Option<BackendInput>,
}

#[derive(Deserialize, Clone)]
struct RefInput {
    path: String,
    revision: String,
}

#[derive(Deserialize, Clone)]
struct BackendInput {
    id: String,
    #[serde(default, deserialize_with = "present")]
    context: Option<Json>,
}

#[derive(Deserialize)]
struct UsesInput {
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateManyInput {
    type_instances: Vec<CreateInput>,
    uses_relations: Vec<UsesInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateItem {
    #[serde(rename = "ownerID")]
    owner_id: Option<String>,
    created_by: Option<String>,
    id: String,
    type_instance: UpdateInput,
}

#[derive(Deserialize)]
struct UpdateInput {
    attributes: Option<Vec<RefInput>>,
    value: Option<Json>,
    backend: Option<UpdateBackendInput>,
}

#[derive(Deserialize)]
struct UpdateBackendInput {
    context: Option<Json>,
}

#[derive(Deserialize)]
struct LockInput {
    ids: Vec<String>,
    #[serde(rename = "ownerID")]
    owner_id: String,
}

fn refs(list: &[RefInput]) -> Vec<(String, String)> {
    list.iter()
        .map(|a| (a.path.clone(), a.revision.clone()))
        .collect()
}

/// JavaScript truthiness, which hub-js tests values and contexts with.
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(_) | Json::Object(_)) => true,
    }
}

/// hub-js' encoding for the wire: objects, arrays and null as JSON, other
/// values as their text, nothing as empty bytes.
fn encode(v: Option<&Json>) -> Bytes {
    match v {
        None => Bytes::new(),
        Some(Json::String(s)) => Bytes::from(s.clone()),
        Some(v) => Bytes::from(v.to_string()),
    }
}

/// A stored context: JSON null is none.
fn context_of(v: Option<Json>) -> Option<Json> {
    v.filter(|c| !c.is_null())
}

// ---- errors ----

/// An error as hub-js carries it: a JavaScript error's name and message.
/// The name shows only where hub-js prints the whole error (aggregated).
#[derive(Debug)]
struct JsError {
    name: &'static str,
    message: String,
    grpc_code: Option<Code>,
}

impl JsError {
    fn plain(message: impl Into<String>) -> Self {
        Self {
            name: "Error",
            message: message.into(),
            grpc_code: None,
        }
    }

    /// nice-grpc's ClientError: `<path> <CODE>: <details>`.
    fn grpc(path: &str, code: Code, details: &str) -> Self {
        Self {
            name: "ClientError",
            message: format!("{path} {}: {details}", shared::error::code_name(code)),
            grpc_code: Some(code),
        }
    }

    fn full(&self) -> String {
        format!("{}: {}", self.name, self.message)
    }
}

/// hub-js' aggregateError: a header and one `* ` line per error.
fn aggregate(errors: &[JsError]) -> String {
    let header = match errors.len() {
        0 => String::new(),
        n => format!("{n} error occurred:\n\t* "),
    };
    let items: Vec<String> = errors.iter().map(JsError::full).collect();
    format!("{header}{}", items.join("\n\t* "))
}

/// A TypeInstance changed between the checks and the commit (only a
/// concurrent request or [`Hub::lock_directly`] can do that).
fn conflict(id: &str) -> JsError {
    JsError::plain(format!(
        "conflict: TypeInstance \"{id}\" changed while its storage backend was called"
    ))
}

// ---- storage backends ----

/// A storage TypeInstance's value, as hub-js reads it to reach the backend.
struct BackendSpec {
    id: String,
    url: String,
    accept_value: bool,
    context_schema: Option<Json>,
}

/// Reads and checks the backend's storage TypeInstance (the Hub's
/// `storageInstanceDetailsFetcher`; messages in ajv's words).
fn backend_spec(inner: &Inner, id: &str) -> Result<BackendSpec, JsError> {
    let fail = |m: String| {
        JsError::plain(format!(
            "failed to resolve the TypeInstance's backend \"{id}\": {m}"
        ))
    };
    let value = {
        let st = inner.state();
        let e = st
            .tis
            .get(id)
            .ok_or_else(|| fail("TypeInstance not found".into()))?;
        e.ti.revisions
            .last()
            .and_then(|r| r.value.clone())
            .unwrap_or(Json::Null)
    };
    let Some(obj) = value.as_object() else {
        return Err(fail("spec/value must be object".into()));
    };
    let mut errs = Vec::new();
    for required in ["url", "acceptValue"] {
        if !obj.contains_key(required) {
            errs.push(format!(
                "spec/value must have required property '{required}'"
            ));
        }
    }
    let url = obj.get("url").and_then(Json::as_str);
    if obj.contains_key("url") && url.is_none() {
        errs.push("spec/value/url must be string".into());
    }
    let accept_value = obj.get("acceptValue").and_then(Json::as_bool);
    if obj.contains_key("acceptValue") && accept_value.is_none() {
        errs.push("spec/value/acceptValue must be boolean".into());
    }
    let context_schema = obj.get("contextSchema").filter(|s| !s.is_null());
    if context_schema.is_some_and(|s| !s.is_object()) {
        errs.push("spec/value/contextSchema must be object".into());
    }
    match (url, accept_value) {
        (Some(url), Some(accept_value)) if errs.is_empty() => Ok(BackendSpec {
            id: id.to_owned(),
            url: url.to_owned(),
            accept_value,
            context_schema: context_schema.cloned(),
        }),
        _ => Err(fail(errs.join(", "))),
    }
}

impl BackendSpec {
    fn service(&self) -> &'static str {
        if self.accept_value {
            "ValueAndContextStorageBackend"
        } else {
            "ContextStorageBackend"
        }
    }

    fn path(&self, method: &str) -> String {
        format!("/storage_backend.{}/{method}", self.service())
    }

    fn grpc_error(&self, method: &str, status: &Status) -> JsError {
        JsError::grpc(&self.path(method), status.code(), status.message())
    }

    /// hub-js' validateInput: no value for a context backend, a context
    /// only where a schema is registered, and valid against it.
    fn validate_input(&self, value: Option<&Json>, context: Option<&Json>) -> Result<(), JsError> {
        let fail = |m: String| JsError::plain(format!("External backend \"{}\": {m}", self.id));
        if !self.accept_value && truthy(value) {
            return Err(fail("input value not allowed".into()));
        }
        let Some(context) = context.filter(|c| truthy(Some(c))) else {
            return Ok(());
        };
        let Some(schema) = &self.context_schema else {
            return Err(fail("input context not allowed".into()));
        };
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| fail(format!("invalid context schema: {e}")))?;
        let errors: Vec<String> = validator
            .iter_errors(context)
            .map(|e| format!("context{} {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(fail(format!("invalid input: {}", errors.join(", "))))
        }
    }

    /// Connects for one call. The Hub picks the service from the
    /// registration's `acceptValue`; a backend serving the other one
    /// answers UNIMPLEMENTED, as it would to the Hub.
    async fn connect(&self, method: &str) -> Result<Client, JsError> {
        let client = Client::connect(&Connect::plain(self.url.clone()), Timeouts::default())
            .await
            .map_err(|e| JsError::grpc(&self.path(method), Code::Unavailable, &e.to_string()))?;
        if client.accept_value() != self.accept_value {
            return Err(JsError::grpc(
                &self.path(method),
                Code::Unimplemented,
                &format!("unknown service storage_backend.{}", self.service()),
            ));
        }
        Ok(client)
    }
}

/// `JSON.parse` of what a backend sent.
fn decode_json(raw: &[u8]) -> Result<Json, JsError> {
    serde_json::from_slice(raw).map_err(|e| JsError {
        name: "SyntaxError",
        message: format!("invalid JSON from the storage backend: {e}"),
        grpc_code: None,
    })
}

/// The Hub's `Get`: GetValue of one revision, decoded as JSON.
async fn fetch_value(
    spec: &BackendSpec,
    id: &str,
    revision: u32,
    context: Option<&Json>,
) -> Result<Json, JsError> {
    spec.validate_input(None, context)?;
    let client = spec.connect("GetValue").await?;
    let raw = client
        .get(id, revision, Some(encode(context)))
        .await
        .map_err(|s| spec.grpc_error("GetValue", &s))?;
    let Some(raw) = raw else {
        return Err(JsError::plain(format!(
            "Got empty response for TypeInstance {id} from external backend {}",
            spec.id
        )));
    };
    decode_json(&raw)
}

// ---- mutations ----

async fn mutation<'a>(inner: &Arc<Inner>, field: &str, args: &Json) -> Resolved<'a> {
    match field {
        "createTypeInstance" => {
            let input: CreateInput = arg(args, "in")?;
            let created = create_type_instances(inner, vec![input], Vec::new())
                .await
                .map_err(|m| field_error(format!("failed to create TypeInstance: {m}")))?;
            let id = created.into_iter().next().map(|(_, id)| id);
            Ok(opt_leaf(id))
        }
        "createTypeInstances" => {
            let input: CreateManyInput = arg(args, "in")?;
            let created = create_type_instances(inner, input.type_instances, input.uses_relations)
                .await
                .map_err(field_error)?;
            Ok(objects(
                created
                    .into_iter()
                    .map(|(alias, id)| Obj::Created { id, alias }),
            ))
        }
        "updateTypeInstances" => {
            let items: Vec<Option<UpdateItem>> = arg(args, "in")?;
            let Some(items) = items.into_iter().collect::<Option<Vec<_>>>() else {
                return Err(field_error(
                    "failed to update TypeInstances: an item of `in` is null",
                ));
            };
            let updated = update_type_instances(inner, items)
                .await
                .map_err(field_error)?;
            Ok(objects(updated.into_iter().map(|e| {
                Obj::TypeInstance(Arc::clone(inner), Box::new(e))
            })))
        }
        "deleteTypeInstance" => {
            let id: String = arg(args, "id")?;
            let owner: Option<String> = arg(args, "ownerID")?;
            delete_type_instance(inner, &id, owner)
                .await
                .map_err(field_error)?;
            Ok(leaf(id.into()))
        }
        "lockTypeInstances" | "unlockTypeInstances" => {
            let input: LockInput = arg(args, "in")?;
            let lock = field == "lockTypeInstances";
            let ids = switch_locking(inner, input, lock)
                .await
                .map_err(field_error)?;
            Ok(AsyncResolvedValue::list(
                ids.into_iter()
                    .map(|id| leaf(id.into()))
                    .collect::<Vec<_>>(),
            ))
        }
        _ => Err(field_error(format!(
            "the test Hub does not implement Mutation.{field}"
        ))),
    }
}

/// One TypeInstance of a createTypeInstances call, defaults set.
struct NewTi {
    id: String,
    alias: String,
    backend_id: String,
    input: CreateInput,
}

impl NewTi {
    fn external(&self) -> bool {
        self.backend_id != BUILTIN_STORAGE_ID
    }

    fn context(&self) -> Option<&Json> {
        self.input.backend.as_ref().and_then(|b| b.context.as_ref())
    }
}

/// createTypeInstances: `(alias, id)` in input order, or the final message.
async fn create_type_instances(
    inner: &Inner,
    inputs: Vec<CreateInput>,
    uses: Vec<UsesInput>,
) -> Result<Vec<(String, String)>, String> {
    let items: Vec<NewTi> = inputs
        .into_iter()
        .map(|input| NewTi {
            id: uuid::Uuid::new_v4().to_string(),
            // As hub-js: a TypeInstance without alias gets a generated one.
            alias: input.alias.clone().unwrap_or_else(random_alias),
            backend_id: input
                .backend
                .as_ref()
                .map_or_else(|| BUILTIN_STORAGE_ID.to_owned(), |b| b.id.clone()),
            input,
        })
        .collect();

    let mut aliases = HashSet::new();
    if !items.iter().all(|t| aliases.insert(t.alias.as_str())) {
        return Err("Validation failed: Duplicated TypeInstance aliases. Please ensure that each TypeInstance alias is unique.".into());
    }
    if items.iter().any(|t| !t.external() && truthy(t.context())) {
        return Err(format!(
            "Validation failed: Built-in storage backend with ID {BUILTIN_STORAGE_ID} does not accept context"
        ));
    }

    // What the Hub deletes again if the call fails after storing (it records
    // every externally stored TypeInstance before the first OnCreate).
    let mut externally_stored: Vec<&NewTi> = Vec::new();
    let created = create_in_transaction(inner, &items, &uses, &mut externally_stored).await;
    match created {
        Ok(out) => Ok(out),
        Err(err) => {
            let mut errors = vec![err];
            errors.extend(rollback_created(inner, &externally_stored).await);
            Err(format!(
                "failed to create the TypeInstances: {}",
                aggregate(&errors)
            ))
        }
    }
}

async fn create_in_transaction<'t>(
    inner: &Inner,
    items: &'t [NewTi],
    uses: &[UsesInput],
    externally_stored: &mut Vec<&'t NewTi>,
) -> Result<Vec<(String, String)>, JsError> {
    let not_found: Vec<&str> = {
        let st = inner.state();
        items
            .iter()
            .filter(|t| !st.tis.contains_key(&t.backend_id))
            .map(|t| t.backend_id.as_str())
            .collect()
    };
    if !not_found.is_empty() {
        // JavaScript's array-to-string: joined by "," alone.
        return Err(JsError::plain(format!(
            "TypeInstances for storage backends with IDs \"{}\" were not found",
            not_found.join(",")
        )));
    }

    externally_stored.extend(items.iter().filter(|t| t.external()));
    let mut contexts: HashMap<&str, Json> = HashMap::new();
    for t in items.iter().filter(|t| t.external()) {
        let spec = backend_spec(inner, &t.backend_id)?;
        spec.validate_input(t.input.value.as_ref(), t.context())?;
        let client = spec.connect("OnCreate").await?;
        let value = spec.accept_value.then(|| encode(t.input.value.as_ref()));
        let returned = client
            .create(&t.id, value, Some(encode(t.context())))
            .await
            .map_err(|s| spec.grpc_error("OnCreate", &s))?;
        if let Some(raw) = returned {
            contexts.insert(&t.id, decode_json(&raw)?);
        }
    }

    let by_alias: HashMap<&str, &str> = items
        .iter()
        .map(|t| (t.alias.as_str(), t.id.as_str()))
        .collect();
    let relations: Vec<(String, String)> = uses
        .iter()
        .map(|u| {
            let resolve = |s: &str| by_alias.get(s).map_or(s, |id| *id).to_owned();
            (resolve(&u.from), resolve(&u.to))
        })
        .collect();

    let mut st = inner.state();
    let is_new = |id: &str| items.iter().any(|t| t.id == id);
    if relations.iter().any(|(from, to)| {
        !(is_new(from) || st.tis.contains_key(from)) || !(is_new(to) || st.tis.contains_key(to))
    }) {
        return Err(JsError::plain(
            "Failed to create some relations. Please verify, if you use proper aliases or IDs in relations definition.",
        ));
    }
    if let Some(t) = items.iter().find(|t| !st.tis.contains_key(&t.backend_id)) {
        return Err(conflict(&t.backend_id));
    }
    for t in items {
        let mut ti_uses = vec![t.backend_id.clone()];
        ti_uses.extend(
            relations
                .iter()
                .filter(|(from, _)| *from == t.id)
                .map(|(_, to)| to.clone()),
        );
        let context = match contexts.remove(t.id.as_str()) {
            Some(returned) => context_of(Some(returned)),
            None => context_of(t.context().cloned()),
        };
        st.insert(StoredTypeInstance {
            id: t.id.clone(),
            type_path: t.input.type_ref.path.clone(),
            type_revision: t.input.type_ref.revision.clone(),
            backend_id: t.backend_id.clone(),
            backend_abstract: !t.external(),
            locked_by: None,
            revisions: vec![StoredRevision {
                resource_version: 1,
                created_by: t.input.created_by.clone(),
                // An external backend holds the value, the Hub does not.
                value: if t.external() {
                    None
                } else {
                    t.input.value.clone().filter(|v| !v.is_null())
                },
                context,
                attributes: t.input.attributes.as_deref().map(refs).unwrap_or_default(),
            }],
            uses: ti_uses,
        });
    }
    // Relations from TypeInstances that already existed.
    for (from, to) in &relations {
        if !is_new(from)
            && let Some(e) = st.tis.get_mut(from)
        {
            e.ti.uses.push(to.clone());
        }
    }
    Ok(items
        .iter()
        .map(|t| (t.alias.clone(), t.id.clone()))
        .collect())
}

/// OnDelete of what was stored; the first NOT_FOUND ends it quietly (the
/// Hub's loop stops there too), any other error is reported.
async fn rollback_created(inner: &Inner, stored: &[&NewTi]) -> Option<JsError> {
    let wrap =
        |e: JsError| JsError::plain(format!("rollback externally stored values: {}", e.message));
    for t in stored {
        let attempt = async {
            let spec = backend_spec(inner, &t.backend_id)?;
            spec.validate_input(None, t.context())?;
            let client = spec.connect("OnDelete").await?;
            client
                .delete(&t.id, Some(encode(t.context())), None)
                .await
                .map_err(|s| spec.grpc_error("OnDelete", &s))
        };
        match attempt.await {
            Ok(()) => {}
            Err(e) if e.grpc_code == Some(Code::NotFound) => return None,
            Err(e) => return Some(wrap(e)),
        }
    }
    None
}

/// What an update stored in a backend, to delete again on failure.
struct StoredUpdate {
    id: String,
    backend_id: String,
    revision: u32,
    context: Option<Json>,
    owner: Option<String>,
}

async fn update_type_instances(
    inner: &Inner,
    mut items: Vec<UpdateItem>,
) -> Result<Vec<Entry>, String> {
    let mut stored = Vec::new();
    match update_in_transaction(inner, &mut items, &mut stored).await {
        Ok(updated) => Ok(updated),
        Err(err) => {
            let mut errors = vec![err];
            errors.extend(rollback_updated(inner, &stored).await);
            Err(format!(
                "failed to update TypeInstances: {}",
                aggregate(&errors)
            ))
        }
    }
}

/// As hub-js: first the external backends (OnUpdate, fetching the previous
/// value when none is given), then the Hub's own checks, then the commit.
async fn update_in_transaction(
    inner: &Inner,
    items: &mut [UpdateItem],
    stored: &mut Vec<StoredUpdate>,
) -> Result<Vec<Entry>, JsError> {
    // Latest revision and context of each existing external TypeInstance.
    let externals: HashMap<String, (String, u32, Option<Json>)> = {
        let st = inner.state();
        items
            .iter()
            .filter_map(|item| {
                let e = st.tis.get(&item.id)?;
                let latest = e.ti.revisions.last()?;
                (!e.ti.backend_abstract).then(|| {
                    (
                        item.id.clone(),
                        (
                            e.ti.backend_id.clone(),
                            latest.resource_version,
                            latest.context.clone(),
                        ),
                    )
                })
            })
            .collect()
    };
    for item in items.iter_mut() {
        let Some((backend_id, latest, old_context)) = externals.get(&item.id) else {
            continue;
        };
        let spec = backend_spec(inner, backend_id)?;
        let mut value = item.type_instance.value.clone();
        if !truthy(value.as_ref()) && spec.accept_value {
            value = Some(fetch_value(&spec, &item.id, *latest, old_context.as_ref()).await?);
        }
        let given = item
            .type_instance
            .backend
            .as_ref()
            .and_then(|b| b.context.clone());
        let context = if truthy(given.as_ref()) {
            given
        } else {
            old_context.clone()
        };
        let revision = latest + 1;
        spec.validate_input(value.as_ref(), context.as_ref())?;
        let client = spec.connect("OnUpdate").await?;
        let wire_value = spec.accept_value.then(|| encode(value.as_ref()));
        let returned = client
            .update(
                &item.id,
                revision,
                wire_value,
                Some(encode(context.as_ref())),
                item.owner_id.clone(),
            )
            .await
            .map_err(|s| spec.grpc_error("OnUpdate", &s))?;
        stored.push(StoredUpdate {
            id: item.id.clone(),
            backend_id: backend_id.clone(),
            revision,
            context,
            owner: item.owner_id.clone(),
        });
        if let Some(raw) = returned {
            let new_context = decode_json(&raw)?;
            if truthy(Some(&new_context)) {
                item.type_instance.backend = Some(UpdateBackendInput {
                    context: Some(new_context),
                });
            }
        }
    }

    let mut st = inner.state();
    let not_found: Vec<&str> = items
        .iter()
        .filter(|i| !st.tis.contains_key(&i.id))
        .map(|i| i.id.as_str())
        .collect();
    if !not_found.is_empty() {
        return Err(JsError::plain(format!(
            "TypeInstances with IDs \"{}\" were not found",
            not_found.join("\", \"")
        )));
    }
    let locked: Vec<&str> = items
        .iter()
        .filter(|i| {
            st.tis.get(&i.id).is_some_and(|e| {
                e.ti.locked_by
                    .as_ref()
                    .is_some_and(|holder| i.owner_id.as_ref() != Some(holder))
            })
        })
        .map(|i| i.id.as_str())
        .collect();
    if !locked.is_empty() {
        return Err(JsError::plain(format!(
            "TypeInstances with IDs \"{}\" are locked by different owner",
            locked.join("\", \"")
        )));
    }
    for (id, (_, latest, _)) in &externals {
        let now = st
            .tis
            .get(id)
            .and_then(|e| e.ti.revisions.last())
            .map(|r| r.resource_version);
        if now != Some(*latest) {
            return Err(conflict(id));
        }
    }

    let mut updated = Vec::with_capacity(items.len());
    for item in items.iter() {
        let Some(e) = st.tis.get_mut(&item.id) else {
            return Err(conflict(&item.id));
        };
        let Some(prev) = e.ti.revisions.last().cloned() else {
            return Err(conflict(&item.id));
        };
        let input = &item.type_instance;
        e.ti.revisions.push(StoredRevision {
            resource_version: prev.resource_version + 1,
            created_by: item.created_by.clone(),
            value: if e.ti.backend_abstract {
                input.value.clone().filter(|v| !v.is_null()).or(prev.value)
            } else {
                None
            },
            context: match &input.backend {
                Some(b) => context_of(b.context.clone()),
                None => prev.context,
            },
            attributes: match &input.attributes {
                Some(a) => refs(a),
                None => prev.attributes,
            },
        });
        updated.push(e.clone());
    }
    Ok(updated)
}

/// OnDeleteRevision of what was stored; NOT_FOUND ends it quietly.
async fn rollback_updated(inner: &Inner, stored: &[StoredUpdate]) -> Option<JsError> {
    for s in stored {
        let attempt = async {
            let spec = backend_spec(inner, &s.backend_id)?;
            spec.validate_input(None, s.context.as_ref())?;
            let client = spec.connect("OnDeleteRevision").await?;
            // The context service's request has no context field.
            let context = spec.accept_value.then(|| encode(s.context.as_ref()));
            client
                .delete_revision(&s.id, s.revision, context, s.owner.clone())
                .await
                .map_err(|st| spec.grpc_error("OnDeleteRevision", &st))
        };
        match attempt.await {
            Ok(()) => {}
            Err(e) if e.grpc_code == Some(Code::NotFound) => return None,
            Err(e) => {
                return Some(JsError::plain(format!(
                    "rollback externally stored revision: {}",
                    e.message
                )));
            }
        }
    }
    None
}

/// Why `id` cannot be deleted by `owner` now, if it cannot.
fn delete_refusal(st: &State, id: &str, owner: Option<&String>) -> Option<JsError> {
    let Some(e) = st.tis.get(id) else {
        return Some(JsError::plain("TypeInstance was not found"));
    };
    if e.ti.locked_by.as_ref().is_some_and(|h| owner != Some(h)) {
        return Some(JsError::plain("TypeInstance is locked by different owner"));
    }
    let users = st.used_by(id);
    if !users.is_empty() {
        return Some(JsError::plain(format!(
            "TypeInstance is used by other TypeInstances, you must first remove {}",
            users.join("\", \"")
        )));
    }
    None
}

async fn delete_type_instance(
    inner: &Inner,
    id: &str,
    owner: Option<String>,
) -> Result<(), String> {
    let deleted = async {
        let external = {
            let st = inner.state();
            if let Some(refusal) = delete_refusal(&st, id, owner.as_ref()) {
                return Err(refusal);
            }
            st.tis.get(id).and_then(|e| {
                (!e.ti.backend_abstract).then(|| {
                    let context = e.ti.revisions.last().and_then(|r| r.context.clone());
                    (e.ti.backend_id.clone(), context)
                })
            })
        };
        // The Hub calls OnDelete before committing: a backend error keeps
        // the TypeInstance.
        if let Some((backend_id, context)) = external {
            let spec = backend_spec(inner, &backend_id)?;
            spec.validate_input(None, context.as_ref())?;
            let client = spec.connect("OnDelete").await?;
            client
                .delete(id, Some(encode(context.as_ref())), owner.clone())
                .await
                .map_err(|s| spec.grpc_error("OnDelete", &s))?;
        }
        let mut st = inner.state();
        if delete_refusal(&st, id, owner.as_ref()).is_some() {
            return Err(conflict(id));
        }
        st.tis.remove(id);
        Ok(())
    };
    deleted.await.map_err(|e| {
        format!(
            "failed to delete TypeInstance with ID \"{id}\": {}",
            e.message
        )
    })
}

/// Why `ids` cannot be (un)locked by `owner`, in the Hub's words.
fn locking_refusal(st: &State, ids: &[String], owner: &str) -> Option<JsError> {
    let not_found: Vec<&str> = ids
        .iter()
        .filter(|id| !st.tis.contains_key(*id))
        .map(String::as_str)
        .collect();
    let mut locked: Vec<&str> = Vec::new();
    for id in ids {
        let by_other = st
            .tis
            .get(id)
            .is_some_and(|e| e.ti.locked_by.as_ref().is_some_and(|h| h != owner));
        if by_other && !locked.contains(&id.as_str()) {
            locked.push(id);
        }
    }
    let mut errs = Vec::new();
    if !not_found.is_empty() {
        errs.push(format!(
            "TypeInstances with IDs \"{}\" were not found",
            not_found.join("\", \"")
        ));
    }
    if !locked.is_empty() {
        errs.push(format!(
            "TypeInstances with IDs \"{}\" are locked by different owner",
            locked.join("\", \"")
        ));
    }
    match errs.len() {
        0 => None,
        1 => Some(JsError::plain(format!("1 error occurred: {}", errs[0]))),
        n => Some(JsError::plain(format!(
            "{n} errors occurred: [{}]",
            errs.join(", ")
        ))),
    }
}

/// lockTypeInstances / unlockTypeInstances: all or nothing in the Hub; the
/// backends' OnLock/OnUnlock before the commit.
async fn switch_locking(
    inner: &Inner,
    input: LockInput,
    lock: bool,
) -> Result<Vec<String>, String> {
    let LockInput { ids, owner_id } = input;
    let switched = async {
        let externals: Vec<(String, String, Option<Json>)> = {
            let st = inner.state();
            if let Some(refusal) = locking_refusal(&st, &ids, &owner_id) {
                return Err(refusal);
            }
            ids.iter()
                .filter_map(|id| {
                    let e = st.tis.get(id)?;
                    (!e.ti.backend_abstract).then(|| {
                        let context = e.ti.revisions.last().and_then(|r| r.context.clone());
                        (id.clone(), e.ti.backend_id.clone(), context)
                    })
                })
                .collect()
        };
        for (id, backend_id, context) in &externals {
            let spec = backend_spec(inner, backend_id)?;
            spec.validate_input(None, context.as_ref())?;
            let wire_context = Some(encode(context.as_ref()));
            if lock {
                let client = spec.connect("OnLock").await?;
                client
                    .lock(id, &owner_id, wire_context)
                    .await
                    .map_err(|s| spec.grpc_error("OnLock", &s))?;
            } else {
                let client = spec.connect("OnUnlock").await?;
                client
                    .unlock(id, wire_context)
                    .await
                    .map_err(|s| spec.grpc_error("OnUnlock", &s))?;
            }
        }
        let mut st = inner.state();
        if locking_refusal(&st, &ids, &owner_id).is_some() {
            return Err(conflict(ids.first().map_or("", String::as_str)));
        }
        for id in &ids {
            if let Some(e) = st.tis.get_mut(id) {
                e.ti.locked_by = lock.then(|| owner_id.clone());
            }
        }
        Ok(())
    };
    let verb = if lock { "lock" } else { "unlock" };
    match switched.await {
        Ok(()) => Ok(ids),
        Err(e) => Err(format!("failed to {verb} TypeInstances: {}", e.message)),
    }
}

// ---- small helpers ----

/// Like the Hub's unique-names-generator aliases (adjective_color_animal).
fn random_alias() -> String {
    const ADJECTIVES: [&str; 8] = [
        "brave", "calm", "eager", "fancy", "gentle", "jolly", "lucky", "proud",
    ];
    const COLORS: [&str; 8] = [
        "amber", "blue", "coral", "green", "indigo", "olive", "red", "teal",
    ];
    const ANIMALS: [&str; 8] = [
        "badger", "crane", "gecko", "heron", "lynx", "otter", "panda", "walrus",
    ];
    let b = uuid::Uuid::new_v4().into_bytes();
    let pick = |list: &[&'static str; 8], i: usize| list[usize::from(b[i]) % list.len()];
    // The uuid's tail keeps two aliases of one call apart.
    format!(
        "{}_{}_{}_{:02x}{:02x}",
        pick(&ADJECTIVES, 0),
        pick(&COLORS, 1),
        pick(&ANIMALS, 2),
        b[14],
        b[15]
    )
}

/// Now as RFC 3339 UTC with milliseconds.
fn rfc3339_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_fixture_parses_and_validates() {
        schema();
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn aggregated_errors_read_as_in_hub_js() {
        let one = aggregate(&[JsError::plain("a")]);
        assert_eq!(one, "1 error occurred:\n\t* Error: a");
        let two = aggregate(&[
            JsError::grpc("/p/M", Code::NotFound, "gone"),
            JsError::plain("b"),
        ]);
        assert_eq!(
            two,
            "2 error occurred:\n\t* ClientError: /p/M NOT_FOUND: gone\n\t* Error: b"
        );
    }

    #[test]
    fn values_are_encoded_as_hub_js_does() {
        assert_eq!(encode(None), Bytes::new());
        assert_eq!(encode(Some(&Json::Null)), Bytes::from("null"));
        assert_eq!(encode(Some(&json!("x"))), Bytes::from("x"));
        assert_eq!(encode(Some(&json!({"a": 1}))), Bytes::from(r#"{"a":1}"#));
    }
}
