//! The `s3-backend` binary against a real moto server: the conformance
//! suite on a plain and a versioned bucket, two processes racing on one
//! bucket, the documented layout (and the previous version's layout),
//! ownership tags, encryption headers, version purging, a missing bucket at
//! start, a foreign object at one of our keys, and an outage with recovery.

mod support;

use std::time::Duration;

use aws_sdk_s3::{Client, types::ServerSideEncryption};
use bytes::Bytes;
use shared::proto::storage_backend as pb;
use support::{
    BackendProcess, Moto, PREFIX, backend_env, backend_env_at, create_bucket, s3_client,
    start_backend, start_backend_on,
};
use testkit::{assert_clean, conformance};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Every case of the suite applies to a value backend without context.
const MIN_CASES: usize = 40;

async fn create(b: &BackendProcess, id: &str, value: &[u8]) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_create(pb::OnCreateValueAndContextRequest {
            type_instance_id: id.into(),
            value: Bytes::copy_from_slice(value),
            context: None,
        })
        .await
        .map(|_| ())
}

async fn update(b: &BackendProcess, id: &str, rev: u32, value: &[u8]) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_update(pb::OnUpdateValueAndContextRequest {
            type_instance_id: id.into(),
            new_resource_version: rev,
            new_value: Bytes::copy_from_slice(value),
            context: None,
            owner_id: None,
        })
        .await
        .map(|_| ())
}

async fn get(b: &BackendProcess, id: &str, rev: u32) -> Result<Vec<u8>, tonic::Status> {
    b.client()
        .await
        .get_value(pb::GetValueRequest {
            type_instance_id: id.into(),
            resource_version: rev,
            context: Bytes::new(),
        })
        .await
        .map(|r| r.into_inner().value.unwrap_or_default().to_vec())
}

async fn delete(b: &BackendProcess, id: &str) -> Result<(), tonic::Status> {
    b.client()
        .await
        .on_delete(pb::OnDeleteValueAndContextRequest {
            type_instance_id: id.into(),
            context: None,
            owner_id: None,
        })
        .await
        .map(|_| ())
}

async fn object(s3: &Client, bucket: &str, key: &str) -> Vec<u8> {
    s3.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec()
}

/// The key of revision `rev` of `id`: under the life its head names.
async fn rev_key(s3: &Client, bucket: &str, id: &str, rev: u32) -> String {
    let head: serde_json::Value =
        serde_json::from_slice(&object(s3, bucket, &format!("{PREFIX}/{id}/head")).await)
            .expect("head is json");
    let life = head["life"].as_str().expect("the head names its life");
    assert_eq!(life.len(), 16, "{head}");
    format!("{PREFIX}/{id}/{life}/{rev}")
}

/// Keys of the current objects under `prefix`.
async fn keys(s3: &Client, bucket: &str, prefix: &str) -> Vec<String> {
    let out = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list objects");
    out.contents()
        .iter()
        .filter_map(|o| o.key())
        .map(str::to_owned)
        .collect()
}

/// Every version and delete marker under `prefix`.
async fn versions(s3: &Client, bucket: &str, prefix: &str) -> usize {
    let out = s3
        .list_object_versions()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list versions");
    out.versions().len() + out.delete_markers().len()
}

async fn moto_with_bucket(bucket: &str, versioned: bool) -> (Moto, Client) {
    let moto = Moto::start();
    let s3 = s3_client(&moto).await;
    create_bucket(&s3, bucket, versioned).await;
    (moto, s3)
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_bucket_passes_the_conformance_suite() {
    let (moto, _s3) = moto_with_bucket("plain", false).await;
    let backend = start_backend(&backend_env(&moto, "plain", &[]))
        .serving()
        .await;
    assert_clean(&conformance(&backend.url).await, MIN_CASES);
    testkit::registration::assert_manifests_match(&backend.url, "s3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn versioned_bucket_passes_the_conformance_suite_and_keeps_no_old_versions() {
    let (moto, s3) = moto_with_bucket("versioned", true).await;
    let backend = start_backend(&backend_env(&moto, "versioned", &[]))
        .serving()
        .await;
    assert_clean(&conformance(&backend.url).await, MIN_CASES);
    // The suite deletes everything it made: with purging on (the default)
    // nothing may survive as an old version or a delete marker.
    assert_eq!(versions(&s3, "versioned", &format!("{PREFIX}/")).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_revisions_and_removes_the_rest() {
    let (moto, s3) = moto_with_bucket("retention", false).await;
    let backend = start_backend(&backend_env(
        &moto,
        "retention",
        &[("APP_MAX_REVISIONS", "3")],
    ))
    .serving()
    .await;
    testkit::assert_retention(&backend.url, 3, None).await;
    // Nothing is left once the TypeInstance is deleted.
    assert_eq!(versions(&s3, "retention", &format!("{PREFIX}/")).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_locks_and_force_unlocks_by_compare_and_set() {
    let (moto, _s3) = moto_with_bucket("admin", false).await;
    let admin = format!("127.0.0.1:{}", testkit::free_port());
    let backend = start_backend(&backend_env(&moto, "admin", &[("APP_ADMIN_ADDR", &admin)]))
        .serving()
        .await;
    testkit::assert_admin(&backend.url, &format!("http://{admin}"), None, true).await;
}

/// Two processes on one bucket share nothing but S3: every fence holds
/// through S3's conditional writes alone.
#[tokio::test(flavor = "multi_thread")]
async fn two_backends_racing_on_one_bucket_never_violate_the_fence() {
    let (moto, _s3) = moto_with_bucket("race", false).await;
    let env = backend_env(&moto, "race", &[]);
    let a = start_backend(&env).serving().await;
    let b = start_backend(&env).serving().await;
    testkit::assert_races_clean(&a.url, &b.url, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_layout_written_by_the_previous_version_is_still_served() {
    let (moto, s3) = moto_with_bucket("legacy", false).await;
    let put = |key: &'static str, body: &'static [u8]| {
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket("legacy")
                .key(key)
                .body(body.to_vec().into())
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        }
    };
    put(
        "capact/leg-1/head",
        br#"{"managed_by":"capact-storage","latest":2,"lock":null,"deleting":false,"write":"x"}"#,
    )
    .await;
    put("capact/leg-1/rev/1", b"one").await;
    put("capact/leg-1/rev/2", b"two").await;
    let backend = start_backend(&backend_env(&moto, "legacy", &[]))
        .serving()
        .await;
    assert_eq!(get(&backend, "leg-1", 1).await.expect("get 1"), b"one");
    assert_eq!(get(&backend, "leg-1", 2).await.expect("get 2"), b"two");
    update(&backend, "leg-1", 3, b"three")
        .await
        .expect("update");
    assert_eq!(get(&backend, "leg-1", 3).await.expect("get 3"), b"three");
    // A head without a life keeps its revisions at the old keys.
    assert_eq!(object(&s3, "legacy", "capact/leg-1/rev/3").await, b"three");
    delete(&backend, "leg-1").await.expect("delete");
    assert_eq!(
        keys(&s3, "legacy", "capact/leg-1/").await,
        Vec::<String>::new()
    );
    let status = get(&backend, "leg-1", 1).await.expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        status.message(),
        "TypeInstance \"leg-1\" in revision 1 was not found"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revisions_are_stored_one_object_each_with_the_exact_bytes_and_tags() {
    let (moto, s3) = moto_with_bucket("layout", false).await;
    let backend = start_backend(&backend_env(&moto, "layout", &[]))
        .serving()
        .await;
    let v1: &[u8] = b"\xff\x00not json";
    create(&backend, "lay-1", v1).await.expect("create");
    update(&backend, "lay-1", 2, b"{\"b\":2}")
        .await
        .expect("update");
    let (rev1, rev2) = (
        rev_key(&s3, "layout", "lay-1", 1).await,
        rev_key(&s3, "layout", "lay-1", 2).await,
    );
    assert_eq!(object(&s3, "layout", &rev1).await, v1);
    assert_eq!(object(&s3, "layout", &rev2).await, b"{\"b\":2}");
    let head: serde_json::Value =
        serde_json::from_slice(&object(&s3, "layout", "capact/lay-1/head").await)
            .expect("head is json");
    assert_eq!(head["latest"], 2);
    assert_eq!(head["managed_by"], "capact-storage");
    assert!(head["lock"].is_null());
    assert!(head.get("intent").is_none(), "{head}");
    // The epoch travels in the metadata, so GetValue reads it in one call.
    let meta = s3
        .head_object()
        .bucket("layout")
        .key(&rev2)
        .send()
        .await
        .expect("head object");
    assert_eq!(
        meta.metadata().and_then(|m| m.get("capact-epoch")),
        Some(&"0".to_owned())
    );
    for key in ["capact/lay-1/head".to_owned(), rev1] {
        let tags = s3
            .get_object_tagging()
            .bucket("layout")
            .key(&key)
            .send()
            .await
            .expect("tagging");
        assert!(
            tags.tag_set()
                .iter()
                .any(|t| t.key() == "managed-by" && t.value() == "capact-storage"),
            "{key}: {:?}",
            tags.tag_set()
        );
    }
}

/// For S3-compatible stores without tagging; also the multi-thread runtime
/// (APP_WORKER_THREADS=0; the backend's default is one thread) under the
/// whole suite.
#[tokio::test(flavor = "multi_thread")]
async fn objects_carry_no_tags_when_tagging_is_off_and_the_multi_thread_runtime_passes_the_suite() {
    let (moto, s3) = moto_with_bucket("untagged", false).await;
    let backend = start_backend(&backend_env(
        &moto,
        "untagged",
        &[("APP_S3_TAG_OBJECTS", "false"), ("APP_WORKER_THREADS", "0")],
    ))
    .serving()
    .await;
    assert_clean(&conformance(&backend.url).await, MIN_CASES);
    create(&backend, "untag-1", b"{}").await.expect("create");
    let rev1 = rev_key(&s3, "untagged", "untag-1", 1).await;
    for key in ["capact/untag-1/head".to_owned(), rev1] {
        let tags = s3
            .get_object_tagging()
            .bucket("untagged")
            .key(&key)
            .send()
            .await
            .expect("tagging");
        assert!(tags.tag_set().is_empty(), "{key}: {:?}", tags.tag_set());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_s3_is_requested_on_every_object() {
    let (moto, s3) = moto_with_bucket("sse-s3", false).await;
    let backend = start_backend(&backend_env(&moto, "sse-s3", &[("APP_S3_SSE", "aes256")]))
        .serving()
        .await;
    create(&backend, "sse-1", b"secret").await.expect("create");
    assert_eq!(get(&backend, "sse-1", 1).await.expect("get"), b"secret");
    let rev1 = rev_key(&s3, "sse-s3", "sse-1", 1).await;
    for key in ["capact/sse-1/head".to_owned(), rev1] {
        let h = s3
            .head_object()
            .bucket("sse-s3")
            .key(&key)
            .send()
            .await
            .expect("head object");
        assert_eq!(
            h.server_side_encryption(),
            Some(&ServerSideEncryption::Aes256),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_kms_with_a_key_id_is_requested_on_every_object() {
    let (moto, s3) = moto_with_bucket("sse-kms", false).await;
    let key_id = "arn:aws:kms:us-east-1:123456789012:key/0f5a1b2c-0000-4000-8000-000000000001";
    let backend = start_backend(&backend_env(
        &moto,
        "sse-kms",
        &[("APP_S3_SSE", "aws:kms"), ("APP_S3_SSE_KMS_KEY_ID", key_id)],
    ))
    .serving()
    .await;
    create(&backend, "kms-1", b"secret").await.expect("create");
    update(&backend, "kms-1", 2, b"secret-2")
        .await
        .expect("update");
    assert_eq!(get(&backend, "kms-1", 2).await.expect("get"), b"secret-2");
    let h = s3
        .head_object()
        .bucket("sse-kms")
        .key(rev_key(&s3, "sse-kms", "kms-1", 2).await)
        .send()
        .await
        .expect("head object");
    assert_eq!(
        h.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    assert_eq!(h.ssekms_key_id(), Some(key_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_on_a_versioned_bucket_keeps_old_versions_when_purging_is_off() {
    let (moto, s3) = moto_with_bucket("keep", true).await;
    let backend = start_backend(&backend_env(
        &moto,
        "keep",
        &[("APP_S3_PURGE_VERSIONS", "false")],
    ))
    .serving()
    .await;
    create(&backend, "keep-1", b"one").await.expect("create");
    update(&backend, "keep-1", 2, b"two").await.expect("update");
    delete(&backend, "keep-1").await.expect("delete");
    let status = get(&backend, "keep-1", 1).await.expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(versions(&s3, "keep", "capact/keep-1/").await > 0);
    // The id can be created again over the delete markers.
    create(&backend, "keep-1", b"again")
        .await
        .expect("create again");
    assert_eq!(get(&backend, "keep-1", 1).await.expect("get"), b"again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_object_at_the_head_key_is_never_overwritten() {
    let (moto, s3) = moto_with_bucket("foreign", false).await;
    s3.put_object()
        .bucket("foreign")
        .key("capact/theirs/head")
        .body(b"someone else's data".to_vec().into())
        .send()
        .await
        .expect("put foreign");
    let backend = start_backend(&backend_env(&moto, "foreign", &[]))
        .serving()
        .await;
    let status = create(&backend, "theirs", b"x")
        .await
        .expect_err("must not take over");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = delete(&backend, "theirs")
        .await
        .expect_err("must not delete");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        object(&s3, "foreign", "capact/theirs/head").await,
        b"someone else's data"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_bucket_stops_the_backend_at_start_with_a_clear_message() {
    let moto = Moto::start();
    let mut backend = start_backend(&backend_env(&moto, "no-such-bucket", &[]));
    let (code, log) = backend.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("no-such-bucket"), "{log}");
    assert!(log.contains("does not exist"), "{log}");
    assert!(log.contains("APP_S3_BUCKET"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_stopped_mid_run_gives_unavailable_then_recovers_after_restart() {
    let (mut moto, _s3) = moto_with_bucket("outage", false).await;
    let port = moto.port;
    let mut backend = start_backend(&backend_env(&moto, "outage", &[]))
        .serving()
        .await;
    create(&backend, "outage-1", b"before")
        .await
        .expect("create");

    moto.stop();
    let status = get(&backend, "outage-1", 1)
        .await
        .expect_err("store is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = create(&backend, "outage-2", b"x")
        .await
        .expect_err("store is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    backend.wait_health(ServingStatus::NotServing).await;

    // Same port; moto starts empty, so the bucket is made again first.
    let moto = Moto::start_on(port);
    create_bucket(&s3_client(&moto).await, "outage", false).await;
    backend.wait_health(ServingStatus::Serving).await;
    create(&backend, "outage-2", b"after")
        .await
        .expect("create after restart");
    assert_eq!(get(&backend, "outage-2", 1).await.expect("get"), b"after");
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_started_while_moto_is_down_serves_once_it_is_up() {
    let port = testkit::free_port();
    let env = backend_env_at(&format!("http://127.0.0.1:{port}"), "late", &[]);
    let mut backend = start_backend_on(testkit::free_port(), &env);
    backend.wait_health(ServingStatus::NotServing).await;
    let moto = Moto::start_on(port);
    create_bucket(&s3_client(&moto).await, "late", false).await;
    backend.wait_health(ServingStatus::Serving).await;
    create(&backend, "late-1", b"v").await.expect("create");
}

/// Turns on moto's request authentication (`/moto-api/reset-auth`): from
/// then on our test keys are unknown to its IAM and every call is refused.
fn enforce_auth(moto: &Moto) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", moto.port)).expect("connect moto");
    let body = "0";
    write!(
        conn,
        "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_give_permission_denied_naming_the_object() {
    let (moto, _s3) = moto_with_bucket("denied", false).await;
    let backend = start_backend(&backend_env(&moto, "denied", &[]))
        .serving()
        .await;
    create(&backend, "denied-1", b"v").await.expect("create");
    enforce_auth(&moto);
    let status = get(&backend, "denied-1", 1).await.expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // GetValue reads the head first.
    assert!(
        status.message().contains("denied/capact/denied-1/head"),
        "{}",
        status.message()
    );
    let status = update(&backend, "denied-1", 2, b"w")
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_at_start_stop_the_backend_with_a_clear_message() {
    let (moto, _s3) = moto_with_bucket("denied-start", false).await;
    enforce_auth(&moto);
    let mut backend = start_backend(&backend_env(&moto, "denied-start", &[]));
    let (code, log) = backend.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("denied-start"), "{log}");
    assert!(log.contains("s3:ListBucket"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_contain_neither_the_secret_key_nor_a_value() {
    let (moto, _s3) = moto_with_bucket("logged", false).await;
    let secret = "secret-key-that-must-not-be-logged-5e1d";
    let backend = start_backend(&backend_env(
        &moto,
        "logged",
        &[
            ("AWS_SECRET_ACCESS_KEY", secret),
            // Naming the SDK's crates keeps their own logs in the capture too.
            (
                "APP_LOG_LEVEL",
                "trace,aws_smithy_runtime=trace,aws_sdk_s3=trace,aws_config=trace",
            ),
        ],
    ))
    .serving()
    .await;
    let value = b"value-that-must-not-be-logged-77a0";
    create(&backend, "logged-1", value).await.expect("create");
    update(&backend, "logged-1", 2, value)
        .await
        .expect("update");
    assert_eq!(get(&backend, "logged-1", 2).await.expect("get"), value);
    let _ = create(&backend, "logged-1", b"other").await;
    let logs = backend.logs();
    assert!(
        logs.len() > 1000,
        "trace logging produced almost nothing:\n{logs}"
    );
    assert!(!logs.contains(secret), "the secret key appears in the logs");
    assert!(
        !logs.contains("value-that-must-not-be-logged"),
        "the value appears in the logs"
    );
}
