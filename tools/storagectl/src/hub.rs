//! `register` and `unregister` against a running Hub: find, create, update
//! or delete the backend's storage TypeInstance through the Hub's GraphQL
//! API ([`hub_client`]).
//!
//! A registration is found again by its Type and the marker
//! `storagectl/<name>` in `createdBy` (any revision), else by its `url`:
//! registering twice finds it, a changed URL or context schema adds a
//! revision, and a registration made by hand is adopted, not duplicated.

use std::path::PathBuf;

use clap::Args;
use hub_client::{Hub, HubError, HubOptions, Instance, NewInstance, TypeRef};
use serde_json::Value as Json;

use crate::{error::Error, registration};

/// Where the Hub's GraphQL API is and how to authenticate.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Hub")]
pub struct HubArgs {
    /// The Hub's GraphQL endpoint (e.g. http://capact-hub-local.capact-system/graphql).
    /// With it, register/unregister act on the Hub instead of printing YAML.
    #[arg(long, env = "STORAGECTL_HUB_ENDPOINT")]
    pub hub_endpoint: Option<String>,

    /// File holding a bearer token for the Hub.
    #[arg(
        long,
        env = "STORAGECTL_HUB_TOKEN_FILE",
        conflicts_with = "hub_basic_auth_file"
    )]
    pub hub_token_file: Option<PathBuf>,

    /// File holding `user:password` for the Hub (the Capact gateway's basic auth).
    #[arg(long, env = "STORAGECTL_HUB_BASIC_AUTH_FILE")]
    pub hub_basic_auth_file: Option<PathBuf>,

    /// PEM bundle of CAs to trust for an https:// Hub endpoint.
    #[arg(long, env = "STORAGECTL_HUB_CA_FILE")]
    pub hub_ca_file: Option<PathBuf>,
}

impl HubArgs {
    /// The connected client, or `None` without an endpoint.
    pub fn hub(&self, timeout: std::time::Duration) -> Result<Option<Hub>, Error> {
        let Some(endpoint) = &self.hub_endpoint else {
            return Ok(None);
        };
        let mut options = HubOptions::new(endpoint.clone());
        options.token_file = self.hub_token_file.clone();
        options.basic_auth_file = self.hub_basic_auth_file.clone();
        options.ca_file = self.hub_ca_file.clone();
        options.timeout = timeout;
        Hub::new(&options).map(Some).map_err(Error::from)
    }
}

impl From<HubError> for Error {
    fn from(err: HubError) -> Self {
        match err {
            HubError::Config(m) => Error::usage(m),
            other => Error::other(other.to_string()),
        }
    }
}

/// The `createdBy` marker of registrations made by this tool.
pub fn marker(name: &str) -> String {
    format!("storagectl/{name}")
}

/// What identifies a registration: its Type, the backend name, and
/// optionally an explicit id or the URL it registered.
pub struct Target<'a> {
    pub type_path: &'a str,
    pub name: &'a str,
    pub id: Option<&'a str>,
    pub url: Option<&'a str>,
}

/// The registration `target` names, if the Hub has one; an error when
/// several match and only `--id` can tell them apart.
pub async fn find(hub: &Hub, target: &Target<'_>) -> Result<Option<Instance>, Error> {
    let all = hub.list_with_values(target.type_path, None).await?;
    if let Some(id) = target.id {
        return match all.into_iter().find(|i| i.id == id) {
            Some(found) => Ok(Some(found)),
            None => Err(Error::other(format!(
                "the hub has no TypeInstance {id} of type {}",
                target.type_path
            ))),
        };
    }
    let mine = hub
        .list_with_values(target.type_path, Some(&marker(target.name)))
        .await?;
    let matches: Vec<Instance> = if !mine.is_empty() {
        mine
    } else {
        all.into_iter()
            .filter(|i| {
                target.url.is_some()
                    && i.value
                        .as_ref()
                        .and_then(|v| v.get("url"))
                        .and_then(Json::as_str)
                        == target.url
            })
            .collect()
    };
    match matches.len() {
        0 | 1 => Ok(matches.into_iter().next()),
        _ => Err(Error::other(format!(
            "several TypeInstances of type {} register the {} backend ({}): pass --id",
            target.type_path,
            target.name,
            matches
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// How a registration ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    Created(String),
    Updated(String, u32),
    Unchanged(String),
}

/// Finds or creates the registration of `target` with `value`, updating
/// it when the value changed.
pub async fn register(hub: &Hub, target: &Target<'_>, value: &Json) -> Result<Registered, Error> {
    let created_by = marker(target.name);
    if let Some(found) = find(hub, target).await? {
        if found.value.as_ref() == Some(value) {
            return Ok(Registered::Unchanged(found.id));
        }
        let revision = hub
            .update_value(&found.id, value, Some(&created_by))
            .await?;
        return Ok(Registered::Updated(found.id, revision));
    }
    let new = NewInstance {
        type_ref: TypeRef {
            path: target.type_path.to_owned(),
            revision: registration::TYPE_REVISION.to_owned(),
        },
        created_by: Some(created_by),
        value: Some(value.clone()),
        backend: None,
    };
    match hub.create(&new).await {
        Ok(id) => Ok(Registered::Created(id)),
        // The create may have landed: look before reporting a failure.
        Err(e @ HubError::Ambiguous { .. }) => match find(hub, target).await {
            Ok(Some(found)) => Ok(Registered::Created(found.id)),
            _ => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Deletes the registration of `target`; `Ok(None)` when there is none.
pub async fn unregister(hub: &Hub, target: &Target<'_>) -> Result<Option<String>, Error> {
    let Some(found) = find(hub, target).await? else {
        return Ok(None);
    };
    match hub.delete(&found.id, None).await {
        Ok(()) => Ok(Some(found.id)),
        Err(e) if e.is_not_found() => Ok(Some(found.id)),
        Err(e) if e.is_in_use() => Err(Error::other(format!(
            "the hub keeps {}: TypeInstances are still stored in this backend or use it; \
             delete them first ({e})",
            found.id
        ))),
        Err(e) if e.is_locked() => Err(Error::other(format!(
            "the hub keeps {}: it is locked ({e})",
            found.id
        ))),
        Err(e) => Err(e.into()),
    }
}
