//! The SOPS file format (v3, YAML, age recipients), implemented directly.
//!
//! Why not the `rops` crate: real `sops` rejects the files rops writes (it
//! leaves out `sops.version`), and files we write must open with `sops -d`.
//! The part of the format we need is small:
//!
//! - a random 32-byte data key, age-encrypted (ASCII-armored) once per
//!   recipient under `sops.age[]`;
//! - every leaf value encrypted with AES-256-GCM under that key with a fresh
//!   32-byte nonce and the value's key path (`a:b:`) as additional data,
//!   written as `ENC[AES256_GCM,data:…,iv:…,tag:…,type:str]`;
//! - `sops.mac`: SHA-512 over the plaintext leaves in document order, as
//!   uppercase hex, encrypted like a value with `sops.lastmodified` as
//!   additional data. It is what makes tampering detectable.
//!
//! Our documents hold one key, `value`: the base64 of the stored bytes, so any
//! bytes (empty, binary, invalid UTF-8) round-trip exactly through sops's
//! string-only world. Reading accepts any SOPS YAML document whose leaves are
//! scalars, so files that real `sops -e` wrote in our layout open too.

use std::{fmt, io::Write, time::SystemTime};

use aes_gcm::{
    AesGcm, KeyInit,
    aead::{Aead, AeadCore, OsRng, Payload, consts::U32},
    aes::Aes256,
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde_yaml::{Mapping, Value as Yaml};
use sha2::{Digest, Sha512};

/// SOPS uses a 32-byte GCM nonce (not the usual 12).
type Cipher = AesGcm<Aes256, U32>;

/// The sops version we write: real sops refuses files without one.
pub const SOPS_VERSION: &str = "3.11.0";

/// The key under which the value sits in our documents.
pub const VALUE_KEY: &str = "value";

const TAG_LEN: usize = 16;

/// Why a document could not be written or read. Never carries content:
/// neither plaintext nor key material ends up in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// Not YAML, or not the SOPS structure we expect (what is missing named).
    Malformed(&'static str),
    /// None of our age identities opens any of the file's data-key stanzas.
    NoMatchingKey,
    /// A value or the MAC failed authentication, or the MAC does not match
    /// the content: the file was tampered with or corrupted.
    Integrity,
    /// Encrypting failed (age or AES); not expected with valid keys.
    Encrypt,
    /// No recipient configured.
    NoRecipients,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Malformed(what) => write!(f, "not a valid SOPS document: {what}"),
            CodecError::NoMatchingKey => {
                f.write_str("no configured age identity can decrypt the data key")
            }
            CodecError::Integrity => {
                f.write_str("SOPS integrity check failed (MAC mismatch or bad ciphertext)")
            }
            CodecError::Encrypt => f.write_str("encryption failed"),
            CodecError::NoRecipients => f.write_str("no age recipient configured"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Encrypts `value` into a SOPS YAML document readable by every recipient.
pub fn encrypt(
    value: &[u8],
    recipients: &[age::x25519::Recipient],
    now: SystemTime,
) -> Result<String, CodecError> {
    if recipients.is_empty() {
        return Err(CodecError::NoRecipients);
    }
    let data_key = Cipher::generate_key(OsRng);
    let cipher = Cipher::new(&data_key);

    let plain = B64.encode(value);
    // sops leaves empty strings unencrypted (its ENC[] syntax cannot hold
    // empty data), and hashes nothing for them; do the same so both agree.
    let encrypted_value = if plain.is_empty() {
        "\"\"".to_owned()
    } else {
        encrypt_scalar(&cipher, plain.as_bytes(), &format!("{VALUE_KEY}:"))?
    };

    let mac = Sha512::digest(plain.as_bytes());
    // Written by hand in sops's own layout (4-space indent) so diffs of files
    // produced by us and by `sops` look alike.
    let mut out = format!("{VALUE_KEY}: {encrypted_value}\n");
    out.push_str(&metadata(
        &cipher,
        &data_key,
        recipients,
        &mac,
        now,
        "unencrypted_suffix: _unencrypted",
    )?);
    Ok(out)
}

/// The `encrypted_regex` Flux's kustomize-controller documents for Secrets:
/// only `data`/`stringData` are encrypted, so the manifest stays readable.
pub const SECRET_ENCRYPTED_REGEX: &str = "^(data|stringData)$";

/// Where a Kubernetes Secret manifest puts the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretTarget {
    pub name: String,
    pub namespace: String,
    pub key: String,
}

/// A Kubernetes Secret manifest (`data.<key>` = base64 of `value`),
/// SOPS-encrypted with `encrypted_regex: ^(data|stringData)$` the way Flux's
/// kustomize-controller decrypts before applying. Names and key come from
/// the validated context (DNS names, `[-._a-zA-Z0-9]` keys): they are quoted
/// so YAML never reads one as a number or boolean.
pub fn encrypt_secret(
    target: &SecretTarget,
    value: &[u8],
    recipients: &[age::x25519::Recipient],
    now: SystemTime,
) -> Result<String, CodecError> {
    if recipients.is_empty() {
        return Err(CodecError::NoRecipients);
    }
    let data_key = Cipher::generate_key(OsRng);
    let cipher = Cipher::new(&data_key);
    let plain = B64.encode(value);
    let SecretTarget {
        name,
        namespace,
        key,
    } = target;
    let encrypted_value = if plain.is_empty() {
        "\"\"".to_owned()
    } else {
        encrypt_scalar(&cipher, plain.as_bytes(), &format!("data:{key}:"))?
    };
    // sops hashes every leaf in document order, encrypted or not.
    let mut hasher = Sha512::new();
    for leaf in ["v1", "Secret", name, namespace, "Opaque", &plain] {
        hasher.update(leaf.as_bytes());
    }
    let mut out = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n    name: \"{name}\"\n    namespace: \"{namespace}\"\ntype: Opaque\ndata:\n    \"{key}\": {encrypted_value}\n"
    );
    out.push_str(&metadata(
        &cipher,
        &data_key,
        recipients,
        &hasher.finalize(),
        now,
        &format!("encrypted_regex: {SECRET_ENCRYPTED_REGEX}"),
    )?);
    Ok(out)
}

/// Reads name, namespace and key back from a Secret manifest we wrote
/// (all in plaintext: only `data` values are encrypted).
pub fn secret_target(doc: &str) -> Option<SecretTarget> {
    let root: Yaml = serde_yaml::from_str(doc).ok()?;
    let meta = root.get("metadata")?;
    let key = match root.get("data")? {
        Yaml::Mapping(m) => scalar_key(m.keys().next()?).ok()?,
        _ => return None,
    };
    Some(SecretTarget {
        name: meta.get("name")?.as_str()?.to_owned(),
        namespace: meta.get("namespace")?.as_str()?.to_owned(),
        key,
    })
}

/// The `sops:` block: the data key per recipient, the encrypted MAC and
/// the version, plus `selector` (which values are encrypted).
fn metadata(
    cipher: &Cipher,
    data_key: &aes_gcm::Key<Cipher>,
    recipients: &[age::x25519::Recipient],
    mac: &[u8],
    now: SystemTime,
    selector: &str,
) -> Result<String, CodecError> {
    let lastmodified = humantime::format_rfc3339_seconds(now).to_string();
    let mac = hex::encode_upper(mac);
    let encrypted_mac = encrypt_scalar(cipher, mac.as_bytes(), &lastmodified)?;
    let mut out = String::from("sops:\n    age:\n");
    for recipient in recipients {
        let armored = age_encrypt(data_key, recipient)?;
        out.push_str(&format!(
            "        - recipient: {recipient}\n          enc: |\n"
        ));
        for line in armored.lines() {
            out.push_str("            ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "    lastmodified: \"{lastmodified}\"\n    mac: {encrypted_mac}\n    {selector}\n    version: {SOPS_VERSION}\n"
    ));
    Ok(out)
}

/// Decrypts a SOPS YAML document in our layout and returns the value bytes,
/// after checking the MAC over the whole document.
pub fn decrypt(doc: &str, identities: &[age::x25519::Identity]) -> Result<Vec<u8>, CodecError> {
    let root: Yaml =
        serde_yaml::from_str(doc).map_err(|_| CodecError::Malformed("not parseable YAML"))?;
    let Yaml::Mapping(mut root) = root else {
        return Err(CodecError::Malformed("top level is not a mapping"));
    };
    let meta = match root.remove("sops") {
        Some(Yaml::Mapping(m)) => m,
        _ => return Err(CodecError::Malformed("no sops metadata")),
    };
    let data_key = open_data_key(&meta, identities)?;
    let cipher = Cipher::new(&data_key.into());
    let mac_only_encrypted = matches!(meta.get("mac_only_encrypted"), Some(Yaml::Bool(true)));

    let mut hasher = Sha512::new();
    let mut value = None;
    let mut path = Vec::new();
    for (k, v) in &root {
        let key = scalar_key(k)?;
        path.push(key.clone());
        let plain = walk(&cipher, v, &mut path, &mut hasher, mac_only_encrypted)?;
        path.pop();
        if key == VALUE_KEY {
            value = plain;
        }
    }

    let lastmodified = match meta.get("lastmodified") {
        Some(Yaml::String(s)) => s.clone(),
        _ => return Err(CodecError::Malformed("no sops.lastmodified")),
    };
    let stored_mac = match meta.get("mac") {
        Some(Yaml::String(s)) => decrypt_scalar(&cipher, s, &lastmodified)?,
        _ => return Err(CodecError::Malformed("no sops.mac")),
    };
    let computed = hex::encode_upper(hasher.finalize());
    // Compare case-insensitively: the hex case is not part of the security.
    if !computed.as_bytes().eq_ignore_ascii_case(&stored_mac) {
        return Err(CodecError::Integrity);
    }

    let plain = value.ok_or(CodecError::Malformed("no 'value' key"))?;
    B64.decode(plain)
        .map_err(|_| CodecError::Malformed("'value' is not base64"))
}

/// Visits one node in document order: decrypts encrypted leaves, feeds the
/// MAC, and returns the plaintext of a scalar leaf (None for collections).
fn walk(
    cipher: &Cipher,
    node: &Yaml,
    path: &mut Vec<String>,
    hasher: &mut Sha512,
    mac_only_encrypted: bool,
) -> Result<Option<Vec<u8>>, CodecError> {
    match node {
        Yaml::Mapping(m) => {
            for (k, v) in m {
                path.push(scalar_key(k)?);
                walk(cipher, v, path, hasher, mac_only_encrypted)?;
                path.pop();
            }
            Ok(None)
        }
        // sops gives list items their parent's path (no index).
        Yaml::Sequence(items) => {
            for v in items {
                walk(cipher, v, path, hasher, mac_only_encrypted)?;
            }
            Ok(None)
        }
        Yaml::String(s) if s.starts_with("ENC[") => {
            let aad = format!("{}:", path.join(":"));
            let plain = decrypt_scalar(cipher, s, &aad)?;
            hasher.update(&plain);
            Ok(Some(plain))
        }
        other => {
            let plain = plain_bytes(other)?;
            if !mac_only_encrypted {
                hasher.update(&plain);
            }
            Ok(Some(plain))
        }
    }
}

/// The bytes sops hashes for an unencrypted leaf (its Go `ToBytes`).
fn plain_bytes(node: &Yaml) -> Result<Vec<u8>, CodecError> {
    Ok(match node {
        Yaml::String(s) => s.clone().into_bytes(),
        Yaml::Number(n) => n.to_string().into_bytes(),
        // sops keeps Python's spelling for booleans.
        Yaml::Bool(true) => b"True".to_vec(),
        Yaml::Bool(false) => b"False".to_vec(),
        Yaml::Null => Vec::new(),
        _ => return Err(CodecError::Malformed("unsupported YAML node")),
    })
}

fn scalar_key(k: &Yaml) -> Result<String, CodecError> {
    match k {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Number(n) => Ok(n.to_string()),
        Yaml::Bool(b) => Ok(b.to_string()),
        _ => Err(CodecError::Malformed("mapping key is not a scalar")),
    }
}

fn encrypt_scalar(cipher: &Cipher, plain: &[u8], aad: &str) -> Result<String, CodecError> {
    let nonce = Cipher::generate_nonce(&mut OsRng);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| CodecError::Encrypt)?;
    // aes-gcm appends the tag; sops stores it as its own field.
    let (data, tag) = sealed.split_at(sealed.len().saturating_sub(TAG_LEN));
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:str]",
        B64.encode(data),
        B64.encode(nonce),
        B64.encode(tag)
    ))
}

fn decrypt_scalar(cipher: &Cipher, enc: &str, aad: &str) -> Result<Vec<u8>, CodecError> {
    let inner = enc
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|s| s.strip_suffix(']'))
        .ok_or(CodecError::Malformed(
            "encrypted value is not ENC[AES256_GCM,…]",
        ))?;
    let (mut data, mut iv, mut tag) = (None, None, None);
    for field in inner.split(',') {
        let (name, v) = field
            .split_once(':')
            .ok_or(CodecError::Malformed("encrypted value field without ':'"))?;
        let slot = match name {
            "data" => &mut data,
            "iv" => &mut iv,
            "tag" => &mut tag,
            _ => continue,
        };
        *slot = Some(
            B64.decode(v)
                .map_err(|_| CodecError::Malformed("encrypted value field is not base64"))?,
        );
    }
    let (Some(data), Some(iv), Some(tag)) = (data, iv, tag) else {
        return Err(CodecError::Malformed(
            "encrypted value lacks data, iv or tag",
        ));
    };
    if iv.len() != 32 || tag.len() != TAG_LEN {
        return Err(CodecError::Malformed(
            "encrypted value has a bad iv or tag size",
        ));
    }
    let mut sealed = data;
    sealed.extend_from_slice(&tag);
    let nonce = aes_gcm::Nonce::<U32>::from_slice(&iv);
    cipher
        .decrypt(
            nonce,
            Payload {
                msg: &sealed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| CodecError::Integrity)
}

fn age_encrypt(data_key: &[u8], recipient: &age::x25519::Recipient) -> Result<String, CodecError> {
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|_| CodecError::Encrypt)?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|_| CodecError::Encrypt)?;
    let mut writer = encryptor
        .wrap_output(armor)
        .map_err(|_| CodecError::Encrypt)?;
    writer
        .write_all(data_key)
        .map_err(|_| CodecError::Encrypt)?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(|_| CodecError::Encrypt)?;
    String::from_utf8(out).map_err(|_| CodecError::Encrypt)
}

/// Tries each `sops.age[]` stanza with our identities; the first that opens
/// yields the data key.
fn open_data_key(
    meta: &Mapping,
    identities: &[age::x25519::Identity],
) -> Result<[u8; 32], CodecError> {
    let Some(Yaml::Sequence(stanzas)) = meta.get("age") else {
        return Err(CodecError::Malformed("no sops.age recipients"));
    };
    for stanza in stanzas {
        let Some(Yaml::String(enc)) = stanza.get("enc") else {
            continue;
        };
        let Ok(decryptor) = age::Decryptor::new(age::armor::ArmoredReader::new(enc.as_bytes()))
        else {
            continue;
        };
        let Ok(mut reader) = decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        else {
            continue;
        };
        let mut key = Vec::new();
        if std::io::Read::read_to_end(&mut reader, &mut key).is_err() {
            continue;
        }
        return key
            .try_into()
            .map_err(|_| CodecError::Malformed("data key is not 32 bytes"));
    }
    Err(CodecError::NoMatchingKey)
}

/// Parses an age key file: `AGE-SECRET-KEY-…` lines, comments and blank lines
/// ignored (age-keygen writes both).
pub fn parse_identities(text: &str) -> Result<Vec<age::x25519::Identity>, &'static str> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(
            line.parse::<age::x25519::Identity>()
                .map_err(|_| "a line of the age key file is not an AGE-SECRET-KEY")?,
        );
    }
    if out.is_empty() {
        return Err("the age key file holds no key");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> age::x25519::Identity {
        age::x25519::Identity::generate()
    }

    fn roundtrip(value: &[u8]) -> Vec<u8> {
        let id = key();
        let doc = encrypt(value, &[id.to_public()], SystemTime::now()).expect("encrypt");
        decrypt(&doc, &[id]).expect("decrypt")
    }

    #[test]
    fn values_round_trip_byte_exact() {
        for v in [
            &b""[..],
            b"foo",
            b"\xff\x00\xfe not utf-8",
            &[7u8; 4096][..],
        ] {
            assert_eq!(roundtrip(v), v);
        }
    }

    #[test]
    fn document_carries_version_and_no_plaintext() {
        let id = key();
        let doc = encrypt(b"hunter2-secret", &[id.to_public()], SystemTime::now()).expect("enc");
        assert!(doc.contains("version: 3.11.0"));
        assert!(!doc.contains("hunter2"));
        assert!(!doc.contains(&B64.encode(b"hunter2-secret")));
    }

    #[test]
    fn every_recipient_can_decrypt() {
        let (a, b) = (key(), key());
        let doc = encrypt(b"x", &[a.to_public(), b.to_public()], SystemTime::now()).expect("enc");
        assert_eq!(decrypt(&doc, &[b]).expect("b decrypts"), b"x");
        assert_eq!(decrypt(&doc, &[a]).expect("a decrypts"), b"x");
    }

    #[test]
    fn a_foreign_key_cannot_decrypt() {
        let doc = encrypt(b"x", &[key().to_public()], SystemTime::now()).expect("enc");
        assert_eq!(decrypt(&doc, &[key()]), Err(CodecError::NoMatchingKey));
    }

    #[test]
    fn a_swapped_value_fails_the_integrity_check() {
        let id = key();
        let one = encrypt(b"one", &[id.to_public()], SystemTime::now()).expect("enc");
        // Replacing the value with a plaintext one keeps every ciphertext
        // valid: only the MAC can notice.
        let line = one.lines().next().expect("first line");
        let tampered = one.replace(line, "value: dHdv");
        assert_eq!(decrypt(&tampered, &[id]), Err(CodecError::Integrity));
    }

    #[test]
    fn flipped_ciphertext_fails_the_integrity_check() {
        let id = key();
        let doc = encrypt(b"some value", &[id.to_public()], SystemTime::now()).expect("enc");
        let tampered = doc.replacen("data:", "data:AAAA", 1);
        assert_eq!(decrypt(&tampered, &[id]), Err(CodecError::Integrity));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let id = key();
        for doc in ["", "::: [", "value: x", "- a\n- b"] {
            assert!(matches!(
                decrypt(doc, std::slice::from_ref(&id)),
                Err(CodecError::Malformed(_))
            ));
        }
    }

    #[test]
    fn key_files_from_age_keygen_parse() {
        let id = key();
        let text = format!(
            "# created: 2026-01-01T00:00:00Z\n# public key: {}\n{}\n",
            id.to_public(),
            age::secrecy::ExposeSecret::expose_secret(&id.to_string())
        );
        let ids = parse_identities(&text).expect("parses");
        assert_eq!(ids.len(), 1);
        assert!(parse_identities("# only comments\n").is_err());
    }
}
