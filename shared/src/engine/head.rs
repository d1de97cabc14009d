//! The head of a TypeInstance: the one record every state change of it goes
//! through by compare-and-set. Stores keep it as JSON (or, for Kubernetes,
//! in one annotation); the engine alone decides what it means.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::{Error, Result};

/// Marker in every head (and revision) this project writes. A record at one
/// of our keys without it was not written by us and is never overwritten.
pub const MANAGED_BY: &str = "capact-storage";

/// Work recorded in the head by compare-and-set before it touches a revision
/// object, so that the check that allowed it and the change are one step
/// (spec §3, "Fencing"). At most one at a time; `since` is the writer's
/// clock in milliseconds since the Unix epoch.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intent {
    /// Revision `rev` is being written by the holder of `nonce`; it is not
    /// visible until the commit clears this and raises `latest`.
    /// `digest` names the bytes, so that the retry of the same call can
    /// adopt the claim at once instead of waiting for its lease.
    Write {
        rev: u32,
        nonce: String,
        #[serde(default)]
        digest: String,
        since: u64,
    },
    /// Revision `rev` is gone (readers answer NOT_FOUND); its object is
    /// being removed.
    DeleteRevision { rev: u32, since: u64 },
    /// The TypeInstance is gone; the objects of `life` are being removed.
    Delete { since: u64 },
    /// Every object of `life` is removed; only the head is left to remove.
    /// Used by stores whose head removal cannot be conditional.
    Deleted { since: u64 },
}

/// The digest names a value's bytes: it never goes to `Debug` output.
impl fmt::Debug for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Intent::Write {
                rev, nonce, since, ..
            } => f
                .debug_struct("Write")
                .field("rev", rev)
                .field("nonce", nonce)
                .field("digest", &"<redacted>")
                .field("since", since)
                .finish(),
            Intent::DeleteRevision { rev, since } => f
                .debug_struct("DeleteRevision")
                .field("rev", rev)
                .field("since", since)
                .finish(),
            Intent::Delete { since } => f.debug_struct("Delete").field("since", since).finish(),
            Intent::Deleted { since } => f.debug_struct("Deleted").field("since", since).finish(),
        }
    }
}

impl Intent {
    pub fn since(&self) -> u64 {
        match self {
            Intent::Write { since, .. }
            | Intent::DeleteRevision { since, .. }
            | Intent::Delete { since }
            | Intent::Deleted { since } => *since,
        }
    }

    /// Whether the TypeInstance is gone for every caller.
    pub fn is_delete(&self) -> bool {
        matches!(self, Intent::Delete { .. } | Intent::Deleted { .. })
    }
}

/// The state of one TypeInstance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Names this life of the TypeInstance: its revision objects live under
    /// it, so a delete's cleanup can never touch what a later create wrote.
    /// Empty for heads written before lives existed (their objects
    /// keep the old keys).
    pub life: String,
    /// The highest committed revision; 0 while the first one is written.
    pub latest: u32,
    pub lock: Option<String>,
    /// Raised whenever a committed revision is removed; every revision
    /// object records the epoch it was written in, so a reader can tell an
    /// object written after the head it read (see `Engine::get_value`).
    pub epoch: u64,
    pub intent: Option<Intent>,
    /// Revisions up to this one were pruned by retention (APP_MAX_REVISIONS):
    /// they answer NOT_FOUND; raised in the same compare-and-set as the
    /// commit that made them too old. 0: nothing pruned.
    pub floor: u32,
    /// When the lock was taken (the locker's clock, ms since the Unix
    /// epoch), for operators listing locks; `None` for older locks.
    pub locked_at: Option<u64>,
}

/// The JSON form. Legacy heads (`deleting`, SM's `state`) still decode.
#[derive(Serialize, Deserialize)]
struct Wire {
    managed_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    life: String,
    latest: u32,
    lock: Option<String>,
    #[serde(default)]
    epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    intent: Option<Intent>,
    #[serde(default, skip_serializing_if = "is_zero")]
    floor: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    locked_at: Option<u64>,
    /// Written by the first versions of the vault and s3 backends.
    #[serde(default, skip_serializing)]
    deleting: bool,
    /// Written by the first version of the Secrets Manager backend.
    #[serde(default, skip_serializing)]
    state: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Head {
    /// A fresh life whose first revision `nonce` is about to write.
    pub fn new_life(life: String, nonce: String, digest: String, since: u64) -> Self {
        Head {
            life,
            latest: 0,
            lock: None,
            epoch: 0,
            intent: Some(Intent::Write {
                rev: 1,
                nonce,
                digest,
                since,
            }),
            floor: 0,
            locked_at: None,
        }
    }

    /// Whether revision `rev` may be readable: committed and not pruned.
    pub fn holds(&self, rev: u32) -> bool {
        rev > self.floor && rev <= self.latest
    }

    /// The TypeInstance exists for callers: a committed revision and no delete.
    pub fn is_live(&self) -> bool {
        self.latest >= 1 && !self.intent.as_ref().is_some_and(Intent::is_delete)
    }

    pub fn to_map(&self) -> Map<String, Json> {
        let wire = Wire {
            managed_by: MANAGED_BY.to_owned(),
            life: self.life.clone(),
            latest: self.latest,
            lock: self.lock.clone(),
            epoch: self.epoch,
            intent: self.intent.clone(),
            floor: self.floor,
            locked_at: self.locked_at,
            deleting: false,
            state: None,
        };
        match serde_json::to_value(wire) {
            Ok(Json::Object(m)) => m,
            _ => Map::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Json::Object(self.to_map())).unwrap_or_default()
    }

    /// Decodes a head; `None` when the record is not one of ours (no marker
    /// or not our shape), which callers report without overwriting it.
    pub fn from_map(map: &Map<String, Json>) -> Option<Self> {
        let wire: Wire = serde_json::from_value(Json::Object(map.clone())).ok()?;
        Self::from_wire(wire)
    }

    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        Self::from_wire(serde_json::from_slice(bytes).ok()?)
    }

    fn from_wire(w: Wire) -> Option<Self> {
        if w.managed_by != MANAGED_BY {
            return None;
        }
        let legacy_delete = w.deleting || matches!(w.state.as_deref(), Some("deleting"));
        let legacy_deleted = matches!(w.state.as_deref(), Some("deleted"));
        let intent = match w.intent {
            Some(i) => Some(i),
            // A legacy delete that stopped part-way: long expired, so any
            // caller may finish it.
            None if legacy_delete => Some(Intent::Delete { since: 0 }),
            None if legacy_deleted => Some(Intent::Deleted { since: 0 }),
            None => None,
        };
        Some(Head {
            life: w.life,
            latest: w.latest,
            lock: w.lock,
            epoch: w.epoch,
            intent,
            floor: w.floor,
            locked_at: w.locked_at,
        })
    }
}

/// The error for a record at one of our keys that we did not write.
pub fn foreign(store: &str, what: &str) -> Error {
    Error::failed_precondition(format!(
        "{store} {what} holds data this backend did not write; it is left untouched"
    ))
}

/// Decodes or reports a foreign record.
pub fn decode(store: &str, what: &str, bytes: &[u8]) -> Result<Head> {
    Head::from_json(bytes).ok_or_else(|| foreign(store, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_round_trips_through_json() {
        let head = Head {
            life: "g1".into(),
            latest: 4,
            lock: Some("hub".into()),
            epoch: 2,
            intent: Some(Intent::DeleteRevision { rev: 3, since: 9 }),
            floor: 1,
            locked_at: Some(1_700_000_000_000),
        };
        assert_eq!(Head::from_json(&head.to_json()), Some(head));
    }

    #[test]
    fn legacy_heads_decode_with_an_expired_delete() {
        let vault = br#"{"managed_by":"capact-storage","latest":2,"lock":null,"deleting":true}"#;
        let head = Head::from_json(vault).expect("legacy head");
        assert_eq!(head.life, "");
        assert_eq!(head.intent, Some(Intent::Delete { since: 0 }));
        let sm =
            br#"{"managed_by":"capact-storage","state":"live","latest":3,"lock":"a","high":3}"#;
        let head = Head::from_json(sm).expect("legacy sm head");
        assert!(head.is_live());
        assert_eq!(head.lock.as_deref(), Some("a"));
    }

    #[test]
    fn debug_output_hides_the_digest_of_a_value() {
        let i = Intent::Write {
            rev: 2,
            nonce: "n".into(),
            digest: "0123abcd".into(),
            since: 1,
        };
        let shown = format!("{i:?}");
        assert!(!shown.contains("0123abcd"), "{shown}");
        assert!(shown.contains("rev: 2"), "{shown}");
    }

    #[test]
    fn records_without_our_marker_are_not_heads() {
        assert_eq!(Head::from_json(br#"{"latest":1,"lock":null}"#), None);
        assert_eq!(Head::from_json(b"not json"), None);
    }
}
