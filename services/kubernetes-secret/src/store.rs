//! The Secrets API as this backend needs it: get, create-only, replace at a
//! resourceVersion, delete at a uid, list by label. Every call goes through
//! [`shared::metrics::store_call`] and maps API errors onto the protocol's
//! error kinds in exactly one place ([`map_err`]).

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams, Preconditions},
};
use shared::{Error, Result};

/// Outcome of a conditional write.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Ok,
    /// 409: the object exists already (create) or changed since it was
    /// read (replace), or it is gone (replace of a deleted object).
    Conflict,
}

/// The one mapping of Kubernetes API failures to protocol errors. `verb`
/// is the RBAC verb, so a 403 names exactly what the Role lacks.
pub fn map_err(e: kube::Error, verb: &str, namespace: &str) -> Error {
    match &e {
        kube::Error::Api(s) => match s.code {
            401 | 403 => Error::permission_denied(format!(
                "kubernetes denied '{verb}' on secrets in namespace {namespace}: check the backend's Role"
            ))
            .with_source(e),
            429 => Error::unavailable(format!(
                "kubernetes throttled '{verb}' on secrets in namespace {namespace}"
            ))
            .with_source(e),
            code if code >= 500 => Error::unavailable(format!(
                "kubernetes api server answered {code} to '{verb}' on secrets in namespace {namespace}"
            ))
            .with_source(e),
            code => Error::internal(format!(
                "kubernetes api server answered {code} to '{verb}' on secrets in namespace {namespace}"
            ))
            .with_source(e),
        },
        // Connection refused or reset, TLS, timeouts.
        kube::Error::HyperError(_) | kube::Error::Service(_) => Error::unavailable(format!(
            "kubernetes api server cannot be reached for '{verb}' on secrets in namespace {namespace}"
        ))
        .with_source(e),
        _ => Error::internal(format!(
            "kubernetes call '{verb}' on secrets in namespace {namespace} failed"
        ))
        .with_source(e),
    }
}

fn code_of(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Secrets of one namespace.
#[derive(Clone)]
pub struct Secrets {
    pub api: Api<Secret>,
    pub namespace: String,
}

impl Secrets {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<Secret>> {
        let r =
            shared::metrics::store_call("secret_get", async { Ok(self.api.get_opt(name).await) })
                .await?;
        r.map_err(|e| map_err(e, "get", &self.namespace))
    }

    /// Creates `secret`; an existing one of the same name is a conflict.
    pub async fn create(&self, secret: &Secret) -> Result<Written> {
        let r = shared::metrics::store_call("secret_create", async {
            Ok(self.api.create(&PostParams::default(), secret).await)
        })
        .await?;
        match r {
            Ok(_) => Ok(Written::Ok),
            Err(e) if code_of(&e) == Some(409) => Ok(Written::Conflict),
            Err(e) => Err(map_err(e, "create", &self.namespace)),
        }
    }

    /// Replaces the Secret; `secret` must carry the resourceVersion read.
    pub async fn replace(&self, name: &str, secret: &Secret) -> Result<Written> {
        let r = shared::metrics::store_call("secret_update", async {
            Ok(self.api.replace(name, &PostParams::default(), secret).await)
        })
        .await?;
        match r {
            Ok(_) => Ok(Written::Ok),
            Err(e) if matches!(code_of(&e), Some(409 | 404)) => Ok(Written::Conflict),
            Err(e) => Err(map_err(e, "update", &self.namespace)),
        }
    }

    /// Deletes `name` if it is still the object with `uid` (a Secret
    /// re-created under the same name in the meantime is left alone).
    /// Missing or replaced: success.
    pub async fn delete(&self, name: &str, uid: Option<&str>) -> Result<()> {
        let params = DeleteParams {
            preconditions: uid.map(|u| Preconditions {
                uid: Some(u.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let r = shared::metrics::store_call("secret_delete", async {
            Ok(self.api.delete(name, &params).await)
        })
        .await?;
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(code_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(map_err(e, "delete", &self.namespace)),
        }
    }

    /// Every Secret matching `selector` (pages through the list).
    pub async fn list(&self, selector: &str, limit: Option<u32>) -> Result<Vec<Secret>> {
        let mut out = Vec::new();
        let mut params = ListParams::default().labels(selector);
        if let Some(l) = limit {
            params = params.limit(l);
        }
        loop {
            let r = shared::metrics::store_call("secret_list", async {
                Ok(self.api.list(&params).await)
            })
            .await?;
            let page = r.map_err(|e| map_err(e, "list", &self.namespace))?;
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            out.extend(page.items);
            match next {
                Some(token) if limit.is_none() => params = params.continue_token(&token),
                _ => return Ok(out),
            }
        }
    }
}
