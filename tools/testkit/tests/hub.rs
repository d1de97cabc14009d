//! The test Hub (`testkit::hub`) answers like the Capact Hub: queries are
//! validated against the Hub's schema, mutations keep hub-js' rules and
//! error texts, and TypeInstances in an external storage are delegated to a
//! real backend (`testkit::memory`: the revision engine on its in-memory
//! store, served in-process).

use serde_json::{Value as Json, json};
use shared::client::{Client, Connect, Timeouts};
use testkit::{
    hub::{BUILTIN_STORAGE_ID, Hub, HubOptions},
    memory::MemoryBackend,
};

// ---- helpers ----

fn http() -> reqwest::Client {
    // reqwest is built without a crypto provider: the workspace installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// POSTs a raw GraphQL request: the status and the body (JSON, or the text
/// as a JSON string).
async fn post_with(
    hub: &Hub,
    body: Json,
    auth: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (u16, Json) {
    let resp = auth(http().post(hub.url()).json(&body))
        .send()
        .await
        .expect("reach the test Hub");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("read the answer");
    let json = serde_json::from_str(&text).unwrap_or(Json::String(text));
    (status, json)
}

async fn post(hub: &Hub, query: &str, variables: Json) -> (u16, Json) {
    post_with(hub, json!({"query": query, "variables": variables}), |r| r).await
}

/// The `data` of a request that must succeed without errors.
async fn data(hub: &Hub, query: &str, variables: Json) -> Json {
    let (status, body) = post(hub, query, variables).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "unexpected errors: {body}");
    body["data"].clone()
}

/// The only error of a request that must fail at execution (HTTP 200).
async fn error(hub: &Hub, query: &str, variables: Json) -> String {
    let (status, body) = post(hub, query, variables).await;
    assert_eq!(status, 200, "{body}");
    let errors = body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{body}");
    errors[0]["message"].as_str().expect("message").to_owned()
}

const CREATE: &str =
    "mutation Create($in: CreateTypeInstanceInput!) { createTypeInstance(in: $in) }";

async fn create(hub: &Hub, input: Json) -> String {
    let d = data(hub, CREATE, json!({ "in": input })).await;
    d["createTypeInstance"].as_str().expect("id").to_owned()
}

async fn create_sample(hub: &Hub, value: Json) -> String {
    create(
        hub,
        json!({
            "typeRef": {"path": "cap.type.sample", "revision": "0.1.0"},
            "createdBy": "tester",
            "attributes": [{"path": "cap.attribute.sample", "revision": "0.1.0"}],
            "value": value,
        }),
    )
    .await
}

const DELETE: &str = "mutation Delete($id: ID!, $owner: LockOwnerID) { deleteTypeInstance(id: $id, ownerID: $owner) }";
const LOCK: &str = "mutation Lock($in: LockTypeInstancesInput!) { lockTypeInstances(in: $in) }";
const UNLOCK: &str =
    "mutation Unlock($in: UnlockTypeInstancesInput!) { unlockTypeInstances(in: $in) }";
const UPDATE: &str = "mutation Update($in: [UpdateTypeInstancesInput]!) {
  updateTypeInstances(in: $in) { id latestResourceVersion { resourceVersion spec { value } } }
}";
const GET_VALUE: &str = "query Get($id: ID!) {
  typeInstance(id: $id) { latestResourceVersion { resourceVersion spec { value backend { context } } } }
}";

/// Registers a storage TypeInstance for the backend at `addr`, as an
/// operator would, and returns its id.
async fn register_storage(hub: &Hub, addr: &str) -> String {
    create(
        hub,
        json!({
            "typeRef": {"path": "cap.type.testing.storage", "revision": "0.1.0"},
            "value": {"url": addr, "acceptValue": true, "contextSchema": null},
        }),
    )
    .await
}

async fn client(addr: &str) -> Client {
    Client::connect(&Connect::plain(addr), Timeouts::default())
        .await
        .expect("connect to the backend")
}

async fn create_external(hub: &Hub, storage: &str, value: Json) -> String {
    create(
        hub,
        json!({
            "typeRef": {"path": "cap.type.secret", "revision": "0.1.0"},
            "value": value,
            "backend": {"id": storage},
        }),
    )
    .await
}

// ---- validation and transport ----

#[tokio::test]
async fn a_query_with_a_misspelled_field_is_rejected_with_400_and_recorded() {
    let hub = Hub::start().await;
    let (status, body) = post(&hub, "{ typeInstances { id typeRef { pth } } }", json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.get("data").is_none(),
        "a rejected request has no data: {body}"
    );
    assert!(body["errors"][0]["message"].as_str().is_some(), "{body}");

    // DateTime is a scalar in this schema: the example's `createdAt { formatted }` is invalid too.
    let (status, _) = post(
        &hub,
        "{ typeInstances { createdAt { formatted } } }",
        json!({}),
    )
    .await;
    assert_eq!(status, 400);

    let rejected = hub.rejected();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected[0].contains("pth"), "{rejected:?}");
    assert!(hub.operations().is_empty(), "{:?}", hub.operations());
}

#[tokio::test]
async fn missing_or_mistyped_variables_are_rejected_with_400() {
    let hub = Hub::start().await;
    let (status, body) = post(&hub, GET_VALUE, json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.get("data").is_none());
    let (status, _) = post(&hub, GET_VALUE, json!({"id": true})).await;
    assert_eq!(status, 400);
    let (status, _) = post(&hub, CREATE, json!({"in": {"typeRef": {"path": "x"}}})).await;
    assert_eq!(status, 400, "revision is required");
    assert_eq!(hub.rejected().len(), 3, "{:?}", hub.rejected());
    assert!(hub.operations().is_empty());
}

#[tokio::test]
async fn requests_without_the_configured_authorization_get_401() {
    let hub = Hub::start_with(HubOptions {
        bearer_token: Some("s3cret".into()),
        basic_auth: Some(("admin".into(), "pa55".into())),
    })
    .await;
    let body = json!({"query": "{ typeInstances { id } }"});
    let (status, _) = post_with(&hub, body.clone(), |r| r).await;
    assert_eq!(status, 401);
    let (status, _) = post_with(&hub, body.clone(), |r| r.bearer_auth("wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = post_with(&hub, body.clone(), |r| r.basic_auth("admin", Some("x"))).await;
    assert_eq!(status, 401);
    let (status, _) = post_with(&hub, body.clone(), |r| r.bearer_auth("s3cret")).await;
    assert_eq!(status, 200);
    let (status, _) = post_with(&hub, body, |r| r.basic_auth("admin", Some("pa55"))).await;
    assert_eq!(status, 200);
    assert_eq!(hub.operations(), ["typeInstances", "typeInstances"]);
}

#[tokio::test]
async fn a_hub_that_is_down_answers_503_and_keeps_its_state() {
    let hub = Hub::start().await;
    let id = create_sample(&hub, json!({"a": 1})).await;
    hub.set_down(true);
    let (status, _) = post(&hub, DELETE, json!({"id": id})).await;
    assert_eq!(status, 503);
    assert!(hub.get(&id).is_some(), "nothing changes while down");
    hub.set_down(false);
    let d = data(&hub, DELETE, json!({"id": id})).await;
    assert_eq!(d["deleteTypeInstance"], json!(id));
    assert_eq!(
        hub.operations(),
        ["createTypeInstance", "deleteTypeInstance"]
    );
}

#[tokio::test]
async fn a_lost_response_is_a_502_for_a_mutation_that_was_applied() {
    let hub = Hub::start().await;
    hub.lose_next_responses(1);
    // Queries are answered; only mutations lose their answer.
    data(&hub, "{ typeInstances { id } }", json!({})).await;
    let (status, _) = post(
        &hub,
        CREATE,
        json!({"in": {"typeRef": {"path": "cap.type.sample", "revision": "0.1.0"}, "value": {}}}),
    )
    .await;
    assert_eq!(status, 502);
    let tis = hub.type_instances();
    assert_eq!(tis.len(), 2, "the built-in storage and the one created");
    assert_eq!(tis[1].type_path, "cap.type.sample");
    // The next one is answered again.
    create_sample(&hub, json!({})).await;
    assert_eq!(hub.type_instances().len(), 3);
}

#[tokio::test]
async fn fragments_aliases_typename_and_nested_variables_are_projected() {
    let hub = Hub::start().await;
    let id = create_sample(&hub, json!({"hello": "world"})).await;
    let query = r#"
      query Other { typeInstances { id } }
      query List($path: NodePath!, $rev: Version) {
        found: typeInstances(filter: {typeRef: {path: $path, revision: $rev}}) {
          __typename
          ...Ti
          ... on TypeInstance { kind: typeRef { path } }
        }
      }
      fragment Ti on TypeInstance {
        ident: id
        latestResourceVersion { spec { value } metadata { attributes { path revision } } }
      }
    "#;
    let (status, body) = post_with(
        &hub,
        json!({"query": query, "operationName": "List", "variables": {"path": "cap.type.sample"}}),
        |r| r,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"found": [{
            "__typename": "TypeInstance",
            "ident": id,
            "latestResourceVersion": {
                "spec": {"value": {"hello": "world"}},
                "metadata": {"attributes": [{"path": "cap.attribute.sample", "revision": "0.1.0"}]},
            },
            "kind": {"path": "cap.type.sample"},
        }]})
    );
    let d = data(&hub, "{ __schema { mutationType { name } } }", json!({})).await;
    assert_eq!(d["__schema"]["mutationType"]["name"], "Mutation");
    // Two operations and no operationName: a request error.
    let (status, _) = post(&hub, query, json!({"path": "x"})).await;
    assert_eq!(status, 400);
    assert_eq!(
        hub.operations(),
        ["createTypeInstance", "typeInstances", "__schema"]
    );
}

// ---- built-in storage ----

#[tokio::test]
async fn the_hub_starts_with_its_builtin_storage() {
    let hub = Hub::start().await;
    let tis = hub.type_instances();
    assert_eq!(tis.len(), 1);
    assert_eq!(tis[0].id, BUILTIN_STORAGE_ID);
    assert_eq!(tis[0].type_path, "cap.core.type.hub.storage.neo4j");
    assert_eq!(tis[0].backend_id, BUILTIN_STORAGE_ID);
    assert!(tis[0].backend_abstract);
    let d = data(
        &hub,
        "{ typeInstance(id: \"00000000-0000-0000-0000-000000000000\") { backend { id abstract } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        d["typeInstance"]["backend"],
        json!({"id": BUILTIN_STORAGE_ID, "abstract": true})
    );
}

#[tokio::test]
async fn a_builtin_type_instance_is_created_listed_by_filter_updated_and_read_back() {
    let hub = Hub::start().await;
    let id = create_sample(&hub, json!({"key": "one"})).await;
    let other = create(
        &hub,
        json!({"typeRef": {"path": "cap.type.other", "revision": "0.2.0"}, "value": 1}),
    )
    .await;

    let list = "query L($f: TypeInstanceFilter) { typeInstances(filter: $f) { id } }";
    let ids = |d: Json| -> Vec<String> {
        d["typeInstances"]
            .as_array()
            .expect("list")
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let by_type = data(
        &hub,
        list,
        json!({"f": {"typeRef": {"path": "cap.type.sample"}}}),
    )
    .await;
    assert_eq!(ids(by_type), [id.as_str()]);
    let wrong_rev = json!({"f": {"typeRef": {"path": "cap.type.sample", "revision": "9.9.9"}}});
    assert!(ids(data(&hub, list, wrong_rev).await).is_empty());
    assert_eq!(
        ids(data(&hub, list, json!({"f": {"createdBy": "tester"}})).await),
        [id.as_str()]
    );
    let include = json!({"f": {"attributes": [{"path": "cap.attribute.sample"}]}});
    assert_eq!(ids(data(&hub, list, include).await), [id.as_str()]);
    let exclude =
        json!({"f": {"attributes": [{"path": "cap.attribute.sample", "rule": "EXCLUDE"}]}});
    assert_eq!(
        ids(data(&hub, list, exclude).await),
        [BUILTIN_STORAGE_ID, other.as_str()],
        "sorted by TypeRef path"
    );

    let d = data(
        &hub,
        UPDATE,
        json!({"in": [{"id": id, "createdBy": "updater", "typeInstance": {"value": {"key": "two"}}}]}),
    )
    .await;
    assert_eq!(
        d["updateTypeInstances"],
        json!([{"id": id, "latestResourceVersion": {"resourceVersion": 2, "spec": {"value": {"key": "two"}}}}])
    );
    // Without a value the previous one is kept; attributes are replaced.
    let new_attrs = json!({"in": [{"id": id, "typeInstance": {"attributes": [{"path": "cap.attribute.new", "revision": "1.0.0"}]}}]});
    data(&hub, UPDATE, new_attrs).await;

    let d = data(
        &hub,
        r#"query Get($id: ID!) { typeInstance(id: $id) {
            id createdAt lockedBy typeRef { path revision } backend { id abstract }
            firstResourceVersion { resourceVersion createdBy spec { value } }
            previousResourceVersion { resourceVersion createdBy spec { value } }
            latestResourceVersion { resourceVersion spec { value backend { context } instrumentation { health { url } } } metadata { attributes { path } } }
            second: resourceVersion(resourceVersion: 2) { resourceVersion }
            missing: resourceVersion(resourceVersion: 7) { resourceVersion }
            resourceVersions { resourceVersion }
            uses { id } usedBy { id }
        } }"#,
        json!({"id": id}),
    )
    .await;
    let ti = &d["typeInstance"];
    let created_at = ti["createdAt"].as_str().expect("createdAt");
    assert!(
        created_at.len() == 24 && created_at.ends_with('Z') && &created_at[10..11] == "T",
        "RFC 3339: {created_at}"
    );
    assert_eq!(ti["lockedBy"], Json::Null);
    assert_eq!(
        ti["typeRef"],
        json!({"path": "cap.type.sample", "revision": "0.1.0"})
    );
    assert_eq!(
        ti["backend"],
        json!({"id": BUILTIN_STORAGE_ID, "abstract": true})
    );
    assert_eq!(
        ti["firstResourceVersion"],
        json!({"resourceVersion": 1, "createdBy": "tester", "spec": {"value": {"key": "one"}}})
    );
    assert_eq!(
        ti["previousResourceVersion"],
        json!({"resourceVersion": 2, "createdBy": "updater", "spec": {"value": {"key": "two"}}})
    );
    assert_eq!(
        ti["latestResourceVersion"],
        json!({"resourceVersion": 3, "spec": {"value": {"key": "two"}, "backend": {"context": null}, "instrumentation": null},
               "metadata": {"attributes": [{"path": "cap.attribute.new"}]}})
    );
    assert_eq!(ti["second"], json!({"resourceVersion": 2}));
    assert_eq!(ti["missing"], Json::Null);
    assert_eq!(
        ti["resourceVersions"],
        json!([{"resourceVersion": 1}, {"resourceVersion": 2}, {"resourceVersion": 3}])
    );
    assert_eq!(ti["uses"], json!([{"id": BUILTIN_STORAGE_ID}]));
    assert_eq!(ti["usedBy"], json!([]));

    let stored = hub.get(&id).expect("stored");
    assert_eq!(stored.revisions.len(), 3);
    assert_eq!(stored.revisions[2].value, Some(json!({"key": "two"})));
    assert_eq!(stored.uses, [BUILTIN_STORAGE_ID]);
    assert!(hub.rejected().is_empty(), "{:?}", hub.rejected());
}

#[tokio::test]
async fn updating_unknown_or_foreign_locked_type_instances_fails_with_hub_js_messages() {
    let hub = Hub::start().await;
    let id = create_sample(&hub, json!({})).await;
    let msg = error(
        &hub,
        UPDATE,
        json!({"in": [{"id": "id3", "typeInstance": {"value": 1}}]}),
    )
    .await;
    assert_eq!(
        msg,
        "failed to update TypeInstances: 1 error occurred:\n\t* Error: TypeInstances with IDs \"id3\" were not found"
    );
    hub.lock_directly(&id, "namespace/Foo");
    let msg = error(
        &hub,
        UPDATE,
        json!({"in": [{"id": id, "ownerID": "namespace/Bar", "typeInstance": {"value": 1}}]}),
    )
    .await;
    assert_eq!(
        msg,
        format!(
            "failed to update TypeInstances: 1 error occurred:\n\t* Error: TypeInstances with IDs \"{id}\" are locked by different owner"
        )
    );
    assert_eq!(hub.get(&id).expect("kept").revisions.len(), 1);
    data(
        &hub,
        UPDATE,
        json!({"in": [{"id": id, "ownerID": "namespace/Foo", "typeInstance": {"value": 1}}]}),
    )
    .await;
    assert_eq!(hub.get(&id).expect("kept").revisions.len(), 2);
}

#[tokio::test]
async fn a_type_instance_locked_by_a_is_deleted_only_by_a() {
    let hub = Hub::start().await;
    let id = create_sample(&hub, json!({"a": 1})).await;
    let d = data(&hub, LOCK, json!({"in": {"ids": [id], "ownerID": "A"}})).await;
    assert_eq!(d["lockTypeInstances"], json!([id]));
    assert_eq!(hub.get(&id).expect("kept").locked_by.as_deref(), Some("A"));

    let (status, body) = post(&hub, DELETE, json!({"id": id})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        Json::Null,
        "a failed mutation root field nulls data"
    );
    assert_eq!(
        body["errors"][0]["message"],
        json!(format!(
            "failed to delete TypeInstance with ID \"{id}\": TypeInstance is locked by different owner"
        ))
    );
    assert_eq!(body["errors"][0]["path"], json!(["deleteTypeInstance"]));
    let msg = error(&hub, DELETE, json!({"id": id, "owner": "B"})).await;
    assert!(
        msg.ends_with("TypeInstance is locked by different owner"),
        "{msg}"
    );
    assert!(hub.get(&id).is_some());

    let d = data(&hub, DELETE, json!({"id": id, "owner": "A"})).await;
    assert_eq!(d["deleteTypeInstance"], json!(id));
    assert!(hub.get(&id).is_none());
    let d = data(&hub, GET_VALUE, json!({"id": id})).await;
    assert_eq!(d["typeInstance"], Json::Null);
    let msg = error(&hub, DELETE, json!({"id": id})).await;
    assert_eq!(
        msg,
        format!("failed to delete TypeInstance with ID \"{id}\": TypeInstance was not found")
    );
}

#[tokio::test]
async fn locking_is_all_or_nothing_with_hub_js_messages() {
    let hub = Hub::start().await;
    let a = create_sample(&hub, json!({})).await;
    let b = create_sample(&hub, json!({})).await;
    data(&hub, LOCK, json!({"in": {"ids": [a], "ownerID": "A"}})).await;
    // Locking again by the same owner is fine.
    data(&hub, LOCK, json!({"in": {"ids": [a], "ownerID": "A"}})).await;

    let msg = error(
        &hub,
        LOCK,
        json!({"in": {"ids": [b, "nope"], "ownerID": "B"}}),
    )
    .await;
    assert_eq!(
        msg,
        "failed to lock TypeInstances: 1 error occurred: TypeInstances with IDs \"nope\" were not found"
    );
    let msg = error(
        &hub,
        LOCK,
        json!({"in": {"ids": [a, b, "nope"], "ownerID": "B"}}),
    )
    .await;
    assert_eq!(
        msg,
        format!(
            "failed to lock TypeInstances: 2 errors occurred: [TypeInstances with IDs \"nope\" were not found, TypeInstances with IDs \"{a}\" are locked by different owner]"
        )
    );
    assert_eq!(
        hub.get(&b).expect("b").locked_by,
        None,
        "nothing was locked"
    );

    let msg = error(&hub, UNLOCK, json!({"in": {"ids": [a], "ownerID": "B"}})).await;
    assert_eq!(
        msg,
        format!(
            "failed to unlock TypeInstances: 1 error occurred: TypeInstances with IDs \"{a}\" are locked by different owner"
        )
    );
    let d = data(&hub, UNLOCK, json!({"in": {"ids": [a, b], "ownerID": "A"}})).await;
    assert_eq!(d["unlockTypeInstances"], json!([a, b]));
    assert_eq!(hub.get(&a).expect("a").locked_by, None);
}

#[tokio::test]
async fn a_type_instance_in_use_cannot_be_deleted() {
    let hub = Hub::start().await;
    let d = data(
        &hub,
        r#"mutation { createTypeInstances(in: {
            typeInstances: [
              { alias: "child", typeRef: { path: "cap.type.simple", revision: "0.1.0" }, value: { name: "Luke" } }
              { alias: "parent", typeRef: { path: "cap.type.simple", revision: "0.1.0" }, value: { name: "Vader" } }
            ]
            usesRelations: [{ from: "parent", to: "child" }]
        }) { id alias } }"#,
        json!({}),
    )
    .await;
    let created = d["createTypeInstances"].as_array().expect("list");
    assert_eq!(created[0]["alias"], "child");
    assert_eq!(created[1]["alias"], "parent");
    let child = created[0]["id"].as_str().expect("id").to_owned();
    let parent = created[1]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        hub.get(&parent).expect("parent").uses,
        [BUILTIN_STORAGE_ID, &child]
    );

    let d = data(
        &hub,
        "query($id: ID!) { typeInstance(id: $id) { usedBy { id } uses { id } } }",
        json!({"id": child}),
    )
    .await;
    assert_eq!(
        d["typeInstance"],
        json!({"usedBy": [{"id": parent}], "uses": [{"id": BUILTIN_STORAGE_ID}]})
    );

    let msg = error(&hub, DELETE, json!({"id": child})).await;
    assert_eq!(
        msg,
        format!(
            "failed to delete TypeInstance with ID \"{child}\": TypeInstance is used by other TypeInstances, you must first remove {parent}"
        )
    );
    // Every TypeInstance in the built-in storage USES it.
    let msg = error(&hub, DELETE, json!({"id": BUILTIN_STORAGE_ID})).await;
    assert!(
        msg.contains(&format!("you must first remove {child}\", \"{parent}")),
        "{msg}"
    );
    data(&hub, DELETE, json!({"id": parent})).await;
    data(&hub, DELETE, json!({"id": child})).await;
}

#[tokio::test]
async fn creating_in_an_unknown_backend_or_with_bad_input_stores_nothing() {
    let hub = Hub::start().await;
    let input = json!({"typeRef": {"path": "cap.type.sample", "revision": "0.1.0"}, "value": 1, "backend": {"id": "nope"}});
    let (status, body) = post(&hub, CREATE, json!({ "in": input })).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], Json::Null);
    assert_eq!(
        body["errors"][0]["message"],
        "failed to create TypeInstance: failed to create the TypeInstances: 1 error occurred:\n\t* Error: TypeInstances for storage backends with IDs \"nope\" were not found"
    );

    let builtin_ctx = json!({"in": {"typeRef": {"path": "cap.type.sample", "revision": "0.1.0"}, "backend": {"id": BUILTIN_STORAGE_ID, "context": {"a": 1}}}});
    assert_eq!(
        error(&hub, CREATE, builtin_ctx).await,
        format!(
            "failed to create TypeInstance: Validation failed: Built-in storage backend with ID {BUILTIN_STORAGE_ID} does not accept context"
        )
    );

    let many = "mutation($in: CreateTypeInstancesInput!) { createTypeInstances(in: $in) { id } }";
    let ti = json!({"alias": "same", "typeRef": {"path": "cap.type.sample", "revision": "0.1.0"}});
    let dup = json!({"in": {"typeInstances": [ti, ti], "usesRelations": []}});
    assert_eq!(
        error(&hub, many, dup).await,
        "Validation failed: Duplicated TypeInstance aliases. Please ensure that each TypeInstance alias is unique."
    );
    let bad_relation =
        json!({"in": {"typeInstances": [ti], "usesRelations": [{"from": "same", "to": "ghost"}]}});
    assert_eq!(
        error(&hub, many, bad_relation).await,
        "failed to create the TypeInstances: 1 error occurred:\n\t* Error: Failed to create some relations. Please verify, if you use proper aliases or IDs in relations definition."
    );

    assert_eq!(hub.type_instances().len(), 1, "only the built-in storage");
}

// ---- delegation to a storage backend ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_type_instance_keeps_its_value_in_the_backend() {
    let backend = MemoryBackend::start().await;
    let addr = backend.addr.clone();
    let hub = Hub::start().await;
    let storage = register_storage(&hub, &addr).await;
    let id = create_external(&hub, &storage, json!({"password": "one"})).await;

    let stored = hub.get(&id).expect("stored");
    assert_eq!(stored.backend_id, storage);
    assert!(!stored.backend_abstract);
    assert_eq!(stored.uses, [storage.as_str()]);
    assert_eq!(stored.revisions[0].value, None, "the Hub keeps no copy");

    let d = data(&hub, GET_VALUE, json!({"id": id})).await;
    assert_eq!(
        d["typeInstance"]["latestResourceVersion"],
        json!({"resourceVersion": 1, "spec": {"value": {"password": "one"}, "backend": {"context": null}}})
    );
    let direct = client(&addr).await;
    let raw = direct.get(&id, 1, None).await.expect("GetValue");
    let value: Json = serde_json::from_slice(&raw.expect("a value")).expect("JSON");
    assert_eq!(value, json!({"password": "one"}));

    // A new value goes to the backend as revision 2; without a value the
    // Hub fetches the previous one and stores it as revision 3.
    data(
        &hub,
        UPDATE,
        json!({"in": [{"id": id, "typeInstance": {"value": {"password": "two"}}}]}),
    )
    .await;
    let d = data(
        &hub,
        UPDATE,
        json!({"in": [{"id": id, "typeInstance": {"attributes": []}}]}),
    )
    .await;
    assert_eq!(
        d["updateTypeInstances"][0]["latestResourceVersion"],
        json!({"resourceVersion": 3, "spec": {"value": {"password": "two"}}})
    );
    for (rev, want) in [(2, "two"), (3, "two")] {
        let raw = direct.get(&id, rev, None).await.expect("GetValue");
        let value: Json = serde_json::from_slice(&raw.expect("a value")).expect("JSON");
        assert_eq!(value, json!({"password": want}), "revision {rev}");
    }
    assert_eq!(
        d["updateTypeInstances"][0]["id"],
        json!(id),
        "the updated TypeInstance is returned"
    );
    assert!(hub.rejected().is_empty(), "{:?}", hub.rejected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_external_type_instance_calls_on_delete_and_frees_its_storage() {
    let backend = MemoryBackend::start().await;
    let addr = backend.addr.clone();
    let hub = Hub::start().await;
    let storage = register_storage(&hub, &addr).await;
    let id = create_external(&hub, &storage, json!({"k": "v"})).await;

    let msg = error(&hub, DELETE, json!({"id": storage})).await;
    assert_eq!(
        msg,
        format!(
            "failed to delete TypeInstance with ID \"{storage}\": TypeInstance is used by other TypeInstances, you must first remove {id}"
        )
    );

    data(&hub, DELETE, json!({"id": id})).await;
    assert!(hub.get(&id).is_none());
    let err = client(&addr)
        .await
        .get(&id, 1, None)
        .await
        .expect_err("deleted at the backend");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    data(&hub, DELETE, json!({"id": storage})).await;
    assert_eq!(hub.type_instances().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_unlock_reach_the_backend() {
    let backend = MemoryBackend::start().await;
    let addr = backend.addr.clone();
    let hub = Hub::start().await;
    let storage = register_storage(&hub, &addr).await;
    let id = create_external(&hub, &storage, json!({"k": "v"})).await;
    let direct = client(&addr).await;

    data(
        &hub,
        LOCK,
        json!({"in": {"ids": [id], "ownerID": "ns/owner"}}),
    )
    .await;
    assert_eq!(
        hub.get(&id).expect("kept").locked_by.as_deref(),
        Some("ns/owner")
    );
    assert_eq!(
        direct
            .locked_by(&id, None)
            .await
            .expect("GetLockedBy")
            .as_deref(),
        Some("ns/owner")
    );
    // The Hub refuses a delete without the owner before any backend call.
    let msg = error(&hub, DELETE, json!({"id": id})).await;
    assert!(
        msg.ends_with("TypeInstance is locked by different owner"),
        "{msg}"
    );

    data(
        &hub,
        UNLOCK,
        json!({"in": {"ids": [id], "ownerID": "ns/owner"}}),
    )
    .await;
    assert_eq!(hub.get(&id).expect("kept").locked_by, None);
    assert_eq!(
        direct.locked_by(&id, None).await.expect("GetLockedBy"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_error_leaves_the_hub_unchanged() {
    let backend = MemoryBackend::start().await;
    let addr = backend.addr.clone();
    let hub = Hub::start().await;
    let storage = register_storage(&hub, &addr).await;
    let id = create_external(&hub, &storage, json!({"k": "v"})).await;
    // The backend forgets it behind the Hub's back.
    client(&addr)
        .await
        .delete(&id, None, None)
        .await
        .expect("OnDelete");

    let msg = error(&hub, LOCK, json!({"in": {"ids": [id], "ownerID": "A"}})).await;
    assert!(
        msg.starts_with(
            "failed to lock TypeInstances: /storage_backend.ValueAndContextStorageBackend/OnLock NOT_FOUND: "
        ),
        "{msg}"
    );
    assert_eq!(hub.get(&id).expect("kept").locked_by, None);

    let msg = error(&hub, DELETE, json!({"id": id})).await;
    assert!(
        msg.starts_with(&format!(
            "failed to delete TypeInstance with ID \"{id}\": /storage_backend.ValueAndContextStorageBackend/OnDelete NOT_FOUND: "
        )),
        "{msg}"
    );
    assert!(hub.get(&id).is_some(), "kept when OnDelete fails");

    // A value the backend cannot give is an error on that field only.
    let (status, body) = post(&hub, GET_VALUE, json!({"id": id})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["path"],
        json!(["typeInstance", "latestResourceVersion", "spec", "value"])
    );
    assert_eq!(
        body["data"]["typeInstance"]["latestResourceVersion"],
        Json::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_in_a_backend_is_rolled_back() {
    let backend = MemoryBackend::start().await;
    let addr = backend.addr.clone();
    let hub = Hub::start().await;
    let storage = register_storage(&hub, &addr).await;
    let before = hub.type_instances().len();

    // The registration has no contextSchema: a context is refused before
    // OnCreate, and the Hub's rollback meets the same refusal.
    let many = "mutation($in: CreateTypeInstancesInput!) { createTypeInstances(in: $in) { id } }";
    let ok = json!({"alias": "ok", "typeRef": {"path": "cap.type.secret", "revision": "0.1.0"}, "value": 1, "backend": {"id": storage}});
    let bad = json!({"alias": "bad", "typeRef": {"path": "cap.type.secret", "revision": "0.1.0"}, "value": 2, "backend": {"id": storage, "context": {"k": "v"}}});
    let msg = error(
        &hub,
        many,
        json!({"in": {"typeInstances": [ok, bad], "usesRelations": []}}),
    )
    .await;
    assert_eq!(
        msg,
        format!(
            "failed to create the TypeInstances: 2 error occurred:\n\t* Error: External backend \"{storage}\": input context not allowed\n\t* Error: rollback externally stored values: External backend \"{storage}\": input context not allowed"
        )
    );
    assert_eq!(hub.type_instances().len(), before);

    // An unreachable backend fails the create and stores nothing.
    let dead = register_storage(&hub, "127.0.0.1:1").await;
    let input = json!({"typeRef": {"path": "cap.type.secret", "revision": "0.1.0"}, "value": 1, "backend": {"id": dead}});
    let msg = error(&hub, CREATE, json!({ "in": input })).await;
    assert!(
        msg.contains(
            "ClientError: /storage_backend.ValueAndContextStorageBackend/OnCreate UNAVAILABLE"
        ),
        "{msg}"
    );
    assert_eq!(hub.type_instances().len(), before + 1);
}
