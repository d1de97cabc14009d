//! The revision engine's primitives ([`HeadStore`]) over Kubernetes
//! Secrets: the head Secret `<prefix>-<key>` (the head as JSON in one
//! annotation, written create-only or at its resourceVersion, deleted with
//! uid + resourceVersion preconditions) and one immutable Secret per
//! revision object. Every API call goes through [`Secrets`], which counts it
//! ([`shared::metrics::store_call`]) and maps its failures with
//! [`shared_kube::map`]. Layout: README.md.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions},
};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use shared::{
    Describe, Error, Result, TypeInstanceId, Value,
    engine::{self, Head, HeadRemoval, HeadStore, Intent, Slot, Stored},
    metrics::store_call,
};
use shared_kube::Call;

use crate::app::{self, HeadRecord};

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "capact-storage";
/// Label: a hash of the TypeInstance id (ids may be longer than a label value).
pub const KEY_LABEL: &str = "capact.io/type-instance-key";
/// Label: `head`, `revision` or `app`.
pub const ROLE_LABEL: &str = "capact.io/role";
pub const REVISION_LABEL: &str = "capact.io/revision";
/// Label of a revision Secret: its life (absent in the legacy layout).
pub const LIFE_LABEL: &str = "capact.io/life";
/// Annotation: the TypeInstance id as sent.
pub const ID_ANNOTATION: &str = "capact.io/type-instance-id";
/// Annotation of the head Secret: the head, as JSON.
pub const HEAD_ANNOTATION: &str = "capact.io/head";
/// Annotation of the head Secret: the app Secret, `<ns>/<name>/<key>`.
pub const APP_ANNOTATION: &str = "capact.io/app-secret";
pub const REVISION_ANNOTATION: &str = "capact.io/revision";
/// Annotation of revision and app Secrets: the head's epoch when written.
pub const EPOCH_ANNOTATION: &str = app::EPOCH_ANNOTATION;
/// Annotation of an app Secret: the life of the revision it holds.
pub const LIFE_ANNOTATION: &str = "capact.io/life";
/// The previous version's head annotations (read, never written).
pub const LEGACY_LATEST_ANNOTATION: &str = "capact.io/latest-revision";
pub const LEGACY_LOCK_ANNOTATION: &str = "capact.io/locked-by";
pub const LEGACY_DELETING_ANNOTATION: &str = "capact.io/deleting";
/// The data key of a revision Secret.
pub const VALUE_KEY: &str = "value";
pub const HEAD_TYPE: &str = "capact.io/type-instance";
pub const REVISION_TYPE: &str = "capact.io/type-instance-revision";

/// Kubernetes rejects a Secret whose data (keys plus values) exceeds 1 MiB.
pub const MAX_SECRET_DATA: u64 = 1 << 20;

/// The part of a TypeInstance's Secret names and `capact.io/type-instance-key`
/// label: the first 20 bytes of SHA-256 of the id, in hex. Ids may be up to
/// 128 characters with upper case; names and label values may not.
pub fn secret_key(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..20])
}

/// The labels of every Secret we write for `id`.
pub fn labels(id: &TypeInstanceId, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (KEY_LABEL.to_owned(), secret_key(id.as_str())),
        (ROLE_LABEL.to_owned(), role.to_owned()),
    ])
}

/// Whether `secret` is ours, for `id`, in `role`.
pub fn owned_as(secret: &Secret, id: &TypeInstanceId, role: &str) -> bool {
    let label = |k: &str| label(secret, k);
    let annotation = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ID_ANNOTATION))
        .map(String::as_str);
    label(MANAGED_BY_LABEL) == Some(MANAGED_BY)
        && label(KEY_LABEL) == Some(secret_key(id.as_str()).as_str())
        && label(ROLE_LABEL) == Some(role)
        && annotation == Some(id.as_str())
}

fn label<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// A Secret at one of our names that we did not write (for this id).
pub fn foreign(namespace: &str, name: &str) -> Error {
    shared::engine::head::foreign("kubernetes", &format!("secret {namespace}/{name}"))
}

/// An object's version: the tag of the engine (`<uid>/<resourceVersion>`)
/// and the preconditions of a conditional delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub uid: String,
    pub resource_version: String,
}

impl Version {
    pub fn of(secret: &Secret) -> Result<Self> {
        match (&secret.metadata.uid, &secret.metadata.resource_version) {
            (Some(uid), Some(rv)) => Ok(Version {
                uid: uid.clone(),
                resource_version: rv.clone(),
            }),
            _ => Err(Error::internal(
                "kubernetes returned a secret without uid or resourceVersion",
            )),
        }
    }

    pub fn tag(&self) -> String {
        format!("{}/{}", self.uid, self.resource_version)
    }

    pub fn parse(tag: &str) -> Option<Self> {
        let (uid, rv) = tag.split_once('/')?;
        Some(Version {
            uid: uid.to_owned(),
            resource_version: rv.to_owned(),
        })
    }
}

/// Secrets of one namespace. The expected outcomes of conditional calls are
/// values (`None`, `false`); everything else is mapped once, here.
#[derive(Clone)]
pub struct Secrets {
    api: Api<Secret>,
    namespace: String,
}

impl Secrets {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    fn call<'a>(&'a self, verb: &'a str, name: Option<&'a str>) -> Call<'a> {
        let call = Call::new(verb, "secrets").namespace(&self.namespace);
        match name {
            Some(n) => call.name(n),
            None => call,
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<Secret>> {
        store_call("secret_get", async {
            self.api
                .get_opt(name)
                .await
                .map_err(|e| shared_kube::map(e, &self.call("get", Some(name))))
        })
        .await
    }

    /// Creates `secret`: the stored object, or `None` if the name exists.
    pub async fn create(&self, secret: &Secret) -> Result<Option<Secret>> {
        let name = secret.metadata.name.as_deref();
        store_call("secret_create", async {
            match self.api.create(&PostParams::default(), secret).await {
                Ok(s) => Ok(Some(s)),
                Err(e) if shared_kube::status(&e) == Some(409) => Ok(None),
                Err(e) => Err(shared_kube::map(e, &self.call("create", name))),
            }
        })
        .await
    }

    /// Replaces the Secret at the resourceVersion `secret` carries: the
    /// stored object, or `None` if it changed or is gone.
    pub async fn replace(&self, name: &str, secret: &Secret) -> Result<Option<Secret>> {
        store_call("secret_update", async {
            match self.api.replace(name, &PostParams::default(), secret).await {
                Ok(s) => Ok(Some(s)),
                Err(e) if matches!(shared_kube::status(&e), Some(404 | 409)) => Ok(None),
                Err(e) => Err(shared_kube::map(e, &self.call("update", Some(name)))),
            }
        })
        .await
    }

    /// Deletes `name`, only at `version` if given: `false` if it was gone
    /// or is another version (re-created or changed meanwhile).
    pub async fn delete(&self, name: &str, version: Option<&Version>) -> Result<bool> {
        let params = DeleteParams {
            preconditions: version.map(|v| Preconditions {
                uid: Some(v.uid.clone()),
                resource_version: Some(v.resource_version.clone()),
            }),
            ..DeleteParams::default()
        };
        store_call("secret_delete", async {
            match self.api.delete(name, &params).await {
                Ok(_) => Ok(true),
                Err(e) if matches!(shared_kube::status(&e), Some(404 | 409)) => Ok(false),
                Err(e) => Err(shared_kube::map(e, &self.call("delete", Some(name)))),
            }
        })
        .await
    }

    /// Every Secret matching `selector` (pages through the list), or at
    /// most `limit`.
    pub async fn list(&self, selector: &str, limit: Option<u32>) -> Result<Vec<Secret>> {
        let mut out = Vec::new();
        let mut params = ListParams::default().labels(selector);
        if let Some(l) = limit {
            params = params.limit(l);
        }
        loop {
            let page = store_call("secret_list", async {
                self.api
                    .list(&params)
                    .await
                    .map_err(|e| shared_kube::map(e, &self.call("list", None)))
            })
            .await?;
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            out.extend(page.items);
            match next {
                Some(token) if limit.is_none() => params = params.continue_token(&token),
                _ => return Ok(out),
            }
        }
    }
}

/// The store: Secrets in one namespace (app Secrets possibly elsewhere).
pub struct SecretStore {
    pub(crate) client: kube::Client,
    pub(crate) secrets: Secrets,
    pub(crate) namespace: String,
    pub(crate) prefix: String,
    /// Namespaces an app Secret may be written to besides our own.
    pub(crate) app_namespaces: Vec<String>,
    /// Attempts of an app Secret write against concurrent changes.
    pub(crate) attempts: u32,
}

impl SecretStore {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        prefix: &str,
        app_namespaces: Vec<String>,
        attempts: u32,
    ) -> Self {
        SecretStore {
            secrets: Secrets::new(client.clone(), namespace),
            client,
            namespace: namespace.to_owned(),
            prefix: prefix.to_owned(),
            app_namespaces,
            attempts,
        }
    }

    pub fn secrets_in(&self, namespace: &str) -> Secrets {
        if namespace == self.namespace {
            self.secrets.clone()
        } else {
            Secrets::new(self.client.clone(), namespace)
        }
    }

    pub fn head_name(&self, id: &TypeInstanceId) -> String {
        format!("{}-{}", self.prefix, secret_key(id.as_str()))
    }

    /// `<prefix>-<key>-<life>-r<n>`, or `<prefix>-<key>-r<n>` for the
    /// legacy (empty) life.
    pub fn revision_name(&self, at: &Slot<'_>) -> String {
        let key = secret_key(at.id.as_str());
        match at.life {
            "" => format!("{}-{key}-r{}", self.prefix, at.rev),
            life => format!("{}-{key}-{life}-r{}", self.prefix, at.rev),
        }
    }

    fn head_secret(
        &self,
        id: &TypeInstanceId,
        record: &HeadRecord,
        version: Option<&Version>,
    ) -> Result<Secret> {
        let head = serde_json::to_string(&Json::Object(record.head.to_map()))
            .map_err(|e| Error::internal("cannot encode a head").with_source(e))?;
        let mut annotations = BTreeMap::from([
            (ID_ANNOTATION.to_owned(), id.as_str().to_owned()),
            (HEAD_ANNOTATION.to_owned(), head),
        ]);
        if let Some(a) = &record.app {
            annotations.insert(APP_ANNOTATION.to_owned(), a.encode());
        }
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(self.head_name(id)),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels(id, "head")),
                annotations: Some(annotations),
                uid: version.map(|v| v.uid.clone()),
                resource_version: version.map(|v| v.resource_version.clone()),
                ..Default::default()
            },
            type_: Some(HEAD_TYPE.to_owned()),
            ..Default::default()
        })
    }

    /// The head Secret `s` of `id` decoded, with its tag. Written by the
    /// previous version (no `capact.io/head`): a legacy head (empty life,
    /// epoch 0, a `deleting` mark as an expired delete).
    fn decode_head(&self, id: &TypeInstanceId, s: &Secret) -> Result<(HeadRecord, String)> {
        let name = self.head_name(id);
        if !owned_as(s, id, "head") {
            return Err(foreign(&self.namespace, &name));
        }
        let corrupted = || Error::data_loss(format!("the head of type instance {id} is corrupted"));
        let ann = s.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k));
        let head = match get(HEAD_ANNOTATION) {
            Some(json) => Head::from_json(json.as_bytes()).ok_or_else(corrupted)?,
            None => Head {
                life: String::new(),
                latest: get(LEGACY_LATEST_ANNOTATION)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(corrupted)?,
                lock: get(LEGACY_LOCK_ANNOTATION).cloned(),
                epoch: 0,
                floor: 0,
                locked_at: None,
                intent: get(LEGACY_DELETING_ANNOTATION)
                    .is_some_and(|v| v == "true")
                    .then_some(Intent::Delete { since: 0 }),
            },
        };
        let app = get(APP_ANNOTATION).and_then(|a| app::AppTarget::decode(a));
        Ok((HeadRecord { head, app }, Version::of(s)?.tag()))
    }

    /// The head at `tag`: from this call's scope, else read (`None`: the
    /// head is gone or at another version).
    async fn head_at(&self, id: &TypeInstanceId, tag: &str) -> Result<Option<HeadRecord>> {
        if let Some(r) = app::recall(tag) {
            return Ok(Some(r));
        }
        let Some(s) = self.secrets.get(&self.head_name(id)).await? else {
            return Ok(None);
        };
        let (record, t) = self.decode_head(id, &s)?;
        Ok((t == tag).then_some(record))
    }

    /// Whether `s` is the revision object of `id` in `life`.
    fn is_revision_of(s: &Secret, id: &TypeInstanceId, life: &str) -> bool {
        owned_as(s, id, "revision") && label(s, LIFE_LABEL).unwrap_or("") == life
    }
}

#[async_trait]
impl HeadStore for SecretStore {
    /// Head deletes carry uid + resourceVersion preconditions.
    const HEAD_REMOVAL: HeadRemoval = HeadRemoval::Conditional;
    // The application Secret follows the latest revision.
    const PROJECTS: bool = true;

    fn describe(&self) -> Describe {
        Describe {
            name: "kubernetes-secret",
            version: env!("CARGO_PKG_VERSION"),
            accept_value: true,
            context_schema: Some(app::context_schema()),
            context_required: false,
            max_value_bytes: MAX_SECRET_DATA - VALUE_KEY.len() as u64,
        }
    }

    /// A cheap authorized call: list at most one of our Secrets.
    /// A cheap authorized call: GET of a name we never write (404 is the
    /// expected answer; 403 says the Role lacks `get`).
    async fn probe(&self) -> Result<()> {
        self.secrets
            .get(&format!("{}-probe", self.prefix))
            .await
            .map(drop)
    }

    /// One labelled list of the head Secrets (admin only); Secrets that do
    /// not decode as ours are skipped.
    async fn list_heads(&self) -> Result<Vec<(TypeInstanceId, Head)>> {
        let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY},{ROLE_LABEL}=head");
        let mut out = Vec::new();
        for s in self.secrets.list(&selector, None).await? {
            let Some(id) = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ID_ANNOTATION))
                .and_then(|id| TypeInstanceId::parse(id).ok())
            else {
                continue;
            };
            if s.metadata.name.as_deref() != Some(self.head_name(&id).as_str()) {
                continue;
            }
            if let Ok((record, _)) = self.decode_head(&id, &s) {
                out.push((id, record.head));
            }
        }
        Ok(out)
    }

    async fn read_head(&self, id: &TypeInstanceId) -> Result<Option<(Head, String)>> {
        let Some(s) = self.secrets.get(&self.head_name(id)).await? else {
            return Ok(None);
        };
        let (record, tag) = self.decode_head(id, &s)?;
        app::remember(&tag, &record);
        Ok(Some((record.head, tag)))
    }

    /// POST: a new life starts without an app Secret (its commit records one).
    async fn create_head(&self, id: &TypeInstanceId, head: &Head) -> Result<Option<String>> {
        let record = HeadRecord {
            head: head.clone(),
            app: None,
        };
        let secret = self.head_secret(id, &record, None)?;
        let Some(created) = self.secrets.create(&secret).await? else {
            return Ok(None);
        };
        let tag = Version::of(&created)?.tag();
        app::remember(&tag, &record);
        Ok(Some(tag))
    }

    /// PUT at the tag's resourceVersion; the app target follows
    /// [`app::transition`].
    async fn replace_head(
        &self,
        id: &TypeInstanceId,
        head: &Head,
        tag: &str,
    ) -> Result<Option<String>> {
        let Some(version) = Version::parse(tag) else {
            return Ok(None);
        };
        let Some(prev) = self.head_at(id, tag).await? else {
            return Ok(None);
        };
        let req = app::current();
        let t = app::transition(req.as_deref(), &prev, head)?;
        if let Some(dead) = &t.dead {
            // The life `prev` names is dead (the engine starts a new one
            // only over a head that is not live): its projection goes first.
            self.remove_app(id, dead, &prev.head.life).await?;
        }
        let record = HeadRecord {
            head: head.clone(),
            app: t.app.clone(),
        };
        let secret = self.head_secret(id, &record, Some(&version))?;
        let Some(replaced) = self.secrets.replace(&self.head_name(id), &secret).await? else {
            return Ok(None);
        };
        let tag = Version::of(&replaced)?.tag();
        app::remember(&tag, &record);
        self.moved(&t);
        Ok(Some(tag))
    }

    /// DELETE with uid + resourceVersion preconditions; the app Secret of
    /// the life being removed goes first, so a retry still finds it through
    /// the head.
    async fn remove_head(&self, id: &TypeInstanceId, tag: &str) -> Result<()> {
        let Some(version) = Version::parse(tag) else {
            return Ok(());
        };
        let name = self.head_name(id);
        let Some(s) = self.secrets.get(&name).await? else {
            return Ok(());
        };
        let (record, now) = self.decode_head(id, &s)?;
        if now != tag {
            return Ok(());
        }
        if let Some(target) = &record.app {
            self.remove_app(id, target, &record.head.life).await?;
        }
        self.secrets.delete(&name, Some(&version)).await.map(drop)
    }

    async fn read_revision(&self, at: Slot<'_>) -> Result<Option<Stored>> {
        let name = self.revision_name(&at);
        let Some(s) = self.secrets.get(&name).await? else {
            return Ok(None);
        };
        if !Self::is_revision_of(&s, at.id, at.life) {
            return Err(foreign(&self.namespace, &name));
        }
        let epoch = match s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EPOCH_ANNOTATION))
        {
            None => 0,
            Some(e) => e.parse().map_err(|_| {
                Error::data_loss(format!(
                    "revision {} of type instance {} is corrupted",
                    at.rev, at.id
                ))
            })?,
        };
        let tag = Version::of(&s)?.tag();
        let value = s
            .data
            .and_then(|mut d| d.remove(VALUE_KEY))
            .map(|b| b.0)
            .unwrap_or_default();
        Ok(Some(Stored {
            value: value.into(),
            epoch,
            tag,
        }))
    }

    /// POST (immutable Secret); over `replace`: DELETE at that version,
    /// then POST.
    async fn write_revision(
        &self,
        at: Slot<'_>,
        value: &Value,
        epoch: u64,
        replace: Option<&str>,
    ) -> Result<bool> {
        let name = self.revision_name(&at);
        if let Some(tag) = replace {
            let Some(version) = Version::parse(tag) else {
                return Ok(false);
            };
            if !self.secrets.delete(&name, Some(&version)).await? {
                return Ok(false);
            }
        }
        let mut labels = labels(at.id, "revision");
        labels.insert(REVISION_LABEL.to_owned(), at.rev.to_string());
        if !at.life.is_empty() {
            labels.insert(LIFE_LABEL.to_owned(), at.life.to_owned());
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([
                    (ID_ANNOTATION.to_owned(), at.id.as_str().to_owned()),
                    (REVISION_ANNOTATION.to_owned(), at.rev.to_string()),
                    (EPOCH_ANNOTATION.to_owned(), epoch.to_string()),
                ])),
                ..Default::default()
            },
            type_: Some(REVISION_TYPE.to_owned()),
            immutable: Some(true),
            data: Some(BTreeMap::from([(
                VALUE_KEY.to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        Ok(self.secrets.create(&secret).await?.is_some())
    }

    async fn remove_revision(&self, at: Slot<'_>) -> Result<()> {
        self.secrets
            .delete(&self.revision_name(&at), None)
            .await
            .map(drop)
    }

    /// `1..=upto` by name, without a LIST: revision names are
    /// deterministic, removing one that does not exist is a cheap 404, and
    /// the backend's Role then needs no `list` on Secrets (which would
    /// expose every Secret of the namespace).
    async fn list_revisions(
        &self,
        _id: &TypeInstanceId,
        _life: &str,
        upto: u32,
    ) -> Result<Vec<u32>> {
        Ok((1..=upto).collect())
    }

    /// Reads downwards from `rev - 1` by name: one GET unless the revisions
    /// just below were removed too.
    async fn highest_below(
        &self,
        id: &TypeInstanceId,
        life: &str,
        rev: u32,
    ) -> Result<Option<u32>> {
        engine::highest_below_by_reading(self, id, life, rev).await
    }

    /// The app Secret follows the latest revision. `None` (the TypeInstance
    /// is gone) has nothing left to do: [`HeadStore::remove_head`] removed
    /// the app Secret before the head, where a retry can still find it.
    async fn project(&self, id: &TypeInstanceId, latest: Option<(u32, &[u8])>) -> Result<()> {
        let Some((rev, value)) = latest else {
            return Ok(());
        };
        let record = match app::last() {
            Some(r) => r,
            None => match self.secrets.get(&self.head_name(id)).await? {
                Some(s) => self.decode_head(id, &s)?.0,
                None => return Ok(()),
            },
        };
        self.project_app(id, &record, rev, value).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TypeInstanceId {
        TypeInstanceId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn key_of_long_upper_case_ids_is_a_short_lowercase_hash() {
        let k = secret_key(&"A".repeat(128));
        assert_eq!(k.len(), 40);
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_ne!(k, secret_key(&"a".repeat(128)));
    }

    #[test]
    fn tags_are_uid_slash_resource_version() {
        let v = Version {
            uid: "0b6c-11".into(),
            resource_version: "42".into(),
        };
        assert_eq!(v.tag(), "0b6c-11/42");
        assert_eq!(Version::parse(&v.tag()), Some(v));
        assert_eq!(Version::parse("no-slash"), None);
    }

    fn secret_with(annotations: &[(&str, &str)], id: &TypeInstanceId) -> Secret {
        let mut ann: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ann.insert(ID_ANNOTATION.into(), id.as_str().into());
        Secret {
            metadata: ObjectMeta {
                labels: Some(labels(id, "head")),
                annotations: Some(ann),
                uid: Some("u".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    async fn store() -> SecretStore {
        let config = kube::Config::new(
            "https://127.0.0.1:1"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let client = kube::Client::try_from(config).unwrap_or_else(|e| panic!("{e}"));
        SecretStore::new(client, "ns", "capact", Vec::new(), 8)
    }

    #[tokio::test]
    async fn heads_decode_from_the_json_annotation_and_the_legacy_ones() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let s = store().await;
        let ti = id("ti");
        let head = Head {
            life: "abc".into(),
            latest: 3,
            lock: Some("o".into()),
            epoch: 1,
            floor: 0,
            locked_at: None,
            intent: None,
        };
        let json = String::from_utf8(head.to_json()).unwrap_or_default();
        let (r, tag) = s
            .decode_head(&ti, &secret_with(&[(HEAD_ANNOTATION, &json)], &ti))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.head, tag.as_str()), (head, "u/7"));

        let legacy = secret_with(
            &[
                (LEGACY_LATEST_ANNOTATION, "2"),
                (LEGACY_LOCK_ANNOTATION, "hub"),
                (LEGACY_DELETING_ANNOTATION, "true"),
                (APP_ANNOTATION, "ns/app/k"),
            ],
            &ti,
        );
        let (r, _) = s
            .decode_head(&ti, &legacy)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.head.life, "");
        assert_eq!(r.head.latest, 2);
        assert_eq!(r.head.lock.as_deref(), Some("hub"));
        assert_eq!(r.head.intent, Some(Intent::Delete { since: 0 }));
        assert_eq!(r.app.map(|a| a.name), Some("app".to_owned()));

        let corrupt = secret_with(&[(HEAD_ANNOTATION, "{")], &ti);
        let err = s.decode_head(&ti, &corrupt).expect_err("corrupt");
        assert_eq!(err.kind(), shared::ErrorKind::DataLoss);
        let err = s
            .decode_head(&id("other"), &secret_with(&[(HEAD_ANNOTATION, &json)], &ti))
            .expect_err("not ours");
        assert_eq!(err.kind(), shared::ErrorKind::FailedPrecondition);
    }

    #[tokio::test]
    async fn revision_names_keep_the_legacy_layout_for_the_empty_life() {
        let s = store().await;
        let ti = id("ti");
        let key = secret_key("ti");
        let legacy = Slot {
            id: &ti,
            life: "",
            rev: 2,
        };
        let new = Slot {
            id: &ti,
            life: "0123456789abcdef",
            rev: 2,
        };
        assert_eq!(s.revision_name(&legacy), format!("capact-{key}-r2"));
        assert_eq!(
            s.revision_name(&new),
            format!("capact-{key}-0123456789abcdef-r2")
        );
    }
}
