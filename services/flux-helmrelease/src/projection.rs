//! The TypeInstance value: a JSON projection of a HelmRelease
//! (helm.toolkit.fluxcd.io/v2). Documented field by field in README.md
//! ("The value"); changing it is a change of the stored format.
//!
//! Only what the HelmRelease object itself holds is projected. `valuesFrom`
//! entries are listed as references; the ConfigMaps and Secrets they point to
//! are never read here.

use serde_json::{Map, Value as Json, json};

/// Version of the projection's layout, carried in the value.
pub const FORMAT: u32 = 1;

fn get<'a>(v: &'a Json, path: &[&str]) -> Option<&'a Json> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Json, path: &[&str]) -> Option<&'a str> {
    get(v, path)
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
}

/// Copies the listed fields of `from` (when present) into a new object.
fn pick(from: Option<&Json>, fields: &[&str]) -> Json {
    let mut out = Map::new();
    if let Some(Json::Object(m)) = from {
        for f in fields {
            if let Some(v) = m.get(*f) {
                out.insert((*f).to_owned(), v.clone());
            }
        }
    }
    Json::Object(out)
}

/// The Helm release name helm-controller uses: `status.history` holds the
/// name it actually installed; otherwise Flux's default rule
/// (`spec.releaseName`, else `<targetNamespace>-<name>`, else `<name>`).
pub fn release_name(hr: &Json) -> Option<String> {
    if let Some(n) = str_at(hr, &["spec", "releaseName"]) {
        return Some(n.to_owned());
    }
    if let Some(n) = get(hr, &["status", "history"])
        .and_then(Json::as_array)
        .and_then(|h| h.first())
        .and_then(|e| str_at(e, &["name"]))
    {
        return Some(n.to_owned());
    }
    let name = str_at(hr, &["metadata", "name"])?;
    Some(match str_at(hr, &["spec", "targetNamespace"]) {
        Some(t) => format!("{t}-{name}"),
        None => name.to_owned(),
    })
}

fn chart(hr: &Json, namespace: Option<&str>) -> Json {
    let source = |r: Option<&Json>| {
        let mut s = pick(r, &["apiVersion", "kind", "name", "namespace"]);
        // Flux defaults a source's namespace to the HelmRelease's own.
        if let (Json::Object(m), Some(ns)) = (&mut s, namespace) {
            m.entry("namespace").or_insert_with(|| json!(ns));
        }
        s
    };
    if let Some(spec) = get(hr, &["spec", "chart", "spec"]) {
        return json!({
            "name": spec.get("chart"),
            // Flux's default when no version is given: the latest.
            "version": spec.get("version").cloned().unwrap_or_else(|| json!("*")),
            "sourceRef": source(spec.get("sourceRef")),
        });
    }
    if let Some(r) = get(hr, &["spec", "chartRef"]) {
        // chartRef points to an OCIRepository or HelmChart: the chart name
        // and version are known only from what was installed (history).
        return json!({"name": null, "version": null, "sourceRef": source(Some(r))});
    }
    Json::Null
}

fn ready(hr: &Json) -> Json {
    get(hr, &["status", "conditions"])
        .and_then(Json::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Json::as_str) == Some("Ready"))
        })
        .map(|c| {
            pick(
                Some(c),
                &[
                    "status",
                    "reason",
                    "message",
                    "lastTransitionTime",
                    "observedGeneration",
                ],
            )
        })
        .unwrap_or(Json::Null)
}

const HISTORY_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "version",
    "status",
    "chartName",
    "chartVersion",
    "appVersion",
    "configDigest",
    "digest",
    "firstDeployed",
    "lastDeployed",
    "deleted",
    "ociDigest",
];

fn history(hr: &Json) -> Vec<Json> {
    get(hr, &["status", "history"])
        .and_then(Json::as_array)
        .map(|h| h.iter().map(|e| pick(Some(e), HISTORY_FIELDS)).collect())
        .unwrap_or_default()
}

/// The chart version of the newest release Helm reports as deployed (v2 has
/// no `lastAppliedRevision`; v2beta1 objects may still carry one).
fn last_applied_revision(hr: &Json, history: &[Json]) -> Json {
    if let Some(r) = get(hr, &["status", "lastAppliedRevision"]) {
        return r.clone();
    }
    history
        .iter()
        .find(|e| e.get("status").and_then(Json::as_str) == Some("deployed"))
        .and_then(|e| e.get("chartVersion"))
        .cloned()
        .unwrap_or(Json::Null)
}

/// The value of a HelmRelease as the Hub sees it. `hr` is the whole object
/// as the API server returns it.
pub fn project(hr: &Json) -> Json {
    let namespace = str_at(hr, &["metadata", "namespace"]);
    let history = history(hr);
    let values_from: Vec<Json> = get(hr, &["spec", "valuesFrom"])
        .and_then(Json::as_array)
        .map(|v| {
            v.iter()
                .map(|r| {
                    pick(
                        Some(r),
                        &["kind", "name", "valuesKey", "targetPath", "optional"],
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "format": FORMAT,
        "apiVersion": hr.get("apiVersion"),
        "kind": hr.get("kind"),
        "name": get(hr, &["metadata", "name"]),
        "namespace": namespace,
        "uid": get(hr, &["metadata", "uid"]),
        "generation": get(hr, &["metadata", "generation"]),
        "observedGeneration": get(hr, &["status", "observedGeneration"]),
        "suspended": get(hr, &["spec", "suspend"]).and_then(Json::as_bool).unwrap_or(false),
        "chart": chart(hr, namespace),
        "releaseName": release_name(hr),
        "targetNamespace": str_at(hr, &["spec", "targetNamespace"]).or(namespace),
        "storageNamespace": str_at(hr, &["spec", "storageNamespace"])
            .or_else(|| str_at(hr, &["status", "storageNamespace"]))
            .or(namespace),
        "values": get(hr, &["spec", "values"]).cloned().unwrap_or_else(|| json!({})),
        "valuesFrom": values_from,
        "status": {
            "ready": ready(hr),
            "lastAttemptedRevision": get(hr, &["status", "lastAttemptedRevision"]),
            "lastAppliedRevision": last_applied_revision(hr, &history),
            "lastAttemptedReleaseAction": get(hr, &["status", "lastAttemptedReleaseAction"]),
            "history": history,
        },
    })
}

/// The projection as stored and returned: compact JSON.
pub fn to_bytes(projection: &Json) -> Vec<u8> {
    // Serializing a `serde_json::Value` cannot fail.
    serde_json::to_vec(projection).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Json {
        json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2",
            "kind": "HelmRelease",
            "metadata": {"name": "podinfo", "namespace": "apps", "uid": "u-1", "generation": 3,
                         "annotations": {"secret-looking": "x"}},
            "spec": {
                "interval": "5m",
                "targetNamespace": "web",
                "chart": {"spec": {"chart": "podinfo", "version": "6.5.*",
                                    "sourceRef": {"kind": "HelmRepository", "name": "podinfo"}}},
                "values": {"replicaCount": 2},
                "valuesFrom": [{"kind": "Secret", "name": "db", "valuesKey": "pw", "targetPath": "db.password"}]
            },
            "status": {
                "observedGeneration": 2,
                "lastAttemptedRevision": "6.5.4",
                "conditions": [
                    {"type": "Released", "status": "True", "reason": "UpgradeSucceeded", "message": "m"},
                    {"type": "Ready", "status": "True", "reason": "UpgradeSucceeded", "message": "ok",
                     "lastTransitionTime": "2026-01-01T00:00:00Z"}
                ],
                "history": [
                    {"name": "web-podinfo", "namespace": "web", "version": 2, "status": "deployed",
                     "chartName": "podinfo", "chartVersion": "6.5.4", "appVersion": "6.5.4",
                     "digest": "sha256:a", "configDigest": "sha256:b", "testHooks": {}},
                    {"name": "web-podinfo", "namespace": "web", "version": 1, "status": "superseded",
                     "chartName": "podinfo", "chartVersion": "6.5.3"}
                ]
            }
        })
    }

    #[test]
    fn projection_carries_chart_release_values_and_status() {
        let p = project(&sample());
        assert_eq!(p["chart"]["name"], "podinfo");
        assert_eq!(p["chart"]["version"], "6.5.*");
        assert_eq!(p["chart"]["sourceRef"]["namespace"], "apps");
        assert_eq!(p["releaseName"], "web-podinfo");
        assert_eq!(p["targetNamespace"], "web");
        assert_eq!(p["values"]["replicaCount"], 2);
        assert_eq!(p["generation"], 3);
        assert_eq!(p["observedGeneration"], 2);
        assert_eq!(p["status"]["ready"]["status"], "True");
        assert_eq!(p["status"]["lastAttemptedRevision"], "6.5.4");
        assert_eq!(p["status"]["lastAppliedRevision"], "6.5.4");
        assert_eq!(p["status"]["history"].as_array().map(Vec::len), Some(2));
        assert!(p["status"]["history"][0].get("testHooks").is_none());
    }

    #[test]
    fn values_from_is_listed_as_references_only() {
        let p = project(&sample());
        assert_eq!(p["valuesFrom"][0]["name"], "db");
        assert_eq!(p["valuesFrom"][0]["targetPath"], "db.password");
        // Metadata other than identity (annotations, labels) is not projected.
        assert!(!String::from_utf8_lossy(&to_bytes(&p)).contains("secret-looking"));
    }

    #[test]
    fn release_name_follows_flux_defaults_without_history() {
        let mut hr = sample();
        hr["status"] = json!({});
        assert_eq!(release_name(&hr).as_deref(), Some("web-podinfo"));
        hr["spec"]
            .as_object_mut()
            .map(|s| s.remove("targetNamespace"));
        assert_eq!(release_name(&hr).as_deref(), Some("podinfo"));
        hr["spec"]["releaseName"] = json!("explicit");
        assert_eq!(release_name(&hr).as_deref(), Some("explicit"));
    }

    #[test]
    fn chart_ref_and_fresh_object_project_without_status() {
        let hr = json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "x", "namespace": "n"},
            "spec": {"chartRef": {"kind": "OCIRepository", "name": "repo"}}
        });
        let p = project(&hr);
        assert_eq!(p["chart"]["sourceRef"]["kind"], "OCIRepository");
        assert_eq!(p["chart"]["sourceRef"]["namespace"], "n");
        assert_eq!(p["status"]["ready"], Json::Null);
        assert_eq!(p["status"]["lastAppliedRevision"], Json::Null);
        assert_eq!(p["values"], json!({}));
        assert_eq!(p["suspended"], false);
    }
}
