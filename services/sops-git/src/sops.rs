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
//! Our documents hold `value`: the base64 of the stored bytes, so any bytes
//! (empty, binary, invalid UTF-8) round-trip exactly through sops's
//! string-only world; and, since the binding was introduced, `typeInstanceId`
//! and `revision`: where the document belongs, encrypted and MAC-covered like
//! the value, so a file moved to another path is detected (see [`Binding`]).
//!
//! Reading is as strict as sops 3.13.2 (`sops.go` `Tree.Decrypt`,
//! `shouldBeEncrypted`, `stores/stores.go` `ToInternal`, `aes/cipher.go`):
//! a leaf the file's rule says is encrypted must be `ENC[…]` (or empty), the
//! MAC follows `mac_only_encrypted` exactly, and metadata that would change
//! what the file means and that we do not implement (key groups, Shamir,
//! comment rules, keys unknown to sops 3.13.2) is refused, never ignored.
use std::{fmt, io::Write, time::SystemTime};

use aes_gcm::{
    AesGcm, KeyInit,
    aead::{Aead, AeadCore, OsRng, Payload, consts::U32},
    aes::Aes256,
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use regex::Regex;
use serde_yaml::{Mapping, Value as Yaml};
use sha2::{Digest, Sha512};

/// SOPS uses a 32-byte GCM nonce (not the usual 12).
type Cipher = AesGcm<Aes256, U32>;

/// The sops version we write: real sops refuses files without one.
pub const SOPS_VERSION: &str = "3.11.0";

/// The key under which the value sits in our documents.
pub const VALUE_KEY: &str = "value";

/// The keys of the [`Binding`] next to `value`.
pub const ID_KEY: &str = "typeInstanceId";
pub const REVISION_KEY: &str = "revision";

/// What sops writes before the first leaf into the MAC of a file with
/// `mac_only_encrypted: true` (`MACOnlyEncryptedInitialization` in sops's
/// `sops.go`: the SHA-256 of `sops`), so that flipping the flag always
/// changes the MAC.
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// sops's default rule when a file names none (`DefaultUnencryptedSuffix`).
const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";

/// sops's own parse of an encrypted value (`aes/cipher.go`), the regex
/// `^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]`: not anchored
/// at the end, greedy groups, `.` stopping at a newline. Done by hand in one
/// pass from the right: the regex engine's capture search cost about 100 ns
/// per byte, most of a 1 MiB GetValue (BENCHMARKS.md). The tests hold it to
/// the regex.
fn enc_fields(enc: &str) -> Option<[&str; 4]> {
    let rest = enc.strip_prefix("ENC[AES256_GCM,data:")?;
    // Every group is `.+`: nothing after the first newline takes part.
    let line = rest.split('\n').next().unwrap_or_default();
    // Greedy groups: each delimiter is the last one that leaves a non-empty
    // group on both sides, found right to left.
    let close = line.rfind(']')?;
    let body = &line[..close];
    let (before_type, ty) = split_last(body, ",type:")?;
    let (before_tag, tag) = split_last(before_type, ",tag:")?;
    let (data, iv) = split_last(before_tag, ",iv:")?;
    Some([data, iv, tag, ty])
}

/// `s` split at the last `sep` with a non-empty part on each side.
fn split_last<'s>(s: &'s str, sep: &str) -> Option<(&'s str, &'s str)> {
    // The separators start with a comma and hold no other: two of them
    // never overlap.
    let mut end = s.len();
    while let Some(at) = s[..end].rfind(sep) {
        if at == 0 {
            return None;
        }
        if at + sep.len() < s.len() {
            return Some((&s[..at], &s[at + sep.len()..]));
        }
        end = at;
    }
    None
}

/// Where a document belongs: written as the encrypted keys `typeInstanceId`
/// and `revision` next to `value`, so the MAC covers them. The MAC is keyed
/// by the file's own data key, which whoever writes a file chooses: this does
/// not stop a writer holding the recipients' public keys from writing any
/// file anywhere, but a file (or its ciphertexts) cannot be moved to another
/// id or revision without the data key, i.e. without a private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub type_instance_id: String,
    pub revision: u32,
}

/// A document opened and checked.
pub struct Opened {
    pub value: Vec<u8>,
    /// None for documents written before the binding (or by hand): they
    /// still read, unbound.
    pub binding: Option<Binding>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the value.
        f.debug_struct("Opened")
            .field("value_len", &self.value.len())
            .field("binding", &self.binding)
            .finish()
    }
}

impl Opened {
    /// Fails with [`CodecError::Misplaced`] when the document is bound to
    /// another id or revision than `expected`; unbound documents pass.
    pub fn check_binding(&self, expected: &Binding) -> Result<(), CodecError> {
        match &self.binding {
            Some(b) if b != expected => Err(CodecError::Misplaced),
            _ => Ok(()),
        }
    }
}

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
    /// A SOPS feature that changes what the file means and that we do not
    /// implement (named); refused rather than misread.
    Unsupported(&'static str),
    /// The document is bound to another TypeInstance id or revision than
    /// the path it was read from.
    Misplaced,
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
            CodecError::Unsupported(what) => write!(f, "unsupported SOPS feature: {what}"),
            CodecError::Misplaced => f.write_str(
                "the document is bound to another type instance id or revision than its path",
            ),
        }
    }
}

impl std::error::Error for CodecError {}

/// Encrypts `value` into a SOPS YAML document readable by every recipient,
/// bound to `binding` when given.
pub fn encrypt(
    value: &[u8],
    binding: Option<&Binding>,
    recipients: &[age::x25519::Recipient],
    now: SystemTime,
) -> Result<String, CodecError> {
    if recipients.is_empty() {
        return Err(CodecError::NoRecipients);
    }
    let data_key = Cipher::generate_key(OsRng);
    let cipher = Cipher::new(&data_key);

    let mut leaves = vec![(VALUE_KEY, B64.encode(value))];
    if let Some(b) = binding {
        leaves.push((ID_KEY, b.type_instance_id.clone()));
        leaves.push((REVISION_KEY, b.revision.to_string()));
    }
    let mut hasher = Sha512::new();
    // Written by hand in sops's own layout (4-space indent) so diffs of files
    // produced by us and by `sops` look alike.
    let mut out = String::new();
    for (key, plain) in &leaves {
        hasher.update(plain.as_bytes());
        // sops leaves empty strings unencrypted (its ENC[] syntax cannot
        // hold empty data), and hashes nothing for them; do the same.
        let encrypted = if plain.is_empty() {
            "\"\"".to_owned()
        } else {
            encrypt_scalar(&cipher, plain.as_bytes(), &format!("{key}:"))?
        };
        out.push_str(&format!("{key}: {encrypted}\n"));
    }
    out.push_str(&metadata(
        &cipher,
        &data_key,
        recipients,
        &hasher.finalize(),
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
        Yaml::Mapping(m) => m.keys().next()?.as_str()?.to_owned(),
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

/// Decrypts a SOPS YAML document and returns the value bytes, after
/// checking the MAC. The binding, if any, is not checked: see [`open`].
pub fn decrypt(doc: &str, identities: &[age::x25519::Identity]) -> Result<Vec<u8>, CodecError> {
    open(doc, identities).map(|o| o.value)
}

/// Decrypts a SOPS YAML document in our layout: the MAC checked, `value`
/// encrypted, and the binding read when the document has one.
pub fn open(doc: &str, identities: &[age::x25519::Identity]) -> Result<Opened, CodecError> {
    let leaves = decrypt_tree(doc, identities)?;
    let value =
        encrypted_text(&leaves, VALUE_KEY)?.ok_or(CodecError::Malformed("no 'value' key"))?;
    let value = B64
        .decode(value)
        .map_err(|_| CodecError::Malformed("'value' is not base64"))?;
    let binding = match (
        encrypted_text(&leaves, ID_KEY)?,
        encrypted_text(&leaves, REVISION_KEY)?,
    ) {
        (None, None) => None,
        (Some(id), Some(rev)) => {
            let type_instance_id = String::from_utf8(id)
                .ok()
                .filter(|id| !id.is_empty())
                .ok_or(CodecError::Malformed("'typeInstanceId' is not an id"))?;
            // The canonical decimal only: one revision, one spelling.
            let revision = std::str::from_utf8(&rev)
                .ok()
                .and_then(|r| r.parse::<u32>().ok().filter(|n| n.to_string() == r))
                .ok_or(CodecError::Malformed("'revision' is not a revision number"))?;
            Some(Binding {
                type_instance_id,
                revision,
            })
        }
        _ => {
            return Err(CodecError::Malformed(
                "'typeInstanceId' and 'revision' come together",
            ));
        }
    };
    Ok(Opened { value, binding })
}

/// Decrypts a Kubernetes Secret manifest written by [`encrypt_secret`]:
/// its target and the value bytes, the MAC checked.
pub fn decrypt_secret(
    doc: &str,
    identities: &[age::x25519::Identity],
) -> Result<(SecretTarget, Vec<u8>), CodecError> {
    let target = secret_target(doc).ok_or(CodecError::Malformed("not a Secret manifest"))?;
    let leaves = decrypt_tree(doc, identities)?;
    let mut data = leaves
        .iter()
        .filter(|l| l.path.len() == 2 && l.path[0] == "data" && l.path[1] == target.key);
    let (Some(leaf), None) = (data.next(), data.next()) else {
        return Err(CodecError::Malformed("no single Secret data value"));
    };
    if !leaf.encrypted || !leaf.text {
        return Err(CodecError::Malformed(
            "the Secret data value is not encrypted",
        ));
    }
    let value = B64
        .decode(&leaf.plain)
        .map_err(|_| CodecError::Malformed("the Secret data value is not base64"))?;
    Ok((target, value))
}

/// The plaintext of the top-level key `key` if the document has it. It must
/// be a single string leaf in an encrypted position: a plaintext one is
/// either refused by the walk (the rule says encrypted) or not covered the
/// way we need (the rule says plaintext), so it is refused here.
fn encrypted_text(leaves: &[Leaf], key: &str) -> Result<Option<Vec<u8>>, CodecError> {
    let mut found = leaves
        .iter()
        .filter(|l| l.path.first().is_some_and(|k| k == key));
    let Some(leaf) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() || leaf.path.len() != 1 {
        return Err(CodecError::Malformed(
            "a key of our layout is not a single string",
        ));
    }
    if !leaf.encrypted {
        return Err(CodecError::Malformed(
            "a key of our layout is not encrypted by the file's rule",
        ));
    }
    if !leaf.text {
        return Err(CodecError::Malformed("a key of our layout is not a string"));
    }
    Ok(Some(leaf.plain.clone()))
}

/// One scalar leaf of a decrypted document (sops skips null leaves).
struct Leaf {
    /// Mapping keys from the top; list items share their list's path.
    path: Vec<String>,
    /// What sops hashes for it (its Go `ToBytes`), i.e. the plaintext.
    plain: Vec<u8>,
    /// Whether the file's rule puts it in an encrypted position.
    encrypted: bool,
    /// A string (type `str`, or a plaintext YAML string).
    text: bool,
}

/// Which leaves a file encrypts: exactly one of sops's rules, by key path.
enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
}

impl Rule {
    /// sops's `shouldBeEncrypted` for a value at `path`.
    fn encrypts(&self, path: &[String]) -> Result<bool, CodecError> {
        Ok(match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::UnencryptedRegex(re) => !regex_hits(re, path)?,
            Rule::EncryptedRegex(re) => regex_hits(re, path)?,
        })
    }
}

/// Whether any key of `path` matches. Go's RE2 and Rust's `regex` agree on
/// printable ASCII, but not beyond (`\d`, `\w`, `\s` are Unicode-aware
/// here, ASCII-only in Go; `\s` differs on `\v`): other keys are refused
/// rather than judged differently from sops.
fn regex_hits(re: &Regex, path: &[String]) -> Result<bool, CodecError> {
    if path
        .iter()
        .any(|k| !k.bytes().all(|b| (0x20..0x7f).contains(&b)))
    {
        return Err(CodecError::Unsupported(
            "keys outside printable ASCII in a file with a regex rule",
        ));
    }
    Ok(path.iter().any(|k| re.is_match(k)))
}

/// What `sops:` says about how to read the file.
struct Meta {
    rule: Rule,
    mac_only_encrypted: bool,
    /// The additional data of the MAC: `lastmodified` as sops re-formats it.
    mac_aad: String,
    mac: String,
}

/// Every key sops 3.13.2 reads from `sops:` (`stores/stores.go`).
const KNOWN_METADATA: &[&str] = &[
    "shamir_threshold",
    "key_groups",
    "kms",
    "gcp_kms",
    "hckms",
    "azure_kv",
    "hc_vault",
    "age",
    "lastmodified",
    "mac",
    "pgp",
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_regex",
    "unencrypted_comment_regex",
    "encrypted_comment_regex",
    "mac_only_encrypted",
    "version",
];

fn read_meta(meta: &Mapping) -> Result<Meta, CodecError> {
    for key in meta.keys() {
        let known = key.as_str().is_some_and(|k| KNOWN_METADATA.contains(&k));
        if !known {
            // A later sops may give it a meaning (as it did to
            // mac_only_encrypted): refuse instead of guessing.
            return Err(CodecError::Unsupported("unknown sops metadata key"));
        }
    }
    if !matches!(meta.get("key_groups"), None | Some(Yaml::Null))
        && !matches!(meta.get("key_groups"), Some(Yaml::Sequence(g)) if g.is_empty())
    {
        return Err(CodecError::Unsupported("key groups"));
    }
    match meta.get("shamir_threshold") {
        None | Some(Yaml::Null) => {}
        Some(Yaml::Number(n)) if n.as_u64() == Some(0) => {}
        Some(_) => return Err(CodecError::Unsupported("shamir threshold")),
    }
    for comment_rule in ["unencrypted_comment_regex", "encrypted_comment_regex"] {
        if meta_string(meta, comment_rule)?.is_some() {
            // Comments decide there, and our YAML parser drops them.
            return Err(CodecError::Unsupported("comment-based encryption rules"));
        }
    }
    let regex = |pattern: &str| {
        Regex::new(pattern).map_err(|_| CodecError::Unsupported("this regex syntax"))
    };
    let mut rules = Vec::new();
    if let Some(s) = meta_string(meta, "unencrypted_suffix")? {
        rules.push(Rule::UnencryptedSuffix(s.to_owned()));
    }
    if let Some(s) = meta_string(meta, "encrypted_suffix")? {
        rules.push(Rule::EncryptedSuffix(s.to_owned()));
    }
    if let Some(s) = meta_string(meta, "unencrypted_regex")? {
        rules.push(Rule::UnencryptedRegex(regex(s)?));
    }
    if let Some(s) = meta_string(meta, "encrypted_regex")? {
        rules.push(Rule::EncryptedRegex(regex(s)?));
    }
    if rules.len() > 1 {
        // sops refuses such a file too.
        return Err(CodecError::Malformed("more than one encryption rule"));
    }
    let rule = rules
        .pop()
        .unwrap_or_else(|| Rule::UnencryptedSuffix(DEFAULT_UNENCRYPTED_SUFFIX.to_owned()));
    let mac_only_encrypted = match meta.get("mac_only_encrypted") {
        None | Some(Yaml::Null) => false,
        Some(Yaml::Bool(b)) => *b,
        Some(_) => {
            return Err(CodecError::Malformed(
                "sops.mac_only_encrypted is not a boolean",
            ));
        }
    };
    match meta.get("version") {
        Some(Yaml::String(v)) if version_ok(v) => {}
        _ => return Err(CodecError::Malformed("no valid sops.version")),
    }
    let mac_aad = match meta.get("lastmodified") {
        Some(Yaml::String(s)) => go_rfc3339(s).ok_or(CodecError::Malformed(
            "sops.lastmodified is not an RFC 3339 time",
        ))?,
        _ => return Err(CodecError::Malformed("no sops.lastmodified")),
    };
    let mac = match meta.get("mac") {
        Some(Yaml::String(s)) => s.clone(),
        _ => return Err(CodecError::Malformed("no sops.mac")),
    };
    Ok(Meta {
        rule,
        mac_only_encrypted,
        mac_aad,
        mac,
    })
}

/// A string field of `sops:`; empty and null count as unset, as in sops.
fn meta_string<'m>(meta: &'m Mapping, key: &str) -> Result<Option<&'m str>, CodecError> {
    match meta.get(key) {
        None | Some(Yaml::Null) => Ok(None),
        Some(Yaml::String(s)) if s.is_empty() => Ok(None),
        Some(Yaml::String(s)) => Ok(Some(s)),
        Some(_) => Err(CodecError::Malformed(
            "a sops metadata field is not a string",
        )),
    }
}

/// What sops's version check accepts (`version.AIsNewerThanB`): `1.x`, or a
/// semantic version with an optional `v`.
fn version_ok(v: &str) -> bool {
    if v.starts_with("1.") {
        return true;
    }
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
}

/// `lastmodified` the way sops uses it as additional data: Go's
/// `time.Parse(time.RFC3339, s)` then `Format(time.RFC3339)`, which drops
/// fractional seconds and writes a zero offset as `Z`. None if Go would not
/// parse it.
fn go_rfc3339(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let zone = match rest {
        "Z" => "Z".to_owned(),
        _ => {
            let (sign, hh, mm) = (rest.get(..1)?, rest.get(1..3)?, rest.get(4..6)?);
            let ok = (sign == "+" || sign == "-")
                && rest.len() == 6
                && rest.as_bytes()[3] == b':'
                && hh.bytes().chain(mm.bytes()).all(|c| c.is_ascii_digit());
            let (h, m): (u32, u32) = (hh.parse().ok()?, mm.parse().ok()?);
            if !ok || h > 23 || m > 59 {
                return None;
            }
            if h == 0 && m == 0 {
                "Z".to_owned()
            } else {
                rest.to_owned()
            }
        }
    };
    Some(format!("{}{zone}", &s[..19]))
}

/// Decrypts every leaf of a SOPS YAML document the way sops does and checks
/// the MAC; returns the leaves in document order.
fn decrypt_tree(doc: &str, identities: &[age::x25519::Identity]) -> Result<Vec<Leaf>, CodecError> {
    let root: Yaml =
        serde_yaml::from_str(doc).map_err(|_| CodecError::Malformed("not parseable YAML"))?;
    let Yaml::Mapping(root) = root else {
        return Err(CodecError::Malformed("top level is not a mapping"));
    };
    let Some(Yaml::Mapping(sops_meta)) = root.get("sops") else {
        return Err(CodecError::Malformed("no sops metadata"));
    };
    // What the file means is settled before any key is tried.
    let meta = read_meta(sops_meta)?;
    let data_key = open_data_key(sops_meta, identities)?;
    let cipher = Cipher::new(&data_key.into());

    let mut walker = Walker {
        cipher: &cipher,
        rule: &meta.rule,
        mac_only_encrypted: meta.mac_only_encrypted,
        hasher: Sha512::new(),
        leaves: Vec::new(),
    };
    if meta.mac_only_encrypted {
        walker.hasher.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    let mut path = Vec::new();
    // Document order, without the metadata (sops takes it out in place).
    for (k, v) in &root {
        let key = string_key(k)?;
        if key == "sops" {
            continue;
        }
        path.push(key);
        walker.node(v, &mut path)?;
        path.pop();
    }
    let Walker { hasher, leaves, .. } = walker;

    // sops compares the decrypted MAC with its own uppercase hex exactly,
    // and requires the MAC's type to be a string.
    let (stored, text) = if meta.mac.is_empty() {
        (Vec::new(), true)
    } else {
        decrypt_value(&cipher, &meta.mac, &meta.mac_aad)?
    };
    let computed = hex::encode_upper(hasher.finalize());
    if !text || stored != computed.as_bytes() {
        return Err(CodecError::Integrity);
    }
    Ok(leaves)
}

/// sops's `Tree.Decrypt` walk: decrypts the leaves the rule encrypts,
/// hashes each leaf (only the encrypted ones under `mac_only_encrypted`).
struct Walker<'c> {
    cipher: &'c Cipher,
    rule: &'c Rule,
    mac_only_encrypted: bool,
    hasher: Sha512,
    leaves: Vec<Leaf>,
}

impl Walker<'_> {
    fn node(&mut self, node: &Yaml, path: &mut Vec<String>) -> Result<(), CodecError> {
        match node {
            Yaml::Mapping(m) => {
                for (k, v) in m {
                    path.push(string_key(k)?);
                    self.node(v, path)?;
                    path.pop();
                }
                Ok(())
            }
            // sops gives list items their parent's path (no index).
            Yaml::Sequence(items) => items.iter().try_for_each(|v| self.node(v, path)),
            // sops never visits a null: neither decrypted nor hashed.
            Yaml::Null => Ok(()),
            Yaml::Tagged(_) => Err(CodecError::Unsupported("tagged YAML values")),
            scalar => self.leaf(scalar, path),
        }
    }

    fn leaf(&mut self, node: &Yaml, path: &[String]) -> Result<(), CodecError> {
        let encrypted = self.rule.encrypts(path)?;
        let (plain, text) = if encrypted {
            match node {
                // sops's cipher passes an empty string through.
                Yaml::String(s) if s.is_empty() => (Vec::new(), true),
                Yaml::String(s) => decrypt_value(self.cipher, s, &format!("{}:", path.join(":")))?,
                _ => return Err(CodecError::Malformed(PLAINTEXT)),
            }
        } else {
            (plain_bytes(node)?, matches!(node, Yaml::String(_)))
        };
        if !self.mac_only_encrypted || encrypted {
            self.hasher.update(&plain);
        }
        self.leaves.push(Leaf {
            path: path.to_vec(),
            plain,
            encrypted,
            text,
        });
        Ok(())
    }
}

const PLAINTEXT: &str = "a value that the file's rule encrypts is in plaintext";

/// The bytes sops hashes for an unencrypted leaf (its Go `ToBytes` of what
/// go-yaml decodes).
fn plain_bytes(node: &Yaml) -> Result<Vec<u8>, CodecError> {
    Ok(match node {
        Yaml::String(s) => s.clone().into_bytes(),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string().into_bytes()
            } else if n.is_u64() {
                // go-yaml decodes it as uint64, which sops cannot walk.
                return Err(CodecError::Malformed(
                    "an integer beyond 64-bit signed range",
                ));
            } else {
                go_float(n.as_f64().unwrap_or(f64::NAN)).into_bytes()
            }
        }
        // sops keeps Python's spelling for booleans.
        Yaml::Bool(true) => b"True".to_vec(),
        Yaml::Bool(false) => b"False".to_vec(),
        _ => return Err(CodecError::Malformed("unsupported YAML node")),
    })
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest digits that
/// round-trip, never an exponent, which is also what Rust's `Display` does
/// for finite values.
fn go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        f.to_string()
    }
}

/// sops only walks string keys.
fn string_key(k: &Yaml) -> Result<String, CodecError> {
    match k {
        Yaml::String(s) => Ok(s.clone()),
        _ => Err(CodecError::Malformed("mapping key is not a string")),
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

/// Decrypts one `ENC[…]` value the way sops's cipher does; returns what
/// sops hashes for it and whether it is a string (`type:str`).
fn decrypt_value(cipher: &Cipher, enc: &str, aad: &str) -> Result<(Vec<u8>, bool), CodecError> {
    let [data, iv, tag, ty] = enc_fields(enc).ok_or(CodecError::Malformed(PLAINTEXT))?;
    let field = |f: &str| {
        B64.decode(f)
            .map_err(|_| CodecError::Malformed("encrypted value field is not base64"))
    };
    let (data, iv, tag) = (field(data)?, field(iv)?, field(tag)?);
    if iv.len() != 32 || tag.len() != TAG_LEN {
        return Err(CodecError::Malformed(
            "encrypted value has a bad iv or tag size",
        ));
    }
    let mut sealed = data;
    sealed.extend_from_slice(&tag);
    let nonce = aes_gcm::Nonce::<U32>::from_slice(&iv);
    let plain = cipher
        .decrypt(
            nonce,
            Payload {
                msg: &sealed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| CodecError::Integrity)?;
    // What sops makes of each type, as its `ToBytes` hashes it.
    match ty {
        "str" => Ok((plain, true)),
        "bytes" => Ok((plain, false)),
        "int" => std::str::from_utf8(&plain)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .map(|n| (n.to_string().into_bytes(), false))
            .ok_or(CodecError::Malformed("an encrypted int is not an integer")),
        "bool" => match plain.as_slice() {
            b"1" | b"t" | b"T" | b"TRUE" | b"true" | b"True" => Ok((b"True".to_vec(), false)),
            b"0" | b"f" | b"F" | b"FALSE" | b"false" | b"False" => Ok((b"False".to_vec(), false)),
            _ => Err(CodecError::Malformed("an encrypted bool is not a boolean")),
        },
        "float" | "time" | "comment" => Err(CodecError::Unsupported(
            "encrypted floats, times and comments",
        )),
        _ => Err(CodecError::Malformed("unknown encrypted value type")),
    }
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

    fn bound(id: &str, revision: u32) -> Binding {
        Binding {
            type_instance_id: id.to_owned(),
            revision,
        }
    }

    fn roundtrip(value: &[u8]) -> Vec<u8> {
        let id = key();
        let doc = encrypt(value, None, &[id.to_public()], SystemTime::now()).expect("encrypt");
        decrypt(&doc, &[id]).expect("decrypt")
    }

    /// `doc` with `line` added at the end of the `sops:` block.
    fn with_meta(doc: &str, line: &str) -> String {
        format!("{doc}    {line}\n")
    }

    #[test]
    fn encrypted_values_split_like_sops_regex() {
        let re = Regex::new(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")
            .expect("sops regex");
        let cases = [
            "ENC[AES256_GCM,data:ZGF0YQ==,iv:aXY=,tag:dGFn,type:str]",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:str]trailing",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:str]]",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:x,type:]",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,tag:d,type:int]",
            "ENC[AES256_GCM,data:a,iv:b,iv:c,tag:d,type:bool]",
            "ENC[AES256_GCM,data:,iv:b,tag:c,type:str]",
            "ENC[AES256_GCM,data:a,iv:,tag:c,type:str]",
            "ENC[AES256_GCM,data:a,iv:b,tag:,type:str]",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:]",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:str",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:str\n]",
            "ENC[AES256_GCM,data:a,iv:b\n,tag:c,type:str]",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:str]\nmore]",
            "ENC[AES256_GCM,data:,iv:,iv:b,tag:c,type:str]",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:s]t]",
            "ENC[AES256_GCM,data:a,iv:,tag:b,tag:c,type:str]",
            " ENC[AES256_GCM,data:a,iv:b,tag:c,type:str]",
            "ENC[AES256_GCM,data:é,iv:ü,tag:ß,type:ŝ]",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:str],type:]",
            "",
        ];
        for case in cases {
            let expected = re
                .captures(case)
                .map(|c| [1, 2, 3, 4].map(|i| c.get(i).map_or("", |m| m.as_str())));
            assert_eq!(enc_fields(case), expected, "{case:?}");
        }
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
        let doc = encrypt(
            b"hunter2-secret",
            Some(&bound("db-creds", 12)),
            &[id.to_public()],
            SystemTime::now(),
        )
        .expect("enc");
        assert!(doc.contains("version: 3.11.0"));
        assert!(!doc.contains("hunter2"));
        assert!(!doc.contains(&B64.encode(b"hunter2-secret")));
        assert!(!doc.contains("db-creds"), "the binding is encrypted too");
    }

    #[test]
    fn a_bound_document_reads_back_its_binding() {
        let id = key();
        let doc = encrypt(
            b"v",
            Some(&bound("db", 3)),
            &[id.to_public()],
            SystemTime::now(),
        )
        .expect("enc");
        let opened = open(&doc, &[id]).expect("opens");
        assert_eq!(opened.value, b"v");
        assert_eq!(opened.binding, Some(bound("db", 3)));
        assert_eq!(opened.check_binding(&bound("db", 3)), Ok(()));
        assert_eq!(
            opened.check_binding(&bound("db", 2)),
            Err(CodecError::Misplaced)
        );
        assert_eq!(
            opened.check_binding(&bound("other", 3)),
            Err(CodecError::Misplaced)
        );
    }

    #[test]
    fn an_unbound_document_passes_any_binding_check() {
        let id = key();
        let doc = encrypt(b"v", None, &[id.to_public()], SystemTime::now()).expect("enc");
        let opened = open(&doc, &[id]).expect("opens");
        assert_eq!(opened.binding, None);
        assert_eq!(opened.check_binding(&bound("any", 9)), Ok(()));
    }

    #[test]
    fn a_binding_swapped_in_from_another_document_fails_authentication() {
        // The ciphertext of another file's revision, even under the same
        // key path, was sealed with another data key.
        let id = key();
        let one = encrypt(
            b"v",
            Some(&bound("a", 1)),
            &[id.to_public()],
            SystemTime::now(),
        )
        .expect("enc");
        let two = encrypt(
            b"v",
            Some(&bound("a", 2)),
            &[id.to_public()],
            SystemTime::now(),
        )
        .expect("enc");
        let rev_line = |d: &str| {
            d.lines()
                .find(|l| l.starts_with("revision:"))
                .expect("revision line")
                .to_owned()
        };
        let spliced = one.replace(&rev_line(&one), &rev_line(&two));
        assert_eq!(open(&spliced, &[id]).err(), Some(CodecError::Integrity));
    }

    #[test]
    fn a_binding_in_plaintext_is_refused() {
        // Whoever can push could otherwise write any binding next to a
        // value they copied. (A binding the file's rule leaves unencrypted
        // is refused too: see the cross-check with `--encrypted-regex`.)
        let id = key();
        let doc = encrypt(b"v", None, &[id.to_public()], SystemTime::now()).expect("enc");
        let doc = doc.replacen("sops:", "typeInstanceId: a\nrevision: \"1\"\nsops:", 1);
        assert_eq!(
            open(&doc, &[id]).err(),
            Some(CodecError::Malformed(PLAINTEXT))
        );
    }

    #[test]
    fn every_recipient_can_decrypt() {
        let (a, b) = (key(), key());
        let doc = encrypt(
            b"x",
            None,
            &[a.to_public(), b.to_public()],
            SystemTime::now(),
        )
        .expect("enc");
        assert_eq!(decrypt(&doc, &[b]).expect("b decrypts"), b"x");
        assert_eq!(decrypt(&doc, &[a]).expect("a decrypts"), b"x");
    }

    #[test]
    fn a_foreign_key_cannot_decrypt() {
        let doc = encrypt(b"x", None, &[key().to_public()], SystemTime::now()).expect("enc");
        assert_eq!(decrypt(&doc, &[key()]), Err(CodecError::NoMatchingKey));
    }

    #[test]
    fn a_plaintext_value_is_refused_even_with_a_matching_mac() {
        let id = key();
        let one = encrypt(b"one", None, &[id.to_public()], SystemTime::now()).expect("enc");
        let line = one.lines().next().expect("first line");
        let tampered = one.replace(line, "value: dHdv");
        assert_eq!(
            decrypt(&tampered, &[id]),
            Err(CodecError::Malformed(PLAINTEXT))
        );
    }

    #[test]
    fn an_added_plaintext_leaf_fails_the_integrity_check() {
        let id = key();
        let doc = encrypt(b"one", None, &[id.to_public()], SystemTime::now()).expect("enc");
        // Not encrypted by the file's rule, but covered by its MAC.
        let tampered = doc.replacen("sops:", "note_unencrypted: added\nsops:", 1);
        assert_eq!(decrypt(&tampered, &[id]), Err(CodecError::Integrity));
    }

    #[test]
    fn flipped_ciphertext_fails_the_integrity_check() {
        let id = key();
        let doc = encrypt(b"some value", None, &[id.to_public()], SystemTime::now()).expect("enc");
        let tampered = doc.replacen("data:", "data:AAAA", 1);
        assert_eq!(decrypt(&tampered, &[id]), Err(CodecError::Integrity));
    }

    #[test]
    fn setting_mac_only_encrypted_changes_the_mac() {
        // Our documents have only encrypted leaves, so without sops's
        // initialisation bytes the flag would not change the MAC input.
        let id = key();
        let doc = encrypt(b"v", None, &[id.to_public()], SystemTime::now()).expect("enc");
        let flipped = with_meta(&doc, "mac_only_encrypted: true");
        assert_eq!(decrypt(&flipped, &[id]), Err(CodecError::Integrity));
    }

    #[test]
    fn a_mac_in_lowercase_hex_is_refused_like_sops_does() {
        let id = key();
        let data_key = Cipher::generate_key(OsRng);
        let cipher = Cipher::new(&data_key);
        let plain = B64.encode(b"v");
        let value = encrypt_scalar(&cipher, plain.as_bytes(), "value:").expect("enc");
        let lower = hex::encode(Sha512::digest(plain.as_bytes()));
        let upper = lower.to_uppercase();
        let build = |mac: &str| {
            let ts = "2026-01-01T00:00:00Z";
            let mac = encrypt_scalar(&cipher, mac.as_bytes(), ts).expect("mac");
            let mut doc = format!("value: {value}\nsops:\n    age:\n");
            let armored = age_encrypt(&data_key, &id.to_public()).expect("age");
            doc.push_str(&format!(
                "        - recipient: {}\n          enc: |\n",
                id.to_public()
            ));
            for line in armored.lines() {
                doc.push_str(&format!("            {line}\n"));
            }
            doc.push_str(&format!(
                "    lastmodified: \"{ts}\"\n    mac: {mac}\n    version: 3.11.0\n"
            ));
            doc
        };
        assert_eq!(
            decrypt(&build(&upper), std::slice::from_ref(&id)),
            Ok(b"v".to_vec())
        );
        assert_eq!(decrypt(&build(&lower), &[id]), Err(CodecError::Integrity));
    }

    #[test]
    fn metadata_that_changes_the_meaning_is_refused() {
        let id = key();
        let doc = encrypt(b"v", None, &[id.to_public()], SystemTime::now()).expect("enc");
        for (line, want) in [
            (
                "key_groups:\n        - age: []",
                CodecError::Unsupported("key groups"),
            ),
            (
                "shamir_threshold: 2",
                CodecError::Unsupported("shamir threshold"),
            ),
            (
                "encrypted_comment_regex: sops",
                CodecError::Unsupported("comment-based encryption rules"),
            ),
            (
                "unencrypted_comment_regex: plain",
                CodecError::Unsupported("comment-based encryption rules"),
            ),
            (
                "some_future_rule: x",
                CodecError::Unsupported("unknown sops metadata key"),
            ),
            (
                "encrypted_regex: ^value$",
                CodecError::Malformed("more than one encryption rule"),
            ),
            (
                "mac_only_encrypted: \"yes\"",
                CodecError::Malformed("sops.mac_only_encrypted is not a boolean"),
            ),
        ] {
            assert_eq!(
                decrypt(&with_meta(&doc, line), std::slice::from_ref(&id)),
                Err(want),
                "{line}"
            );
        }
    }

    #[test]
    fn an_empty_or_null_rule_counts_as_unset_like_in_sops() {
        let id = key();
        let doc = encrypt(b"v", None, &[id.to_public()], SystemTime::now()).expect("enc");
        for line in [
            "encrypted_regex: \"\"",
            "encrypted_suffix: null",
            "key_groups: []",
        ] {
            assert_eq!(
                decrypt(&with_meta(&doc, line), std::slice::from_ref(&id)),
                Ok(b"v".to_vec()),
                "{line}"
            );
        }
    }

    #[test]
    fn lastmodified_is_normalised_the_way_go_formats_it() {
        assert_eq!(
            go_rfc3339("2026-02-03T04:05:06Z").as_deref(),
            Some("2026-02-03T04:05:06Z")
        );
        assert_eq!(
            go_rfc3339("2026-02-03T04:05:06.123456Z").as_deref(),
            Some("2026-02-03T04:05:06Z")
        );
        assert_eq!(
            go_rfc3339("2026-02-03T04:05:06+00:00").as_deref(),
            Some("2026-02-03T04:05:06Z")
        );
        assert_eq!(
            go_rfc3339("2026-02-03T04:05:06-07:30").as_deref(),
            Some("2026-02-03T04:05:06-07:30")
        );
        for bad in [
            "",
            "2026-02-30T04:05:06Z",
            "2026-02-03 04:05:06Z",
            "2026-02-03T24:05:06Z",
            "2026-02-03T04:05:06",
            "2026-02-03T04:05:06.Z",
            "2026-02-03T04:05:06+0700",
        ] {
            assert_eq!(go_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_versions_sops_can_compare_are_accepted() {
        for ok in ["3.11.0", "v3.13.2", "3.8.0-rc.1", "1.14"] {
            assert!(version_ok(ok), "{ok}");
        }
        for bad in ["", "3.11", "3.011.0", "latest"] {
            assert!(!version_ok(bad), "{bad}");
        }
    }

    #[test]
    fn plaintext_numbers_hash_as_go_prints_them() {
        let n = |text: &str| plain_bytes(&serde_yaml::from_str(text).expect("yaml")).expect("leaf");
        assert_eq!(n("42"), b"42");
        assert_eq!(n("-7"), b"-7");
        assert_eq!(n("1.0"), b"1");
        assert_eq!(n("0.1"), b"0.1");
        assert_eq!(n("1e21"), b"1000000000000000000000");
        assert_eq!(n(".inf"), b"+Inf");
        assert_eq!(n("true"), b"True");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let id = key();
        for doc in ["", "::: [", "value: x", "- a\n- b", "1: x\nsops: {}"] {
            assert!(matches!(
                decrypt(doc, std::slice::from_ref(&id)),
                Err(CodecError::Malformed(_))
            ));
        }
    }

    #[test]
    fn duplicate_keys_are_refused_like_sops_does() {
        let id = key();
        let doc = encrypt(b"v", None, &[id.to_public()], SystemTime::now()).expect("enc");
        let line = doc.lines().next().expect("value line").to_owned();
        let twice = format!("{line}\n{doc}");
        assert_eq!(
            decrypt(&twice, &[id]),
            Err(CodecError::Malformed("not parseable YAML"))
        );
    }

    #[test]
    fn debug_output_never_shows_the_value() {
        let opened = Opened {
            value: b"hunter2".to_vec(),
            binding: None,
        };
        assert!(!format!("{opened:?}").contains("hunter2"));
    }

    #[test]
    fn a_flux_secret_we_wrote_decrypts_back_to_its_target_and_value() {
        let id = key();
        let target = SecretTarget {
            name: "db".into(),
            namespace: "apps".into(),
            key: "password".into(),
        };
        let doc =
            encrypt_secret(&target, b"\x00pw", &[id.to_public()], SystemTime::now()).expect("enc");
        let (t, v) = decrypt_secret(&doc, &[id]).expect("decrypts");
        assert_eq!(t, target);
        assert_eq!(v, b"\x00pw");
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
