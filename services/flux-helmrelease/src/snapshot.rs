//! Revision snapshots: one ConfigMap per (TypeInstance, revision), in the
//! backend's snapshot namespace (APP_FLUX_SNAPSHOT_NAMESPACE) or, unset, in
//! the HelmRelease's namespace owned by the HelmRelease (ownerReferences
//! with its uid) so that Kubernetes' garbage collector removes them with it.
//! Layout documented in README.md ("Storage layout").

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::ConfigMap,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use sha2::{Digest, Sha256};

/// Label with a hash of the TypeInstance id (ids may be longer than a label
/// value or start with `.`/`-`; the full id is in [`ID_ANNOTATION`]).
pub const ID_LABEL: &str = "storage.capact.io/type-instance";
pub const REVISION_LABEL: &str = "storage.capact.io/revision";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "capact-storage-flux-helmrelease";
pub const ID_ANNOTATION: &str = "storage.capact.io/type-instance-id";
/// `<namespace>/<name>` of the HelmRelease: OnDeleteRevision carries no
/// context, so the release is found from its snapshots.
pub const RELEASE_ANNOTATION: &str = "storage.capact.io/helmrelease";
/// The data key holding the projection.
pub const VALUE_KEY: &str = "value.json";

/// A ConfigMap holds at most 1 MiB of data (the API server refuses more);
/// the rest of the object (metadata) must fit too.
pub const MAX_SNAPSHOT_BYTES: usize = 1_000_000;

/// Longest part of a snapshot name taken from the id (names are at most 253).
const SLUG_MAX: usize = 180;

fn hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// The label value naming a TypeInstance: 40 hex characters of its sha256.
pub fn id_label(id: &str) -> String {
    hash(id)[..40].to_owned()
}

/// The label selector of every snapshot of `id`.
pub fn selector(id: &str) -> String {
    format!(
        "{ID_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY}",
        id_label(id)
    )
}

/// `<sanitized id>-<hash>-r<n>`: lowercase DNS name; the hash keeps ids that
/// differ only in case or in `.`/`_` apart.
pub fn name(id: &str, revision: u32) -> String {
    let mut slug: String = id
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(SLUG_MAX)
        .collect();
    slug = slug.trim_matches('-').to_owned();
    if slug.is_empty() {
        slug.push_str("ti");
    }
    format!("{slug}-{}-r{revision}", &hash(id)[..10])
}

/// What a snapshot records about the HelmRelease it belongs to.
pub struct Owner<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub api_version: &'a str,
}

/// The snapshot of `id` at `revision`, stored in `namespace`. Owned by the
/// HelmRelease (garbage-collected with it) only in the release's own
/// namespace: an ownerReference cannot cross namespaces.
pub fn build(
    id: &str,
    revision: u32,
    owner: &Owner<'_>,
    namespace: &str,
    value: String,
) -> ConfigMap {
    let owned = namespace == owner.namespace;
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name(id, revision)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (ID_LABEL.to_owned(), id_label(id)),
                (REVISION_LABEL.to_owned(), revision.to_string()),
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([
                (ID_ANNOTATION.to_owned(), id.to_owned()),
                (
                    RELEASE_ANNOTATION.to_owned(),
                    format!("{}/{}", owner.namespace, owner.name),
                ),
            ])),
            owner_references: owned.then(|| {
                vec![OwnerReference {
                    api_version: owner.api_version.to_owned(),
                    kind: "HelmRelease".to_owned(),
                    name: owner.name.to_owned(),
                    uid: owner.uid.to_owned(),
                    // blockOwnerDeletion would need update on
                    // helmreleases/finalizers; deleting the release must not wait
                    // for its snapshots anyway.
                    block_owner_deletion: None,
                    controller: None,
                }]
            }),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(VALUE_KEY.to_owned(), value)])),
        ..ConfigMap::default()
    }
}

/// The facts read back from a stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: Option<String>,
    pub revision: Option<u32>,
    pub release: Option<(String, String)>,
    pub value: Option<String>,
}

pub fn read(cm: &ConfigMap) -> Stored {
    let ann = |k: &str| {
        cm.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .cloned()
    };
    Stored {
        id: ann(ID_ANNOTATION),
        revision: cm
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_LABEL))
            .and_then(|r| r.parse().ok()),
        release: ann(RELEASE_ANNOTATION).and_then(|r| {
            let (ns, name) = r.split_once('/')?;
            Some((ns.to_owned(), name.to_owned()))
        }),
        value: cm.data.as_ref().and_then(|d| d.get(VALUE_KEY)).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns_subdomain(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn names_are_valid_for_every_allowed_id() {
        for id in [
            "a",
            "A-b_c.d",
            "..a",
            "-",
            "_",
            &"X".repeat(128),
            "UPPER.lower_9",
        ] {
            let n = name(id, 4_294_967_295);
            assert!(dns_subdomain(&n), "{id} -> {n}");
        }
    }

    #[test]
    fn ids_differing_only_in_case_or_punctuation_get_distinct_names() {
        assert_ne!(name("Abc", 1), name("abc", 1));
        assert_ne!(name("a.b", 1), name("a_b", 1));
        assert_eq!(name("abc", 2), format!("abc-{}-r2", &hash("abc")[..10]));
    }

    #[test]
    fn label_value_is_a_valid_label_for_any_id() {
        let l = id_label(&"-".repeat(128));
        assert_eq!(l.len(), 40);
        assert!(l.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn built_snapshot_reads_back_and_is_owned_by_the_release() {
        let owner = Owner {
            namespace: "apps",
            name: "podinfo",
            uid: "uid-1",
            api_version: "helm.toolkit.fluxcd.io/v2",
        };
        let cm = build("Ti_1", 3, &owner, "apps", "{}".into());
        let s = read(&cm);
        assert_eq!(s.id.as_deref(), Some("Ti_1"));
        assert_eq!(s.revision, Some(3));
        assert_eq!(s.release, Some(("apps".into(), "podinfo".into())));
        assert_eq!(s.value.as_deref(), Some("{}"));
        let refs = cm.metadata.owner_references.unwrap_or_default();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].uid, "uid-1");
        assert_eq!(refs[0].kind, "HelmRelease");
        // In the backend's own namespace: no (invalid) cross-namespace owner.
        let elsewhere = build("Ti_1", 3, &owner, "capact-system", "{}".into());
        assert_eq!(
            elsewhere.metadata.namespace.as_deref(),
            Some("capact-system")
        );
        assert_eq!(elsewhere.metadata.owner_references, None);
        assert_eq!(
            read(&elsewhere).release,
            Some(("apps".into(), "podinfo".into()))
        );
    }
}
