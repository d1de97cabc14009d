//! The registration manifests in `deploy/capact/<name>/` are exactly what
//! `storagectl register` renders from the running backend's Describe, and
//! they are valid: the Type against the OCF 0.0.1 Type schema and Capact's
//! generic storage schema, the TypeInstance value against the Type.
//!
//! `UPDATE_MANIFESTS=1` rewrites the files instead of comparing (then review
//! the diff).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use shared::client::{Client, Connect, Timeouts};
use storagectl::registration::{self, TYPE_FILE, TYPE_INSTANCE_FILE};

/// The address the example TypeInstance registers: the Service the Helm
/// chart creates for release `capact-storage-<name>` in `capact-system`.
pub fn example_hub_url(name: &str) -> String {
    format!("capact-storage-{name}.capact-system.svc.cluster.local:50051")
}

/// The repository root (this crate is tools/testkit).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Checks `deploy/capact/<name>/` against the backend serving at `url`.
pub async fn assert_manifests_match(url: &str, name: &str) {
    let client = Client::connect(&Connect::plain(url), Timeouts::default())
        .await
        .expect("connect to the backend");
    let info = client.info();
    assert_eq!(info.name, name, "the backend reports another name");
    let rendered = registration::render_parts(
        info,
        &example_hub_url(name),
        &registration::default_type_path(name),
    )
    .expect("render the registration");
    let dir = repo_root().join("deploy/capact").join(name);
    if std::env::var_os("UPDATE_MANIFESTS").is_some() {
        rendered.write_to(&dir).expect("write the manifests");
    }
    for (file, want) in [
        (TYPE_INSTANCE_FILE, &rendered.type_instance),
        (TYPE_FILE, &rendered.type_manifest),
    ] {
        let path = dir.join(file);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            &have == want,
            "{} differs from `storagectl register --output-dir` for the running backend \
             (rerun with UPDATE_MANIFESTS=1 and review the diff); expected:\n{want}",
            path.display()
        );
    }
    assert_valid(&dir);
}

/// Validates the committed Type and TypeInstance of one backend.
pub fn assert_valid(dir: &Path) {
    let ty: Json = yaml(&dir.join(TYPE_FILE));
    let errors = ocf_type_validator()
        .iter_errors(&ty)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect::<Vec<_>>();
    assert!(
        errors.is_empty(),
        "{}: not an OCF 0.0.1 Type: {errors:?}",
        dir.display()
    );

    let schema_text = ty["spec"]["jsonSchema"]["value"]
        .as_str()
        .expect("spec.jsonSchema.value is a string");
    let schema: Json = serde_json::from_str(schema_text).expect("the Type's JSON Schema is JSON");
    let generic: Json = serde_json::from_str(include_str!(
        "../../storagectl/src/testdata/hub_storage_generic.schema.json"
    ))
    .expect("generic schema");
    assert!(
        jsonschema::is_valid(&generic, &schema),
        "{}: the Type's schema does not satisfy cap.core.type.hub.storage.generic",
        dir.display()
    );
    let refs = ty["spec"]["additionalRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        refs.contains(&Json::String(registration::HUB_STORAGE_REF.into())),
        "{}: spec.additionalRefs lacks {}",
        dir.display(),
        registration::HUB_STORAGE_REF
    );

    let ti: Json = yaml(&dir.join(TYPE_INSTANCE_FILE));
    let entry = &ti["typeInstances"][0];
    assert_eq!(
        entry["typeRef"]["path"].as_str(),
        Some(
            format!(
                "{}.{}",
                ty["metadata"]["prefix"].as_str().unwrap_or(""),
                ty["metadata"]["name"].as_str().unwrap_or("")
            )
            .as_str()
        ),
        "{}: the TypeInstance refers to another Type",
        dir.display()
    );
    let validator = jsonschema::validator_for(&schema).expect("the Type's schema compiles");
    let errors = validator
        .iter_errors(&entry["value"])
        .map(|e| e.to_string())
        .collect::<Vec<_>>();
    assert!(
        errors.is_empty(),
        "{}: the TypeInstance value does not match its Type: {errors:?}",
        dir.display()
    );
}

fn yaml(path: &Path) -> Json {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// OCF's `https://capact.io/schemas/common/*.json` from tests/fixtures.
struct OcfCommon;

impl jsonschema::Retrieve for OcfCommon {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Json, Box<dyn std::error::Error + Send + Sync>> {
        let file = uri
            .as_str()
            .strip_prefix("https://capact.io/schemas/common/")
            .ok_or_else(|| format!("unexpected reference {uri}"))?;
        let text = std::fs::read_to_string(ocf_dir().join("common").join(file))?;
        Ok(serde_json::from_str(&text)?)
    }
}

fn ocf_dir() -> PathBuf {
    repo_root().join("tests/fixtures/ocf-0.0.1")
}

fn ocf_type_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(ocf_dir().join("type.json")).expect("OCF type.json");
    let schema: Json = serde_json::from_str(&text).expect("OCF type.json is JSON");
    jsonschema::options()
        .with_retriever(OcfCommon)
        .build(&schema)
        .expect("the OCF Type schema compiles")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed backend directory validates (the comparison with a
    /// running backend is done in each service's tests).
    #[test]
    fn committed_registration_manifests_are_valid() {
        let root = repo_root().join("deploy/capact");
        let mut seen = 0;
        for entry in std::fs::read_dir(&root).expect("deploy/capact exists") {
            let dir = entry.expect("dir entry").path();
            if dir.is_dir() {
                assert_valid(&dir);
                seen += 1;
            }
        }
        assert!(seen >= 2, "only {seen} backends in deploy/capact");
    }

    #[test]
    fn a_type_without_required_ocf_fields_is_rejected() {
        let validator = ocf_type_validator();
        let bad = serde_json::json!({"ocfVersion": "0.0.1", "kind": "Type", "revision": "0.1.0"});
        assert!(!validator.is_valid(&bad));
    }
}
