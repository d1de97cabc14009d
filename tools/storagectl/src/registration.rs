//! What registers a backend in the Hub, built from its Describe answer:
//! the TypeInstance (input of `capact typeinstance create -f`) whose value is
//! `{"url", "acceptValue", "contextSchema"}`, and the OCF 0.0.1 Type it is an
//! instance of, shaped like Capact's own storage Types
//! (`cap.type.aws.secrets-manager.storage`, `cap.type.helm.release.storage`).

use serde_json::{Value as Json, json};
use shared::proto::info::DescribeResponse;

use crate::{
    error::Error,
    yaml::{block_lines, entry, pretty_json, scalar_str, sequence},
};

/// Revision of the generated Type, and of the TypeInstance's reference to it.
pub const TYPE_REVISION: &str = "0.1.0";

/// The parent node every storage Type is attached to.
pub const HUB_STORAGE_REF: &str = "cap.core.type.hub.storage";

/// `cap.type.capactio.storage-backends.<name>.storage`: one Type per backend
/// name, with the last segment `storage` as in Capact's storage Types.
pub fn default_type_path(name: &str) -> String {
    format!("cap.type.capactio.storage-backends.{name}.storage")
}

/// Splits a Type path into OCF `prefix` and `name`, refusing what the Hub
/// would not accept as a custom Type path.
pub fn split_type_path(path: &str) -> Result<(&str, &str), Error> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let segments: Vec<&str> = path.split('.').collect();
    if !path.starts_with("cap.type.")
        || segments.len() < 3
        || !segments.iter().all(|s| segment_ok(s))
    {
        return Err(Error::usage(format!(
            "type path {path:?} must be cap.type.<segment>... with segments of [A-Za-z0-9_-]"
        )));
    }
    path.rsplit_once('.')
        .ok_or_else(|| Error::usage(format!("type path {path:?} has no name segment")))
}

/// Checks the URL the Hub will dial: `host:port` (plaintext) or `https://…`.
pub fn check_hub_url(url: &str) -> Result<(), Error> {
    if url.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::usage(
            "--hub-url must be a non-empty host:port or https:// URL",
        ));
    }
    match url.split_once("://") {
        None => Ok(()),
        Some(("https", rest)) if !rest.is_empty() => Ok(()),
        Some(("http", _)) => Err(Error::usage(
            "--hub-url: the Hub dials host:port in plaintext; drop the http:// prefix",
        )),
        Some(_) => Err(Error::usage(
            "--hub-url must be host:port (plaintext) or https://host:port",
        )),
    }
}

/// The backend's context schema as JSON: `null` when it takes no context.
pub fn context_schema(describe: &DescribeResponse) -> Result<Json, Error> {
    let text = describe.context_schema.trim();
    if text.is_empty() {
        return Ok(Json::Null);
    }
    match serde_json::from_str::<Json>(text) {
        Ok(schema @ Json::Object(_)) => Ok(schema),
        Ok(_) => Err(Error::other(format!(
            "the context schema of the {} backend is not a JSON object",
            describe.name
        ))),
        Err(e) => Err(Error::other(format!(
            "the context schema of the {} backend is not JSON: {e}",
            describe.name
        ))),
    }
}

/// The TypeInstance value that registers the backend.
pub fn type_instance_value(describe: &DescribeResponse, hub_url: &str) -> Result<Json, Error> {
    Ok(json!({
        "url": hub_url,
        "acceptValue": describe.accept_value,
        "contextSchema": context_schema(describe)?,
    }))
}

/// The Type's JSON Schema: pins `acceptValue` and `contextSchema` with
/// `const`, requires all three fields and allows no other, as the Hub's
/// `cap.core.type.hub.storage.generic` schema demands.
pub fn type_json_schema(describe: &DescribeResponse) -> Result<Json, Error> {
    let context = match context_schema(describe)? {
        Json::Null => json!({"$id": "#/properties/contextSchema", "type": "null", "const": null}),
        schema => json!({"$id": "#/properties/contextSchema", "const": schema}),
    };
    // No "format": "uri" on url: host:port with an IP address is no URI, and
    // host:port is what the Hub expects.
    Ok(json!({
        "$schema": "http://json-schema.org/draft-07/schema",
        "type": "object",
        "title": format!("The {} storage backend registration", describe.name),
        "required": ["url", "acceptValue", "contextSchema"],
        "properties": {
            "url": {"$id": "#/properties/url", "type": "string", "minLength": 1},
            "acceptValue": {"$id": "#/properties/acceptValue", "type": "boolean", "const": describe.accept_value},
            "contextSchema": context,
        },
        "additionalProperties": false,
    }))
}

/// The two registration documents of one backend.
pub struct Rendered {
    /// The TypeInstance: input of `capact typeinstance create -f`.
    pub type_instance: String,
    /// Its OCF Type, for the Hub's manifests.
    pub type_manifest: String,
}

impl Rendered {
    /// Both as one YAML stream: the TypeInstance, then its Type.
    pub fn stream(&self) -> String {
        format!("{}---\n{}", self.type_instance, self.type_manifest)
    }

    /// Writes `dir/type-instance.yaml` and `dir/type.yaml`, creating `dir`.
    pub fn write_to(&self, dir: &std::path::Path) -> Result<(), Error> {
        let io = |what: &str, e: std::io::Error| {
            Error::other(format!("cannot write {what} in {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("the directory", e))?;
        std::fs::write(dir.join(TYPE_INSTANCE_FILE), &self.type_instance)
            .map_err(|e| io(TYPE_INSTANCE_FILE, e))?;
        std::fs::write(dir.join(TYPE_FILE), &self.type_manifest).map_err(|e| io(TYPE_FILE, e))
    }
}

/// File names used by `register --output-dir` and in deploy/capact/<name>/.
pub const TYPE_INSTANCE_FILE: &str = "type-instance.yaml";
pub const TYPE_FILE: &str = "type.yaml";

/// Both YAML documents: the TypeInstance, then its Type. Deterministic: the
/// same Describe, URL and path always give the same bytes.
pub fn render(
    describe: &DescribeResponse,
    hub_url: &str,
    type_path: &str,
) -> Result<String, Error> {
    Ok(render_parts(describe, hub_url, type_path)?.stream())
}

/// [`render`]'s two documents, separately.
pub fn render_parts(
    describe: &DescribeResponse,
    hub_url: &str,
    type_path: &str,
) -> Result<Rendered, Error> {
    check_hub_url(hub_url)?;
    let (prefix, name) = split_type_path(type_path)?;
    let value = type_instance_value(describe, hub_url)?;
    let schema = type_json_schema(describe)?;
    let service = if describe.accept_value {
        "ValueAndContextStorageBackend"
    } else {
        "ContextStorageBackend"
    };

    let mut ti = String::new();
    ti.push_str("# TypeInstance that registers the backend in the Hub: the input of\n");
    ti.push_str(
        "# `capact typeinstance create -f`. Its Type (type.yaml) must be in the Hub first.\n",
    );
    ti.push_str("typeInstances:\n");
    ti.push_str("  - typeRef:\n");
    ti.push_str(&format!("      path: {}\n", scalar_str(type_path)));
    ti.push_str(&format!("      revision: {TYPE_REVISION}\n"));
    ti.push_str("    value:\n");
    // Fixed field order, as in the Hub's documentation of the value.
    for key in ["url", "acceptValue", "contextSchema"] {
        entry(key, &value[key], 6, &mut ti);
    }

    let mut out = String::new();
    out.push_str(
        "# Type of the backend's registration TypeInstance (OCF 0.0.1), for the Hub's manifests.\n",
    );
    out.push_str("ocfVersion: 0.0.1\n");
    out.push_str(&format!("revision: {TYPE_REVISION}\n"));
    out.push_str("kind: Type\n");
    out.push_str("metadata:\n");
    out.push_str(&format!("  name: {}\n", scalar_str(name)));
    out.push_str(&format!("  prefix: {}\n", scalar_str(prefix)));
    out.push_str(&format!(
        "  displayName: {}\n",
        scalar_str(&format!("{} storage backend", describe.name))
    ));
    out.push_str(&format!(
        "  description: {}\n",
        scalar_str(&format!(
            "Delegated storage backend {} for the Capact Hub ({service})",
            describe.name
        ))
    ));
    out.push_str("  documentationURL: https://capact.io/docs\n");
    out.push_str("  supportURL: https://capact.io\n");
    out.push_str("  maintainers:\n");
    out.push_str(&sequence(
        &[json!({"email": "team-dev@capact.io", "name": "Capact Dev Team", "url": "https://capact.io"})],
        4,
    ));
    out.push_str("spec:\n");
    out.push_str("  additionalRefs:\n");
    out.push_str(&format!("    - {HUB_STORAGE_REF}\n"));
    out.push_str("  jsonSchema:\n");
    out.push_str("    value: |-\n");
    out.push_str(&block_lines(&pretty_json(&schema), 6));
    Ok(Rendered {
        type_instance: ti,
        type_manifest: out,
    })
}

/// The maintainers as written by [`render`], for tests of the parsed output.
#[cfg(test)]
fn maintainers() -> Json {
    json!([{"email": "team-dev@capact.io", "name": "Capact Dev Team", "url": "https://capact.io"}])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERIC: &str = include_str!("testdata/hub_storage_generic.schema.json");

    fn describe(accept_value: bool, schema: &str) -> DescribeResponse {
        DescribeResponse {
            name: "vault".into(),
            version: "1.2.3".into(),
            accept_value,
            context_schema: schema.into(),
            max_value_bytes: 1 << 20,
            context_required: !schema.is_empty(),
        }
    }

    const SCHEMA: &str = r#"{"$schema":"http://json-schema.org/draft-07/schema","type":"object","properties":{"mount":{"type":"string"}},"additionalProperties":false}"#;

    fn docs(text: &str) -> Vec<Json> {
        text.split("\n---\n")
            .map(|doc| serde_yaml::from_str::<Json>(doc).expect("each document is YAML"))
            .collect()
    }

    fn rendered(d: &DescribeResponse) -> (Json, Json) {
        let text = render(
            d,
            "vault-backend.capact-system:50051",
            &default_type_path(&d.name),
        )
        .expect("renders");
        let mut docs = docs(&text).into_iter();
        let ti = docs.next().expect("TypeInstance document");
        let ty = docs.next().expect("Type document");
        assert!(docs.next().is_none());
        (ti, ty)
    }

    fn type_schema(ty: &Json) -> Json {
        let text = ty["spec"]["jsonSchema"]["value"]
            .as_str()
            .expect("schema text");
        serde_json::from_str(text).expect("schema is JSON")
    }

    #[test]
    fn type_instance_value_without_context() {
        let (ti, _) = rendered(&describe(true, ""));
        assert_eq!(
            ti,
            json!({"typeInstances": [{
                "typeRef": {"path": "cap.type.capactio.storage-backends.vault.storage", "revision": "0.1.0"},
                "value": {"url": "vault-backend.capact-system:50051", "acceptValue": true, "contextSchema": null},
            }]})
        );
    }

    #[test]
    fn type_instance_value_with_context_schema() {
        let (ti, _) = rendered(&describe(false, SCHEMA));
        let value = &ti["typeInstances"][0]["value"];
        assert_eq!(value["acceptValue"], json!(false));
        assert_eq!(
            value["contextSchema"],
            serde_json::from_str::<Json>(SCHEMA).expect("schema")
        );
    }

    #[test]
    fn type_manifest_has_the_ocf_shape() {
        let (_, ty) = rendered(&describe(true, SCHEMA));
        assert_eq!(ty["ocfVersion"], "0.0.1");
        assert_eq!(ty["revision"], "0.1.0");
        assert_eq!(ty["kind"], "Type");
        assert_eq!(ty["metadata"]["name"], "storage");
        assert_eq!(
            ty["metadata"]["prefix"],
            "cap.type.capactio.storage-backends.vault"
        );
        assert_eq!(ty["metadata"]["displayName"], "vault storage backend");
        assert_eq!(ty["metadata"]["maintainers"], maintainers());
        assert_eq!(
            ty["spec"]["additionalRefs"],
            json!(["cap.core.type.hub.storage"])
        );
        let schema = type_schema(&ty);
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(
            schema["required"],
            json!(["url", "acceptValue", "contextSchema"])
        );
        assert_eq!(schema["properties"]["acceptValue"]["const"], json!(true));
    }

    #[test]
    fn type_schema_satisfies_the_hubs_generic_storage_schema() {
        let generic: Json = serde_json::from_str(GENERIC).expect("generic schema");
        let validator = jsonschema::validator_for(&generic).expect("generic compiles");
        for d in [
            describe(true, ""),
            describe(true, SCHEMA),
            describe(false, SCHEMA),
        ] {
            let (_, ty) = rendered(&d);
            let schema = type_schema(&ty);
            let errors: Vec<String> = validator
                .iter_errors(&schema)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{errors:?}");
        }
    }

    #[test]
    fn type_instance_value_validates_against_its_type() {
        for d in [describe(true, ""), describe(false, SCHEMA)] {
            let (ti, ty) = rendered(&d);
            let validator = jsonschema::validator_for(&type_schema(&ty)).expect("compiles");
            let value = &ti["typeInstances"][0]["value"];
            assert!(validator.is_valid(value));
            // A registration claiming the other kind is rejected by the Type.
            let mut other = value.clone();
            other["acceptValue"] = json!(!d.accept_value);
            assert!(!validator.is_valid(&other));
            let mut extra = value.clone();
            extra["extra"] = json!(1);
            assert!(!validator.is_valid(&extra));
        }
    }

    #[test]
    fn render_is_deterministic_and_laid_out_like_capact_manifests() {
        let d = describe(true, "");
        let a = render(&d, "b:1", "cap.type.x.y.storage").expect("renders");
        let b = render(&d, "b:1", "cap.type.x.y.storage").expect("renders");
        assert_eq!(a, b);
        assert!(a.contains(
            "\n  maintainers:\n    - email: team-dev@capact.io\n      name: Capact Dev Team\n"
        ));
        assert!(a.contains("\n    value: |-\n      {\n        \"$schema\": "));
        assert!(a.ends_with("\n      }\n"));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let d = describe(true, "");
        assert!(render(&d, "", "cap.type.x.storage").is_err());
        assert!(render(&d, "http://b:1", "cap.type.x.storage").is_err());
        assert!(render(&d, "b:1", "cap.core.type.x").is_err());
        assert!(render(&d, "b:1", "cap.type.x..storage").is_err());
        assert!(render(&d, "b:1", "cap.type.a b.storage").is_err());
        assert!(render(&describe(true, "[1]"), "b:1", "cap.type.x.storage").is_err());
        assert!(render(&describe(true, "{"), "b:1", "cap.type.x.storage").is_err());
        assert!(render(&d, "https://b:1", "cap.type.x.storage").is_ok());
    }

    #[test]
    fn type_path_splits_into_prefix_and_name() {
        assert_eq!(
            split_type_path("cap.type.aws.secrets-manager.storage").ok(),
            Some(("cap.type.aws.secrets-manager", "storage"))
        );
    }
}
