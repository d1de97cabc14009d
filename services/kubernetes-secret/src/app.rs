//! The application-facing Secret: the latest revision written where a
//! workload can mount it, named by the context (`appSecret`) and recorded in
//! the head Secret (`capact.io/app-secret`), so deletes need no context.
//!
//! The engine passes no context to the store, so each call runs in a
//! [`Request`] scope (a task-local) carrying what the context asked for and
//! the head versions this call has read or written; the store consults it
//! when it writes the head and when the engine calls `project`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::ObjectMeta;
use serde_json::{Value as Json, json};
use shared::{
    Context, Error, Result, TypeInstanceId,
    engine::{Head, Intent, rules},
};

use crate::store::{
    ID_ANNOTATION, LIFE_ANNOTATION, MAX_SECRET_DATA, REVISION_ANNOTATION, REVISION_LABEL,
    SecretStore, Version, foreign, labels, owned_as,
};

/// Annotation of an app Secret: the head's epoch when it was written.
pub const EPOCH_ANNOTATION: &str = "capact.io/epoch";

/// Where the latest revision is also written for a workload to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTarget {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl AppTarget {
    pub fn encode(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.key)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut it = s.splitn(3, '/');
        Some(Self {
            namespace: it.next()?.to_owned(),
            name: it.next()?.to_owned(),
            key: it.next()?.to_owned(),
        })
    }
}

/// The context schema (published through Describe and the registration).
pub fn context_schema() -> Json {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "appSecret": {
                "description": "A Secret that receives the latest revision under `key`, for a workload to mount",
                "type": "object",
                "properties": {
                    "namespace": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "name": {"type": "string", "maxLength": 253, "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                    "key": {"type": "string", "maxLength": 253, "pattern": "^[-._a-zA-Z0-9]+$"}
                },
                "required": ["name", "key"],
                "additionalProperties": false
            }
        },
        "additionalProperties": false
    })
}

/// The value limit with an app Secret: its data holds the key and the value.
pub fn check_size(value_len: u64, target: Option<&AppTarget>) -> Result<()> {
    if let Some(t) = target {
        let limit = MAX_SECRET_DATA.saturating_sub(t.key.len() as u64);
        if value_len > limit {
            return Err(Error::invalid_argument(format!(
                "value is larger than the kubernetes-secret backend's limit of {limit} bytes for an application-facing secret with key {}",
                t.key
            )));
        }
    }
    Ok(())
}

/// A head as stored: the engine's part and the app target beside it.
#[derive(Clone, Debug)]
pub struct HeadRecord {
    pub head: Head,
    pub app: Option<AppTarget>,
}

tokio::task_local! {
    static REQUEST: Arc<Request>;
}

/// What one call asked for and has seen; see the module doc.
#[derive(Default)]
pub struct Request {
    /// The app Secret named by the context; `None` keeps the current one.
    target: Option<AppTarget>,
    /// OnCreate: an existing TypeInstance with another target is not a retry.
    create: bool,
    /// The value's size (OnUpdate), checked against the target's key when
    /// the revision is claimed.
    value_len: Option<u64>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Head versions this call read or wrote, by tag.
    heads: HashMap<String, HeadRecord>,
    last: Option<String>,
    /// The target this call's commit replaced: removed once the new one is
    /// written.
    moved_from: Option<AppTarget>,
}

impl Request {
    pub fn new(target: Option<AppTarget>, create: bool, value_len: Option<u64>) -> Self {
        Request {
            target,
            create,
            value_len,
            seen: Mutex::default(),
        }
    }

    /// Runs `f` (one engine call) in this scope.
    pub async fn run<F: Future>(self, f: F) -> F::Output {
        REQUEST.scope(Arc::new(self), f).await
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The scope of the running call, if any (the store works without one, at
/// the cost of a GET of the head where the scope would have answered).
pub fn current() -> Option<Arc<Request>> {
    REQUEST.try_with(Arc::clone).ok()
}

/// Records a head version this call read or wrote.
pub fn remember(tag: &str, record: &HeadRecord) {
    if let Some(r) = current() {
        let mut seen = r.seen();
        seen.heads.insert(tag.to_owned(), record.clone());
        seen.last = Some(tag.to_owned());
    }
}

/// The head this call saw at `tag`.
pub fn recall(tag: &str) -> Option<HeadRecord> {
    current().and_then(|r| r.seen().heads.get(tag).cloned())
}

/// The head this call saw last (what `project` projects).
pub fn last() -> Option<HeadRecord> {
    let r = current()?;
    let seen = r.seen();
    seen.last.as_ref().and_then(|t| seen.heads.get(t)).cloned()
}

fn set_moved_from(old: AppTarget) {
    if let Some(r) = current() {
        r.seen().moved_from = Some(old);
    }
}

fn take_moved_from() -> Option<AppTarget> {
    current().and_then(|r| r.seen().moved_from.take())
}

/// What writing `next` over `prev` does to the app target.
#[derive(Debug, PartialEq, Eq)]
pub struct Transition {
    /// The target recorded with `next`.
    pub app: Option<AppTarget>,
    /// A target this call's commit replaced (removed after projecting).
    pub moved_from: Option<AppTarget>,
    /// The target of a dead life that `next` replaces (removed first).
    pub dead: Option<AppTarget>,
}

/// The target follows the head: a new life starts without one; this call's
/// commit records the target its context named; anything else keeps it.
/// A claim of a revision checks the value against the key it will be
/// written under, before anything is written.
pub fn transition(req: Option<&Request>, prev: &HeadRecord, next: &Head) -> Result<Transition> {
    if next.life != prev.head.life {
        return Ok(Transition {
            app: None,
            moved_from: None,
            dead: prev.app.clone(),
        });
    }
    let prev_claim = match &prev.head.intent {
        Some(Intent::Write { rev, .. }) => Some(*rev),
        _ => None,
    };
    let claiming = prev_claim.is_none() && matches!(next.intent, Some(Intent::Write { .. }));
    if claiming
        && let Some(r) = req
        && let Some(len) = r.value_len
    {
        check_size(len, r.target.as_ref().or(prev.app.as_ref()))?;
    }
    let committing = next.intent.is_none() && prev_claim == Some(next.latest);
    match req.and_then(|r| r.target.clone()) {
        Some(t) if committing => Ok(Transition {
            moved_from: prev.app.clone().filter(|o| *o != t),
            app: Some(t),
            dead: None,
        }),
        _ => Ok(Transition {
            app: prev.app.clone(),
            moved_from: None,
            dead: None,
        }),
    }
}

/// The app Secret's record of what it holds: (life, epoch, revision).
fn held(s: &Secret) -> (String, u64, u32) {
    let ann = s.metadata.annotations.as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k));
    (
        get(LIFE_ANNOTATION).cloned().unwrap_or_default(),
        get(EPOCH_ANNOTATION)
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
        get(REVISION_ANNOTATION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
    )
}

impl SecretStore {
    /// The app Secret named by the context, checked against the allowed
    /// namespaces; `None` when the context names none.
    pub fn app_target(&self, ctx: &Context) -> Result<Option<AppTarget>> {
        let Some(app) = ctx.object().and_then(|o| o.get("appSecret")) else {
            return Ok(None);
        };
        let field = |f: &str| app.get(f).and_then(Json::as_str).map(str::to_owned);
        let (Some(name), Some(key)) = (field("name"), field("key")) else {
            return Err(Error::invalid_argument(
                "context field '/appSecret' needs name and key",
            ));
        };
        let namespace = field("namespace").unwrap_or_else(|| self.namespace.clone());
        let allowed = namespace == self.namespace
            || self
                .app_namespaces
                .iter()
                .any(|a| a == "*" || *a == namespace);
        if !allowed {
            return Err(Error::invalid_argument(format!(
                "context field '/appSecret/namespace' names namespace {namespace}, where this backend may not write (APP_K8S_APP_SECRET_NAMESPACES)"
            )));
        }
        Ok(Some(AppTarget {
            namespace,
            name,
            key,
        }))
    }

    /// Fails if the app Secret exists and is not ours for this
    /// TypeInstance: checked before anything is written.
    pub async fn check_app(&self, id: &TypeInstanceId, target: &AppTarget) -> Result<()> {
        let secrets = self.secrets_in(&target.namespace);
        match secrets.get(&target.name).await? {
            Some(s) if !owned_as(&s, id, "app") => Err(foreign(&target.namespace, &target.name)),
            _ => Ok(()),
        }
    }

    /// The engine's `project` hook for a live TypeInstance: writes revision
    /// `rev` of the head `record` into its app Secret, then removes the one
    /// this call's commit moved away from.
    pub async fn project_app(
        &self,
        id: &TypeInstanceId,
        record: &HeadRecord,
        rev: u32,
        value: &[u8],
    ) -> Result<()> {
        let req = current();
        if let Some(r) = &req
            && r.create
            && r.target != record.app
        {
            // An existing TypeInstance with another app Secret: not a retry
            // of this create.
            return Err(rules::already_exists(id));
        }
        let Some(target) = &record.app else {
            return Ok(());
        };
        self.write_app(id, target, &record.head, rev, value).await?;
        if let Some(old) = take_moved_from()
            && old != *target
        {
            self.remove_app(id, &old, &record.head.life).await?;
        }
        Ok(())
    }

    /// Writes revision `rev` into the app Secret (create, or replace at the
    /// resourceVersion read). What it holds is ordered by (epoch, revision)
    /// within a life: a newer projection is never replaced by an older one,
    /// and a removed latest revision (which raised the epoch) rolls it back.
    async fn write_app(
        &self,
        id: &TypeInstanceId,
        target: &AppTarget,
        head: &Head,
        rev: u32,
        value: &[u8],
    ) -> Result<()> {
        let secrets = self.secrets_in(&target.namespace);
        for _ in 0..self.attempts {
            let existing = secrets.get(&target.name).await?;
            if let Some(s) = &existing {
                if !owned_as(s, id, "app") {
                    return Err(foreign(&target.namespace, &target.name));
                }
                let (life, epoch, there) = held(s);
                let same = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&target.key))
                    .is_some_and(|b| b.0 == value);
                if life == head.life
                    && ((epoch, there) > (head.epoch, rev) || (there == rev && same))
                {
                    return Ok(());
                }
            }
            let mut labels = labels(id, "app");
            labels.insert(REVISION_LABEL.to_owned(), rev.to_string());
            let mut annotations = std::collections::BTreeMap::from([
                (ID_ANNOTATION.to_owned(), id.as_str().to_owned()),
                (REVISION_ANNOTATION.to_owned(), rev.to_string()),
                (EPOCH_ANNOTATION.to_owned(), head.epoch.to_string()),
            ]);
            if !head.life.is_empty() {
                annotations.insert(LIFE_ANNOTATION.to_owned(), head.life.clone());
            }
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(target.name.clone()),
                    namespace: Some(target.namespace.clone()),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    resource_version: existing
                        .as_ref()
                        .and_then(|s| s.metadata.resource_version.clone()),
                    ..Default::default()
                },
                type_: Some("Opaque".to_owned()),
                data: Some(std::collections::BTreeMap::from([(
                    target.key.clone(),
                    ByteString(value.to_vec()),
                )])),
                ..Default::default()
            };
            let written = match existing {
                None => secrets.create(&secret).await?,
                Some(_) => secrets.replace(&target.name, &secret).await?,
            };
            if written.is_some() {
                return Ok(());
            }
        }
        Err(rules::contended(id))
    }

    /// Deletes the app Secret if it is ours for this TypeInstance and holds
    /// a revision of `life` (a later life's projection is left alone), at
    /// the version read.
    pub async fn remove_app(
        &self,
        id: &TypeInstanceId,
        target: &AppTarget,
        life: &str,
    ) -> Result<()> {
        let secrets = self.secrets_in(&target.namespace);
        match secrets.get(&target.name).await? {
            Some(s) if owned_as(&s, id, "app") && held(&s).0 == life => {
                let version = Version::of(&s)?;
                secrets.delete(&target.name, Some(&version)).await.map(drop)
            }
            _ => Ok(()),
        }
    }

    /// After a head write: remembers a target this call moved away from.
    pub fn moved(&self, t: &Transition) {
        if let Some(old) = &t.moved_from {
            set_moved_from(old.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, key: &str) -> AppTarget {
        AppTarget {
            namespace: "ns".into(),
            name: name.into(),
            key: key.into(),
        }
    }

    fn head(latest: u32, intent: Option<Intent>) -> Head {
        Head {
            life: "l1".into(),
            latest,
            lock: None,
            epoch: 0,
            floor: 0,
            locked_at: None,
            intent,
        }
    }

    fn claim(rev: u32) -> Option<Intent> {
        Some(Intent::Write {
            rev,
            nonce: "n".into(),
            digest: String::new(),
            since: 1,
        })
    }

    #[test]
    fn app_target_round_trips_through_its_annotation() {
        let t = target("app.config", "config.json");
        assert_eq!(AppTarget::decode(&t.encode()), Some(t));
        assert_eq!(AppTarget::decode("ns/name"), None);
    }

    #[test]
    fn the_commit_records_the_contexts_target_and_moves_away_from_the_old() {
        let old = target("old", "k");
        let new = target("new", "k");
        let prev = HeadRecord {
            head: head(1, claim(2)),
            app: Some(old.clone()),
        };
        let req = Request::new(Some(new.clone()), false, Some(3));
        let t = transition(Some(&req), &prev, &head(2, None)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.app, Some(new.clone()));
        assert_eq!(t.moved_from, Some(old.clone()));
        // Giving up the claim (latest unchanged) keeps the old target.
        let t = transition(Some(&req), &prev, &head(1, None)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.app, Some(old.clone()));
        assert_eq!(t.moved_from, None);
        // No target in the context keeps the current one.
        let keep = Request::new(None, false, Some(3));
        let t = transition(Some(&keep), &prev, &head(2, None)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.app, Some(old));
    }

    #[test]
    fn a_new_life_starts_without_the_dead_ones_target() {
        let old = target("old", "k");
        let prev = HeadRecord {
            head: head(3, Some(Intent::Delete { since: 0 })),
            app: Some(old.clone()),
        };
        let mut next = head(0, claim(1));
        next.life = "l2".into();
        let t = transition(None, &prev, &next).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t,
            Transition {
                app: None,
                moved_from: None,
                dead: Some(old)
            }
        );
    }

    #[test]
    fn a_claim_checks_the_value_against_the_key_it_will_be_written_under() {
        let prev = HeadRecord {
            head: head(1, None),
            app: Some(target("a", "a-long-key")),
        };
        let limit = MAX_SECRET_DATA - "a-long-key".len() as u64;
        let over = Request::new(None, false, Some(limit + 1));
        let err = transition(Some(&over), &prev, &head(1, claim(2))).expect_err("too big");
        assert_eq!(err.kind(), shared::ErrorKind::InvalidArgument);
        assert!(
            err.message().contains(&limit.to_string()),
            "{}",
            err.message()
        );
        let fits = Request::new(None, false, Some(limit));
        assert!(transition(Some(&fits), &prev, &head(1, claim(2))).is_ok());
    }

    #[test]
    fn context_schema_compiles() {
        let d = shared::Describe {
            name: "t",
            version: "0",
            accept_value: true,
            context_schema: Some(context_schema()),
            context_required: false,
            max_value_bytes: 1,
        };
        assert!(shared::validate::Rules::new(&d, 1).is_ok());
    }
}
