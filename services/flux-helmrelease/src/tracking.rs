//! The tracking state kept on the HelmRelease itself, in one annotation
//! (`storage.capact.io/tracking`) holding JSON: which TypeInstances track the
//! release, the latest revision of each, its lock, and what `spec.suspend`
//! was before a lock suspended the release.
//!
//! Every change is one JSON merge patch that carries the
//! `metadata.resourceVersion` it was computed from, so the API server applies
//! it only if nothing changed in between (409 otherwise): the HelmRelease's
//! resourceVersion is the compare-and-set of every state change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use shared::Error;

/// Annotation holding the state.
pub const ANNOTATION: &str = "storage.capact.io/tracking";
/// Label set while at least one TypeInstance tracks the release, so that
/// `kubectl get hr -l storage.capact.io/tracked=true` lists them.
pub const TRACKED_LABEL: &str = "storage.capact.io/tracked";

/// One TypeInstance's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub latest: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// This TypeInstance's lock set `spec.suspend: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// The Hub watch registered this TypeInstance for the release.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub registered: bool,
}

/// `spec.suspend` as it was before the first lock suspended the release;
/// restored when the last suspending lock goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendHold {
    pub previous: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracking {
    #[serde(rename = "typeInstances", default)]
    pub type_instances: BTreeMap<String, Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<SuspendHold>,
}

/// What to do to `spec.suspend` along with the annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendChange {
    Keep,
    Set(bool),
    /// Remove the field (it was absent before we set it).
    Remove,
}

impl Tracking {
    /// Reads the state from the HelmRelease's annotations. A missing
    /// annotation is "nothing tracked"; one we cannot parse is DATA_LOSS
    /// (someone edited it by hand), never silently reset.
    pub fn from_annotation(raw: Option<&str>, what: &str) -> Result<Self, Error> {
        match raw {
            None => Ok(Self::default()),
            Some(s) => serde_json::from_str(s).map_err(|e| {
                Error::data_loss(format!(
                    "the {ANNOTATION} annotation of {what} is not valid tracking state"
                ))
                .with_source(e)
            }),
        }
    }

    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.type_instances.get(id)
    }

    fn any_suspended(&self) -> bool {
        self.type_instances.values().any(|e| e.suspended)
    }

    /// Sets `id`'s lock; with `suspend`, also suspends the release, keeping
    /// what `spec.suspend` was (`current`) if no other lock had suspended it.
    pub fn lock(
        &mut self,
        id: &str,
        owner: &str,
        suspend: bool,
        current: Option<bool>,
    ) -> SuspendChange {
        let first = !self.any_suspended();
        let Some(e) = self.type_instances.get_mut(id) else {
            return SuspendChange::Keep;
        };
        e.lock = Some(owner.to_owned());
        if !suspend {
            return SuspendChange::Keep;
        }
        e.suspended = true;
        if first {
            self.suspend = Some(SuspendHold { previous: current });
        }
        SuspendChange::Set(true)
    }

    /// Clears `id`'s lock (and the entry itself with `untrack`), restoring
    /// `spec.suspend` if this was the last lock that suspended the release.
    pub fn release(&mut self, id: &str, untrack: bool) -> SuspendChange {
        let was_suspending = match self.type_instances.get_mut(id) {
            Some(e) => {
                e.lock = None;
                std::mem::take(&mut e.suspended)
            }
            None => false,
        };
        if untrack {
            self.type_instances.remove(id);
        }
        if !was_suspending || self.any_suspended() {
            return SuspendChange::Keep;
        }
        match self.suspend.take().and_then(|h| h.previous) {
            Some(b) => SuspendChange::Set(b),
            None => SuspendChange::Remove,
        }
    }

    /// The merge patch that writes this state, guarded by `resource_version`.
    pub fn patch(&self, resource_version: &str, suspend: SuspendChange) -> Json {
        let empty = self.type_instances.is_empty() && self.suspend.is_none();
        let annotation = if empty {
            Json::Null
        } else {
            // Serializing plain maps and strings cannot fail.
            json!(serde_json::to_string(self).unwrap_or_default())
        };
        let label = if self.type_instances.is_empty() {
            Json::Null
        } else {
            json!("true")
        };
        let mut patch = json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": {ANNOTATION: annotation},
                "labels": {TRACKED_LABEL: label},
            }
        });
        match suspend {
            SuspendChange::Keep => {}
            SuspendChange::Set(b) => patch["spec"] = json!({"suspend": b}),
            SuspendChange::Remove => patch["spec"] = json!({"suspend": null}),
        }
        patch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(ids: &[&str]) -> Tracking {
        let mut t = Tracking::default();
        for id in ids {
            t.type_instances.insert(
                (*id).to_owned(),
                Entry {
                    latest: 1,
                    lock: None,
                    suspended: false,
                    registered: false,
                },
            );
        }
        t
    }

    #[test]
    fn missing_annotation_means_nothing_is_tracked() {
        let t = Tracking::from_annotation(None, "hr").unwrap_or_else(|e| panic!("{e:?}"));
        assert!(t.type_instances.is_empty());
    }

    #[test]
    fn unparsable_annotation_is_data_loss() {
        let err = Tracking::from_annotation(Some("{nope"), "hr").expect_err("must fail");
        assert_eq!(err.kind(), shared::ErrorKind::DataLoss);
    }

    #[test]
    fn state_round_trips_through_the_annotation() {
        let mut t = tracked(&["a", "b"]);
        t.lock("a", "owner", true, Some(false));
        let patch = t.patch("42", SuspendChange::Keep);
        let raw = patch["metadata"]["annotations"][ANNOTATION]
            .as_str()
            .map(str::to_owned);
        let back =
            Tracking::from_annotation(raw.as_deref(), "hr").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(back, t);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["labels"][TRACKED_LABEL], "true");
    }

    #[test]
    fn suspend_is_restored_only_when_the_last_suspending_lock_goes() {
        let mut t = tracked(&["a", "b"]);
        assert_eq!(t.lock("a", "o1", true, None), SuspendChange::Set(true));
        assert_eq!(
            t.lock("b", "o2", true, Some(true)),
            SuspendChange::Set(true)
        );
        // The first lock's view of spec.suspend is what gets restored.
        assert_eq!(t.suspend, Some(SuspendHold { previous: None }));
        assert_eq!(t.release("a", false), SuspendChange::Keep);
        assert_eq!(t.release("b", false), SuspendChange::Remove);
        assert_eq!(t.suspend, None);
    }

    #[test]
    fn a_release_suspended_before_the_lock_stays_suspended() {
        let mut t = tracked(&["a"]);
        t.lock("a", "o", true, Some(true));
        assert_eq!(t.release("a", false), SuspendChange::Set(true));
    }

    #[test]
    fn lock_without_suspend_leaves_spec_alone() {
        let mut t = tracked(&["a"]);
        assert_eq!(t.lock("a", "o", false, Some(false)), SuspendChange::Keep);
        assert_eq!(t.entry("a").and_then(|e| e.lock.as_deref()), Some("o"));
        assert_eq!(t.release("a", false), SuspendChange::Keep);
        assert_eq!(t.entry("a").and_then(|e| e.lock.as_deref()), None);
    }

    #[test]
    fn untracking_the_last_type_instance_removes_annotation_and_label() {
        let mut t = tracked(&["a"]);
        t.lock("a", "o", true, Some(false));
        assert_eq!(t.release("a", true), SuspendChange::Set(false));
        let patch = t.patch("7", SuspendChange::Set(false));
        assert_eq!(patch["metadata"]["annotations"][ANNOTATION], Json::Null);
        assert_eq!(patch["metadata"]["labels"][TRACKED_LABEL], Json::Null);
        assert_eq!(patch["spec"]["suspend"], false);
    }
}
