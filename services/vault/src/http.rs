//! The KV calls of the hot path, sent with the session's own HTTP client
//! (its TLS settings, client identity and timeout) but without vaultrs'
//! request building: that rebuilt and parsed every URL three times per call
//! (IDNA included) and was the largest cost of a GetValue in a profile
//! (BENCHMARKS.md). Here the mount's URL is parsed once and each call only
//! appends its path. Logins, renewals and lookups stay with vaultrs.

use bytes::Bytes;
use reqwest::{
    Method,
    header::{CONTENT_TYPE, HeaderValue},
};
use serde::Deserialize;
use url::Url;
use vaultrs::client::VaultClient;

/// The URL of one KV mount (`<address>/v1/<mount>/`), parsed once.
#[derive(Clone, Debug)]
pub struct Mount {
    base: Url,
}

impl Mount {
    pub fn new(address: &Url, mount: &str) -> Self {
        let mut base = address.clone();
        if let Ok(mut segments) = base.path_segments_mut() {
            segments.pop_if_empty().push("v1").extend(mount.split('/'));
        }
        Mount { base }
    }

    /// `<mount>/<section>/<path>` (KV v2 sections: `data`, `metadata`) or
    /// `<mount>/<path>`; each segment percent-encoded.
    pub fn url(&self, section: Option<&str>, path: &str) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(section).extend(path.split('/'));
        }
        url
    }
}

/// Vault's answer: its status code and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `errors` Vault lists in a refusal (none if the body has none).
    pub fn errors(&self) -> Vec<String> {
        #[derive(Deserialize)]
        struct Errors {
            #[serde(default)]
            errors: Vec<String>,
        }
        serde_json::from_slice::<Errors>(&self.body)
            .map(|e| e.errors)
            .unwrap_or_default()
    }

    /// The refusal as an error value (the source of a protocol error).
    pub fn refusal(&self) -> Refused {
        Refused {
            status: self.status,
            errors: self.errors(),
        }
    }
}

/// A Vault refusal: status code and Vault's own messages, which name paths
/// and rules, never a secret's data.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub errors: Vec<String>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vault answered {}", self.status)?;
        if !self.errors.is_empty() {
            write!(f, ": {}", self.errors.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// The KV LIST method (Vault also takes GET `?list=true`; LIST is what
/// policies name).
pub fn list_method() -> Method {
    Method::from_bytes(b"LIST").unwrap_or(Method::GET)
}

/// Sends one request with the client's token (and namespace). A transport
/// failure (connection, TLS, timeout) is the `Err`; any HTTP answer is an
/// [`Answer`].
pub async fn send(
    client: &VaultClient,
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
) -> Result<Answer, reqwest::Error> {
    let mut req = client.http.http.request(method, url);
    if !client.middle.token.is_empty() {
        // A token that is not a valid header value cannot authenticate
        // anyway; sending none gets Vault's 403, the usual path.
        if let Ok(mut token) = HeaderValue::from_str(&client.middle.token) {
            token.set_sensitive(true);
            req = req.header("X-Vault-Token", token);
        }
    }
    if let Some(ns) = &client.middle.namespace {
        req = req.header("X-Vault-Namespace", ns.as_str());
    }
    req = req.header("X-Vault-Request", "true");
    if let Some(body) = body {
        req = req.header(CONTENT_TYPE, "application/json").body(body);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    Ok(Answer { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(address: &str, mount: &str) -> Mount {
        Mount::new(&Url::parse(address).expect("test url"), mount)
    }

    #[test]
    fn urls_join_address_mount_section_and_encoded_path() {
        let cases = [
            // (address, mount, section, path, url)
            (
                "http://127.0.0.1:8200",
                "secret",
                Some("data"),
                "capact/abc/meta",
                "http://127.0.0.1:8200/v1/secret/data/capact/abc/meta",
            ),
            (
                "http://127.0.0.1:8200",
                "secret",
                None,
                "capact/abc/1",
                "http://127.0.0.1:8200/v1/secret/capact/abc/1",
            ),
            // An address with a path of its own, a nested mount.
            (
                "https://vault.example:8200/proxy/",
                "team/kv",
                Some("metadata"),
                "p/x",
                "https://vault.example:8200/proxy/v1/team/kv/metadata/p/x",
            ),
            // Path segments are percent-encoded.
            (
                "http://127.0.0.1:8200",
                "secret",
                Some("data"),
                "a b/c?d",
                "http://127.0.0.1:8200/v1/secret/data/a%20b/c%3Fd",
            ),
        ];
        for (address, mount_path, section, path, want) in cases {
            assert_eq!(mount(address, mount_path).url(section, path).as_str(), want);
        }
    }

    #[test]
    fn a_refusal_lists_vaults_errors() {
        let a = Answer {
            status: 400,
            body: Bytes::from_static(br#"{"errors":["check-and-set parameter did not match"]}"#),
        };
        assert!(!a.ok());
        assert_eq!(
            a.refusal().to_string(),
            "vault answered 400: check-and-set parameter did not match"
        );
        let empty = Answer {
            status: 503,
            body: Bytes::from_static(b"<html>"),
        };
        assert_eq!(empty.refusal().to_string(), "vault answered 503");
    }
}
