//! The protocol's input rules (spec §3 "Identifiers and inputs"), applied
//! before a backend sees a request.

use serde_json::Value as Json;

use crate::{Context, Describe, Error, Owner, Result, Revision, TypeInstanceId, Value};

/// Input rules of one backend: its context schema and value limit.
pub struct Rules {
    backend: &'static str,
    schema: Option<jsonschema::Validator>,
    context_required: bool,
    max_value_bytes: u64,
}

impl Rules {
    /// Fails if the backend's own schema does not compile: a programming
    /// error, caught at start.
    pub fn new(describe: &Describe, configured_max_value_bytes: u64) -> Result<Self> {
        let schema = describe
            .context_schema
            .as_ref()
            .map(jsonschema::validator_for)
            .transpose()
            .map_err(|e| {
                Error::internal(format!(
                    "context schema of the {} backend does not compile: {e}",
                    describe.name
                ))
            })?;
        Ok(Self {
            backend: describe.name,
            schema,
            context_required: describe.context_required,
            max_value_bytes: configured_max_value_bytes.min(describe.max_value_bytes),
        })
    }

    pub fn max_value_bytes(&self) -> u64 {
        self.max_value_bytes
    }

    pub fn id(&self, raw: &str) -> Result<TypeInstanceId> {
        TypeInstanceId::parse(raw)
    }

    pub fn revision(&self, raw: u32) -> Result<Revision> {
        Revision::parse(raw)
    }

    /// `owner_id` of update/delete: absent or empty means "no owner".
    pub fn owner(&self, raw: Option<&str>) -> Result<Option<Owner>> {
        match raw {
            None | Some("") => Ok(None),
            Some(o) => Owner::parse(o).map(Some),
        }
    }

    pub fn value(&self, raw: bytes::Bytes) -> Result<Value> {
        if raw.len() as u64 > self.max_value_bytes {
            return Err(Error::invalid_argument(format!(
                "value is larger than the {} backend's limit of {} bytes",
                self.backend, self.max_value_bytes
            )));
        }
        Ok(Value::new(raw))
    }

    /// Empty bytes and JSON `null` mean "no context"; anything else must be a
    /// JSON object valid against the backend's schema.
    pub fn context(&self, raw: Option<&[u8]>) -> Result<Context> {
        let raw = raw.unwrap_or_default();
        let trimmed = raw.trim_ascii();
        if trimmed.is_empty() || trimmed == b"null" {
            if self.context_required {
                return Err(Error::invalid_argument(format!(
                    "context is required by the {} backend",
                    self.backend
                )));
            }
            return Ok(Context::none());
        }
        let parsed: Json = serde_json::from_slice(trimmed)
            .map_err(|_| Error::invalid_argument("context is not valid JSON"))?;
        let Json::Object(obj) = parsed else {
            return Err(Error::invalid_argument("context must be a JSON object"));
        };
        match &self.schema {
            Some(validator) => {
                let instance = Json::Object(obj);
                if let Some(err) = validator.iter_errors(&instance).next() {
                    return Err(Error::invalid_argument(schema_message(self.backend, &err)));
                }
                let Json::Object(obj) = instance else {
                    unreachable!("constructed as an object above")
                };
                Ok(Context::from_object(obj))
            }
            None if obj.is_empty() => Ok(Context::from_object(obj)),
            None => Err(Error::invalid_argument(format!(
                "the {} backend takes no context",
                self.backend
            ))),
        }
    }
}

/// Names the failing field and rule, never the offending value.
fn schema_message(backend: &str, err: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    let at = err.instance_path().to_string();
    let field = |name: &str| {
        if at.is_empty() {
            format!("/{name}")
        } else {
            format!("{at}/{name}")
        }
    };
    match err.kind() {
        K::Required { property } => format!(
            "context field '{}' is required by the {backend} backend",
            field(property.as_str().unwrap_or("?"))
        ),
        K::AdditionalProperties { unexpected } => format!(
            "context field '{}' is not allowed by the {backend} backend",
            field(unexpected.first().map(String::as_str).unwrap_or("?"))
        ),
        kind => format!(
            "context field '{}' fails the '{}' rule of the {backend} backend's schema",
            if at.is_empty() { "/" } else { &at },
            kind.keyword()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(required: bool) -> Rules {
        let d = Describe {
            name: "test",
            version: "0",
            accept_value: true,
            context_schema: Some(json!({
                "type": "object",
                "properties": {"prefix": {"type": "string", "pattern": "^[a-z]+$"}},
                "required": ["prefix"],
                "additionalProperties": false
            })),
            context_required: required,
            max_value_bytes: 10,
        };
        Rules::new(&d, 1 << 20).expect("schema compiles")
    }

    #[test]
    fn empty_and_null_mean_no_context() {
        assert!(rules(false).context(Some(b"")).is_ok_and(|c| c.is_none()));
        assert!(
            rules(false)
                .context(Some(b"null"))
                .is_ok_and(|c| c.is_none())
        );
        assert!(rules(false).context(None).is_ok_and(|c| c.is_none()));
    }

    #[test]
    fn missing_required_context_is_invalid() {
        let err = rules(true).context(Some(b"null")).expect_err("required");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn non_object_context_is_invalid() {
        for raw in [&b"[1]"[..], b"\"s\"", b"3", b"{"] {
            assert!(rules(false).context(Some(raw)).is_err());
        }
    }

    #[test]
    fn schema_failure_names_the_field_but_not_the_value() {
        let err = rules(false)
            .context(Some(br#"{"prefix":"SECRETVALUE"}"#))
            .expect_err("pattern");
        assert!(err.message().contains("/prefix"), "{}", err.message());
        assert!(!err.message().contains("SECRETVALUE"));
        let err = rules(false)
            .context(Some(br#"{"other":1}"#))
            .expect_err("extra");
        assert!(err.message().contains("/other") || err.message().contains("/prefix"));
    }

    #[test]
    fn value_limit_is_the_lower_of_store_and_config() {
        let r = rules(false);
        assert_eq!(r.max_value_bytes(), 10);
        assert!(r.value(bytes::Bytes::from_static(b"0123456789")).is_ok());
        let err = r
            .value(bytes::Bytes::from_static(b"0123456789a"))
            .expect_err("over");
        assert!(err.message().contains("10 bytes"));
    }
}
