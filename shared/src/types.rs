//! Validated inputs. A backend only ever sees these, never raw wire fields.

use std::{fmt, num::NonZeroU32, str::FromStr};

use bytes::Bytes;
use serde_json::{Map, Value as Json};

use crate::error::Error;

/// A TypeInstance id: 1–128 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// Safe to use as part of a storage key, file name or object name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeInstanceId(String);

impl TypeInstanceId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, Error> {
        if raw.is_empty() {
            return Err(Error::invalid_argument("type instance id is empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(Error::invalid_argument(format!(
                "type instance id is longer than {} characters",
                Self::MAX_LEN
            )));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !raw.chars().all(allowed) || raw == "." || raw == ".." {
            // The id is not echoed: it is not one we accept, so it may be anything.
            return Err(Error::invalid_argument(
                "type instance id must match [A-Za-z0-9._-]{1,128} and not be '.' or '..'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TypeInstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TypeInstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TypeInstanceId({})", self.0)
    }
}

/// A resource version, 1 or more.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Revision(NonZeroU32);

impl Revision {
    pub const FIRST: Revision = Revision(NonZeroU32::MIN);

    pub fn parse(raw: u32) -> Result<Self, Error> {
        NonZeroU32::new(raw)
            .map(Self)
            .ok_or_else(|| Error::invalid_argument("resource version must be 1 or more"))
    }

    pub fn new(raw: u32) -> Option<Self> {
        NonZeroU32::new(raw).map(Self)
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A lock owner as the Hub names it. Not secret: it is shown in errors.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    pub const MAX_LEN: usize = 256;

    pub fn parse(raw: &str) -> Result<Self, Error> {
        if raw.is_empty() {
            return Err(Error::invalid_argument("lock owner is empty"));
        }
        if raw.len() > Self::MAX_LEN || raw.chars().any(char::is_control) {
            return Err(Error::invalid_argument(format!(
                "lock owner must be at most {} characters without control characters",
                Self::MAX_LEN
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Owner({})", self.0)
    }
}

/// Opaque TypeInstance value bytes. Never printed: `Debug` shows the length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Value(Bytes);

impl Value {
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value(<{} bytes redacted>)", self.0.len())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Self(v.into())
    }
}

impl From<Bytes> for Value {
    fn from(v: Bytes) -> Self {
        Self(v)
    }
}

/// A validated context: `None` when the Hub sent none (empty bytes or `null`).
#[derive(Clone, PartialEq, Default)]
pub struct Context(Option<Map<String, Json>>);

impl Context {
    pub fn none() -> Self {
        Self(None)
    }

    pub fn from_object(obj: Map<String, Json>) -> Self {
        Self(Some(obj))
    }

    pub fn object(&self) -> Option<&Map<String, Json>> {
        self.0.as_ref()
    }

    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// A string field of the context, if present.
    pub fn str(&self, field: &str) -> Option<&str> {
        self.0.as_ref()?.get(field)?.as_str()
    }

    /// Deserializes the context into the backend's own typed form.
    pub fn parse<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, Error> {
        match &self.0 {
            None => Ok(T::default()),
            Some(obj) => serde_json::from_value(Json::Object(obj.clone())).map_err(|_| {
                Error::invalid_argument("context does not match the backend's schema")
            }),
        }
    }
}

impl fmt::Debug for Context {
    // Field names only: context values are not secret by contract, but a
    // careless client might still put one there.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Context(none)"),
            Some(obj) => f.debug_set().entries(obj.keys()).finish(),
        }
    }
}

/// A secret configuration string (token, key, password). `Debug` and
/// `Display` print `***`; use [`Secret::expose`] at the single point of use.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_accepts_the_documented_charset() {
        for ok in ["a", "A-b_c.d", "0", "..a", &"x".repeat(128)] {
            assert!(TypeInstanceId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn id_rejects_traversal_separators_and_length() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a\0b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            let err = TypeInstanceId::parse(bad).expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn revision_zero_is_invalid() {
        assert_eq!(
            Revision::parse(0).map_err(|e| e.code()),
            Err(tonic::Code::InvalidArgument)
        );
        assert_eq!(Revision::parse(7).map(Revision::get).ok(), Some(7));
    }

    #[test]
    fn debug_output_never_shows_values_or_secrets() {
        let v = Value::new(&b"hunter2"[..]);
        let s: Secret = "s.token".parse().unwrap_or_else(|e| match e {});
        assert_eq!(format!("{v:?}"), "Value(<7 bytes redacted>)");
        assert!(!format!("{s:?} {s}").contains("token"));
    }
}
