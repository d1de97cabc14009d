//! Wire compatibility of our prost types with the Hub's protocol.
//!
//! `tests/fixtures/wire/golden.json` holds reference encodings made by Google's
//! protobuf runtime from `tests/fixtures/wire/spec.proto`, a proto written from
//! the wire table in `shared/spec/protocol.md` §1 independently of
//! `proto/storage_backend.proto` (regenerate with
//! `tests/fixtures/wire/make_golden.py`, see its header). A wrong field number,
//! type or name, or a missing or extra `optional`, makes these tests fail.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use prost::Message;
use serde::Deserialize;
use serde_json::{Map, Value};
use shared::proto::storage_backend as sb;

const GOLDEN: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/wire/golden.json"
));

/// Cases a message without fields has.
const EMPTY: &[&str] = &["empty"];
/// Cases a message with only plain (no-presence) fields has.
const PLAIN: &[&str] = &["all_set"];
/// Cases a message with at least one `optional` field has.
const WITH_OPTIONAL: &[&str] = &["all_set", "optional_present_empty", "optional_unset"];

/// Every message of the spec table (protocol.md §1), with the reference cases
/// it must have. Transcribed from the table, so a message missing from
/// golden.json, or one that lost its `optional` in spec.proto, fails.
const SPEC_TABLE: &[(&str, &[&str])] = &[
    ("GetPreCreateValueRequest", PLAIN),
    ("GetPreCreateValueResponse", WITH_OPTIONAL),
    ("OnCreateRequest", PLAIN),
    ("OnCreateValueAndContextRequest", WITH_OPTIONAL),
    ("OnCreateResponse", WITH_OPTIONAL),
    ("TypeInstanceResourceVersion", PLAIN),
    ("OnUpdateValueAndContextRequest", WITH_OPTIONAL),
    ("OnUpdateRequest", WITH_OPTIONAL),
    ("OnUpdateResponse", WITH_OPTIONAL),
    ("OnDeleteValueAndContextRequest", WITH_OPTIONAL),
    ("OnDeleteRequest", WITH_OPTIONAL),
    ("OnDeleteResponse", EMPTY),
    ("OnDeleteRevisionValueAndContextRequest", WITH_OPTIONAL),
    ("OnDeleteRevisionRequest", WITH_OPTIONAL),
    ("OnDeleteRevisionResponse", EMPTY),
    ("GetValueRequest", PLAIN),
    ("GetValueResponse", WITH_OPTIONAL),
    ("GetLockedByRequest", PLAIN),
    ("GetLockedByResponse", WITH_OPTIONAL),
    ("OnLockRequest", PLAIN),
    ("OnLockResponse", EMPTY),
    ("OnUnlockRequest", PLAIN),
    ("OnUnlockResponse", EMPTY),
];

/// One reference encoding from golden.json.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Golden {
    message: String,
    case: String,
    hex: String,
    /// Field name to value: strings as strings, bytes as hex, uint32 as numbers;
    /// an absent optional field is left out.
    fields: Map<String, Value>,
}

impl Golden {
    fn label(&self) -> String {
        format!("{}/{}", self.message, self.case)
    }

    fn wire(&self) -> Result<Vec<u8>, String> {
        hex::decode(&self.hex).map_err(|e| format!("bad hex in golden.json: {e}"))
    }
}

fn golden() -> Vec<Golden> {
    serde_json::from_str(GOLDEN).expect("tests/fixtures/wire/golden.json is valid")
}

/// A Rust field type that golden.json can describe. The Rust type decides how
/// an absent key is read: a plain field must be present in every case, while
/// an `Option` (proto3 `optional`) reads an absent key as unset.
trait JsonField: Sized {
    fn from_json(value: Option<&Value>) -> Result<Self, String>;
    fn to_json(&self) -> Option<Value>;
}

fn plain(value: Option<&Value>) -> Result<&Value, String> {
    value.ok_or_else(|| {
        "absent in the reference, but the Rust field has no presence (missing `optional`?)"
            .to_owned()
    })
}

impl JsonField for String {
    fn from_json(value: Option<&Value>) -> Result<Self, String> {
        match plain(value)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!("expected a string, found {other}")),
        }
    }

    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.clone()))
    }
}

impl JsonField for u32 {
    fn from_json(value: Option<&Value>) -> Result<Self, String> {
        let value = plain(value)?;
        value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("expected a uint32, found {value}"))
    }

    fn to_json(&self) -> Option<Value> {
        Some(Value::from(*self))
    }
}

impl JsonField for Bytes {
    fn from_json(value: Option<&Value>) -> Result<Self, String> {
        match plain(value)? {
            Value::String(s) => hex::decode(s)
                .map(Bytes::from)
                .map_err(|e| format!("expected hex bytes, {e}")),
            other => Err(format!("expected hex bytes, found {other}")),
        }
    }

    fn to_json(&self) -> Option<Value> {
        Some(Value::String(hex::encode(self)))
    }
}

impl<T: JsonField> JsonField for Option<T> {
    fn from_json(value: Option<&Value>) -> Result<Self, String> {
        value.map(|v| T::from_json(Some(v))).transpose()
    }

    fn to_json(&self) -> Option<Value> {
        self.as_ref().and_then(T::to_json)
    }
}

/// A generated message, built from and read back into golden.json's `fields`.
trait WireMessage: Message + Default + PartialEq + Sized {
    fn from_fields(fields: &Map<String, Value>) -> Result<Self, String>;
    fn to_fields(&self) -> Map<String, Value>;
}

fn field<T: JsonField>(fields: &Map<String, Value>, name: &str) -> Result<T, String> {
    T::from_json(fields.get(name)).map_err(|e| format!("field `{name}`: {e}"))
}

fn reject_unknown(fields: &Map<String, Value>, known: &[&str]) -> Result<(), String> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "the reference has field `{k}`, the Rust message does not"
        )),
        None => Ok(()),
    }
}

fn collect_fields(
    pairs: impl IntoIterator<Item = (&'static str, Option<Value>)>,
) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)))
        .collect()
}

/// Implements `WireMessage` for each listed message and generates `check`,
/// which runs a check on a golden entry with the message type it names. The
/// struct literal names every field with no `..Default::default()`, so a field
/// the Rust message has and this list lacks does not compile.
macro_rules! wire_messages {
    ($($message:ident { $($field:ident),* $(,)? }),* $(,)?) => {
        $(
            impl WireMessage for sb::$message {
                fn from_fields(fields: &Map<String, Value>) -> Result<Self, String> {
                    reject_unknown(fields, &[$(stringify!($field)),*])?;
                    Ok(Self { $($field: field(fields, stringify!($field))?,)* })
                }

                fn to_fields(&self) -> Map<String, Value> {
                    collect_fields([$((stringify!($field), self.$field.to_json())),*])
                }
            }
        )*

        /// Runs `C` on `entry` with the message type `entry.message` names.
        fn check<C: Check>(entry: &Golden) -> Result<(), String> {
            match entry.message.as_str() {
                $(stringify!($message) => C::run::<sb::$message>(entry),)*
                other => Err(format!("no Rust message is listed for `{other}`")),
            }
        }
    };
}

wire_messages! {
    GetPreCreateValueRequest { context },
    GetPreCreateValueResponse { value },
    OnCreateRequest { type_instance_id, context },
    OnCreateValueAndContextRequest { type_instance_id, value, context },
    OnCreateResponse { context },
    TypeInstanceResourceVersion { resource_version, value },
    OnUpdateValueAndContextRequest {
        type_instance_id, new_resource_version, new_value, context, owner_id
    },
    OnUpdateRequest { type_instance_id, new_resource_version, context, owner_id },
    OnUpdateResponse { context },
    OnDeleteValueAndContextRequest { type_instance_id, context, owner_id },
    OnDeleteRequest { type_instance_id, context, owner_id },
    OnDeleteResponse {},
    OnDeleteRevisionValueAndContextRequest {
        type_instance_id, context, owner_id, resource_version
    },
    OnDeleteRevisionRequest { type_instance_id, owner_id, resource_version },
    OnDeleteRevisionResponse {},
    GetValueRequest { type_instance_id, resource_version, context },
    GetValueResponse { value },
    GetLockedByRequest { type_instance_id, context },
    GetLockedByResponse { locked_by },
    OnLockRequest { type_instance_id, context, locked_by },
    OnLockResponse {},
    OnUnlockRequest { type_instance_id, context },
    OnUnlockResponse {},
}

/// A check of one golden entry against one Rust message type.
trait Check {
    fn run<M: WireMessage>(entry: &Golden) -> Result<(), String>;
}

/// Building the message from `fields` and encoding it gives exactly `hex`.
struct EncodesLikeReference;

impl Check for EncodesLikeReference {
    fn run<M: WireMessage>(entry: &Golden) -> Result<(), String> {
        let ours = hex::encode(M::from_fields(&entry.fields)?.encode_to_vec());
        if ours == entry.hex {
            Ok(())
        } else {
            Err(format!("encodes as {ours}, the reference as {}", entry.hex))
        }
    }
}

/// Decoding `hex` gives back exactly `fields`, presence included.
struct DecodesLikeReference;

impl Check for DecodesLikeReference {
    fn run<M: WireMessage>(entry: &Golden) -> Result<(), String> {
        let decoded = M::decode(entry.wire()?.as_slice()).map_err(|e| format!("decode: {e}"))?;
        let fields = decoded.to_fields();
        if fields == entry.fields {
            Ok(())
        } else {
            Err(format!(
                "decodes to {}, the reference has {}",
                Value::Object(fields),
                Value::Object(entry.fields.clone())
            ))
        }
    }
}

/// Runs `C` on every golden entry and fails listing every entry that failed.
fn check_every_entry<C: Check>() {
    let entries = golden();
    assert!(!entries.is_empty(), "golden.json has no entries");
    let failures: Vec<String> = entries
        .iter()
        .filter_map(|entry| {
            check::<C>(entry)
                .err()
                .map(|e| format!("{}: {e}", entry.label()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} reference cases differ:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}

#[test]
fn every_message_encodes_like_the_reference_implementation() {
    check_every_entry::<EncodesLikeReference>();
}

#[test]
fn every_reference_encoding_decodes_to_the_same_fields() {
    check_every_entry::<DecodesLikeReference>();
}

#[test]
fn every_message_of_the_spec_table_has_its_reference_cases() {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in golden() {
        let cases = found.entry(entry.message.clone()).or_default();
        assert!(
            cases.insert(entry.case.clone()),
            "{} appears twice in golden.json",
            entry.label()
        );
    }
    for (message, expected) in SPEC_TABLE {
        let expected: BTreeSet<String> = expected.iter().map(|c| (*c).to_owned()).collect();
        assert_eq!(
            found.remove(*message),
            Some(expected),
            "reference cases of {message} (golden.json against the spec table)"
        );
    }
    assert!(
        found.is_empty(),
        "golden.json has messages the spec table lacks: {:?}",
        found.keys().collect::<Vec<_>>()
    );
}
