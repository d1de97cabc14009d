//! The cases. Each name reads as the behaviour it checks; each case uses its
//! own TypeInstance ids and the runner cleans them up afterwards.

use std::{future::Future, sync::Arc};

use futures::future::{BoxFuture, join_all};
use serde_json::{Value as Json, json};
use tonic::{Code, Status};

use crate::{Outcome, Target};

/// Which kind of backend a case applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    /// Value and context backends.
    Both,
    /// Only backends that store the value the Hub sends.
    ValueOnly,
}

impl Applies {
    pub fn to(self, accept_value: bool) -> bool {
        self == Applies::Both || accept_value
    }
}

pub struct Case {
    pub name: &'static str,
    pub applies: Applies,
    pub run: fn(Arc<Target>) -> BoxFuture<'static, Outcome>,
}

/// Why a case did not pass.
struct Stop(Outcome);

impl From<String> for Stop {
    fn from(s: String) -> Self {
        Stop(Outcome::Fail(s))
    }
}

type Check = Result<(), Stop>;

fn skip(why: &str) -> Check {
    Err(Stop(Outcome::Skip(why.to_owned())))
}

async fn wrap<F, Fut>(t: Arc<Target>, name: &'static str, f: F) -> Outcome
where
    F: FnOnce(Arc<Target>, String) -> Fut,
    Fut: Future<Output = Check>,
{
    let id = t.id(&name.replace('_', "-"));
    let result = f(Arc::clone(&t), id.clone()).await;
    for suffix in ["", "-b"] {
        t.cleanup(&format!("{id}{suffix}")).await;
    }
    match result {
        Ok(()) => Outcome::Pass,
        Err(Stop(o)) => o,
    }
}

macro_rules! cases {
    ($($applies:ident $name:ident,)*) => {
        /// Every case, in the order they run.
        pub fn all_cases() -> Vec<Case> {
            vec![$(Case {
                name: stringify!($name),
                applies: Applies::$applies,
                run: |t| Box::pin(wrap(t, stringify!($name), $name)),
            }),*]
        }
    };
}

cases! {
    Both lifecycle_create_update_read_each_revision_delete,
    ValueOnly empty_value_round_trips,
    ValueOnly non_utf8_value_round_trips_byte_exact,
    ValueOnly unquoted_string_value_round_trips,
    ValueOnly value_at_size_limit_round_trips,
    ValueOnly value_over_size_limit_is_rejected_and_nothing_is_stored,
    Both ids_with_every_allowed_character_work,
    Both get_missing_type_instance_is_not_found,
    Both get_missing_revision_is_not_found,
    Both update_missing_type_instance_is_not_found,
    Both delete_missing_type_instance_is_not_found,
    Both delete_revision_of_missing_revision_is_not_found,
    Both lock_calls_on_missing_type_instance_are_not_found,
    ValueOnly retried_create_with_same_bytes_succeeds,
    ValueOnly create_of_existing_type_instance_with_other_bytes_already_exists,
    ValueOnly retried_update_with_same_bytes_succeeds,
    ValueOnly update_to_existing_revision_with_other_bytes_already_exists,
    Both update_to_revision_not_above_latest_fails_precondition,
    ValueOnly update_succeeds_again_after_its_revision_was_rolled_back,
    Both delete_revision_keeps_other_revisions,
    Both deleting_last_revision_removes_type_instance,
    Both delete_removes_every_revision_and_the_lock,
    Both lock_is_reported_by_locked_by_until_unlock,
    Both relock_by_same_owner_succeeds,
    Both lock_by_other_owner_fails_naming_the_holder,
    Both lock_with_empty_owner_is_invalid,
    Both unlock_is_idempotent,
    Both update_while_locked_by_other_owner_fails,
    Both update_while_locked_by_holder_succeeds,
    Both delete_while_locked_by_other_owner_fails,
    Both delete_revision_while_locked_by_other_owner_fails,
    Both reads_are_not_blocked_by_a_lock,
    Both invalid_ids_are_rejected,
    Both revision_zero_is_invalid,
    Both context_that_is_not_an_object_is_invalid_and_nothing_is_stored,
    Both context_against_the_schema_is_invalid,
    Both missing_required_context_is_invalid,
    ValueOnly concurrent_updates_to_same_revision_have_exactly_one_winner,
    ValueOnly concurrent_creates_have_exactly_one_winner,
    Both concurrent_locks_by_different_owners_have_exactly_one_winner,
}

// ---- assertion helpers ----

fn ok<T>(r: Result<T, Status>, what: &str) -> Result<T, Stop> {
    r.map_err(|s| {
        Stop::from(format!(
            "{what}: expected OK, got {:?}: {}",
            s.code(),
            s.message()
        ))
    })
}

fn expect<T>(r: Result<T, Status>, code: Code, what: &str) -> Result<Status, Stop> {
    match r {
        Ok(_) => Err(format!("{what}: expected {code:?}, got OK").into()),
        Err(s) if s.code() == code => Ok(s),
        Err(s) => Err(format!(
            "{what}: expected {code:?}, got {:?}: {}",
            s.code(),
            s.message()
        )
        .into()),
    }
}

/// For value backends the bytes must match exactly; for context backends
/// the value comes from elsewhere and must only be JSON.
fn same(t: &Target, got: &[u8], want: &[u8], what: &str) -> Check {
    if t.accept_value() {
        if got != want {
            return Err(format!(
                "{what}: stored bytes differ (got {} bytes, want {} bytes)",
                got.len(),
                want.len()
            )
            .into());
        }
    } else if serde_json::from_slice::<Json>(got).is_err() {
        return Err(format!("{what}: value is not JSON").into());
    }
    Ok(())
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(msg().into()) }
}

/// Deterministic pseudo-random bytes (no value ever repeats a pattern a
/// backend could special-case).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---- lifecycle and values ----

async fn lifecycle_create_update_read_each_revision_delete(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, br#"{"v":1}"#).await, "create")?;
    let v1 = ok(t.get(&id, 1).await, "get revision 1")?;
    same(&t, &v1, br#"{"v":1}"#, "revision 1")?;
    ok(
        t.update(&id, 2, br#"{"v":2}"#, None).await,
        "update to revision 2",
    )?;
    let again = ok(t.get(&id, 1).await, "get revision 1 after update")?;
    same(&t, &again, br#"{"v":1}"#, "revision 1 after update")?;
    let v2 = ok(t.get(&id, 2).await, "get revision 2")?;
    same(&t, &v2, br#"{"v":2}"#, "revision 2")?;
    ok(t.delete(&id, None).await, "delete")?;
    expect(
        t.get(&id, 1).await,
        Code::NotFound,
        "get revision 1 after delete",
    )?;
    expect(
        t.get(&id, 2).await,
        Code::NotFound,
        "get revision 2 after delete",
    )?;
    Ok(())
}

async fn round_trip(t: &Target, id: &str, value: &[u8]) -> Check {
    ok(t.create(id, value).await, "create")?;
    let got = ok(t.get(id, 1).await, "get")?;
    same(t, &got, value, "revision 1")?;
    let next = [value, b"+"].concat();
    ok(t.update(id, 2, &next, None).await, "update")?;
    let got = ok(t.get(id, 2).await, "get revision 2")?;
    same(t, &got, &next, "revision 2")
}

async fn empty_value_round_trips(t: Arc<Target>, id: String) -> Check {
    round_trip(&t, &id, b"").await
}

async fn non_utf8_value_round_trips_byte_exact(t: Arc<Target>, id: String) -> Check {
    let mut v: Vec<u8> = (0..=255).collect();
    v.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3, 0x28]);
    round_trip(&t, &id, &v).await
}

async fn unquoted_string_value_round_trips(t: Arc<Target>, id: String) -> Check {
    // The Hub sends the JSON string "foo" as the three bytes foo.
    round_trip(&t, &id, b"foo").await
}

fn size_limit(t: &Target) -> usize {
    usize::try_from(t.describe().max_value_bytes).unwrap_or(usize::MAX)
}

async fn value_at_size_limit_round_trips(t: Arc<Target>, id: String) -> Check {
    let len = size_limit(&t).min(1 << 20);
    let v = noise(len, 7);
    ok(t.create(&id, &v).await, "create")?;
    let got = ok(t.get(&id, 1).await, "get")?;
    same(&t, &got, &v, "revision 1")
}

async fn value_over_size_limit_is_rejected_and_nothing_is_stored(
    t: Arc<Target>,
    id: String,
) -> Check {
    let limit = size_limit(&t);
    if limit >= 16 << 20 {
        return skip("the backend's value limit is above 16 MiB");
    }
    let v = noise(limit + 1, 8);
    let s = expect(
        t.create(&id, &v).await,
        Code::InvalidArgument,
        "create over the limit",
    )?;
    check(s.message().contains(&limit.to_string()), || {
        format!(
            "the error should state the limit of {limit} bytes: {}",
            s.message()
        )
    })?;
    expect(
        t.get(&id, 1).await,
        Code::NotFound,
        "get after rejected create",
    )?;
    ok(t.create(&id, b"small").await, "create within the limit")?;
    expect(
        t.update(&id, 2, &v, None).await,
        Code::InvalidArgument,
        "update over the limit",
    )?;
    expect(
        t.get(&id, 2).await,
        Code::NotFound,
        "get after rejected update",
    )?;
    Ok(())
}

async fn ids_with_every_allowed_character_work(t: Arc<Target>, id: String) -> Check {
    let short = format!("{id}-b");
    let mixed = format!("{}A.b_C-9", &short[..short.len().min(100)]);
    let long = format!("{short}{}", "x".repeat(128 - short.len().min(128)));
    for (name, candidate) in [("mixed", &mixed), ("128 characters", &long)] {
        ok(
            t.create(candidate, b"\"v\"").await,
            &format!("create with {name} id"),
        )?;
        let got = ok(t.get(candidate, 1).await, &format!("get with {name} id"))?;
        same(&t, &got, b"\"v\"", name)?;
        ok(
            t.lock(candidate, "owner").await,
            &format!("lock with {name} id"),
        )?;
        ok(
            t.delete(candidate, Some("owner")).await,
            &format!("delete with {name} id"),
        )?;
    }
    Ok(())
}

// ---- NOT_FOUND ----

/// Capact's own clients match this text (spec §2).
fn capact_wording(s: &Status, id: &str, rev: u32) -> Check {
    let want = format!("TypeInstance \"{id}\" in revision {rev} was not found");
    if s.message() == want {
        Ok(())
    } else {
        Err(format!("NOT_FOUND message {:?}, want {want:?}", s.message()).into())
    }
}

async fn get_missing_type_instance_is_not_found(t: Arc<Target>, id: String) -> Check {
    let s = expect(t.get(&id, 1).await, Code::NotFound, "get")?;
    capact_wording(&s, &id, 1)
}

async fn get_missing_revision_is_not_found(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    let s = expect(t.get(&id, 2).await, Code::NotFound, "get revision 2")?;
    capact_wording(&s, &id, 2)?;
    expect(t.get(&id, 5000).await, Code::NotFound, "get revision 5000").map(drop)
}

async fn update_missing_type_instance_is_not_found(t: Arc<Target>, id: String) -> Check {
    expect(t.update(&id, 2, b"2", None).await, Code::NotFound, "update")?;
    expect(
        t.get(&id, 2).await,
        Code::NotFound,
        "get after failed update",
    )
    .map(drop)
}

async fn delete_missing_type_instance_is_not_found(t: Arc<Target>, id: String) -> Check {
    expect(t.delete(&id, None).await, Code::NotFound, "delete").map(drop)
}

async fn delete_revision_of_missing_revision_is_not_found(t: Arc<Target>, id: String) -> Check {
    expect(
        t.delete_revision(&id, 1, None).await,
        Code::NotFound,
        "delete revision of missing type instance",
    )?;
    ok(t.create(&id, b"1").await, "create")?;
    expect(
        t.delete_revision(&id, 2, None).await,
        Code::NotFound,
        "delete missing revision",
    )?;
    ok(t.get(&id, 1).await, "revision 1 is still there").map(drop)
}

async fn lock_calls_on_missing_type_instance_are_not_found(t: Arc<Target>, id: String) -> Check {
    expect(t.lock(&id, "owner").await, Code::NotFound, "lock")?;
    expect(t.unlock(&id).await, Code::NotFound, "unlock")?;
    expect(t.locked_by(&id).await, Code::NotFound, "locked-by").map(drop)
}

// ---- ALREADY_EXISTS, retries, ordering ----

async fn retried_create_with_same_bytes_succeeds(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"same").await, "create")?;
    ok(t.create(&id, b"same").await, "retried create")?;
    let got = ok(t.get(&id, 1).await, "get")?;
    same(&t, &got, b"same", "revision 1")
}

async fn create_of_existing_type_instance_with_other_bytes_already_exists(
    t: Arc<Target>,
    id: String,
) -> Check {
    ok(t.create(&id, b"first").await, "create")?;
    expect(
        t.create(&id, b"second").await,
        Code::AlreadyExists,
        "second create",
    )?;
    let got = ok(t.get(&id, 1).await, "get")?;
    same(&t, &got, b"first", "revision 1 keeps the first bytes")
}

async fn retried_update_with_same_bytes_succeeds(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.update(&id, 2, b"2", None).await, "update")?;
    ok(t.update(&id, 2, b"2", None).await, "retried update")?;
    let got = ok(t.get(&id, 2).await, "get")?;
    same(&t, &got, b"2", "revision 2")
}

async fn update_to_existing_revision_with_other_bytes_already_exists(
    t: Arc<Target>,
    id: String,
) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.update(&id, 2, b"2", None).await, "update")?;
    expect(
        t.update(&id, 2, b"other", None).await,
        Code::AlreadyExists,
        "update of revision 2 again",
    )?;
    expect(
        t.update(&id, 1, b"other", None).await,
        Code::AlreadyExists,
        "update of revision 1",
    )?;
    let got = ok(t.get(&id, 2).await, "get")?;
    same(&t, &got, b"2", "revision 2 keeps the first bytes")
}

async fn update_to_revision_not_above_latest_fails_precondition(
    t: Arc<Target>,
    id: String,
) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.update(&id, 3, b"3", None).await, "update to revision 3")?;
    expect(
        t.update(&id, 2, b"2", None).await,
        Code::FailedPrecondition,
        "update to revision 2 below 3",
    )?;
    expect(
        t.get(&id, 2).await,
        Code::NotFound,
        "revision 2 was not stored",
    )
    .map(drop)
}

async fn update_succeeds_again_after_its_revision_was_rolled_back(
    t: Arc<Target>,
    id: String,
) -> Check {
    // The Hub deletes a revision when its own step fails, then may retry.
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.update(&id, 2, b"first try", None).await, "update")?;
    ok(
        t.delete_revision(&id, 2, None).await,
        "rollback of revision 2",
    )?;
    ok(
        t.update(&id, 2, b"second try", None).await,
        "update to revision 2 again",
    )?;
    let got = ok(t.get(&id, 2).await, "get")?;
    same(&t, &got, b"second try", "revision 2")
}

// ---- deletes ----

async fn delete_revision_keeps_other_revisions(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.update(&id, 2, b"2", None).await, "update")?;
    ok(t.delete_revision(&id, 1, None).await, "delete revision 1")?;
    expect(t.get(&id, 1).await, Code::NotFound, "get deleted revision")?;
    let got = ok(t.get(&id, 2).await, "get revision 2")?;
    same(&t, &got, b"2", "revision 2")
}

async fn deleting_last_revision_removes_type_instance(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.lock(&id, "owner").await, "lock")?;
    ok(
        t.delete_revision(&id, 1, Some("owner")).await,
        "delete the only revision",
    )?;
    expect(t.get(&id, 1).await, Code::NotFound, "get")?;
    expect(
        t.locked_by(&id).await,
        Code::NotFound,
        "locked-by (the lock went with it)",
    )?;
    ok(t.create(&id, b"again").await, "create again")?;
    let owner = ok(t.locked_by(&id).await, "locked-by after re-create")?;
    check(owner.is_none(), || {
        "re-created type instance is still locked".into()
    })?;
    let got = ok(t.get(&id, 1).await, "get after re-create")?;
    same(&t, &got, b"again", "re-created revision 1")
}

async fn delete_removes_every_revision_and_the_lock(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.update(&id, 2, b"2", None).await, "update")?;
    ok(t.lock(&id, "owner").await, "lock")?;
    ok(t.delete(&id, Some("owner")).await, "delete")?;
    for rev in [1, 2] {
        expect(
            t.get(&id, rev).await,
            Code::NotFound,
            &format!("get revision {rev}"),
        )?;
    }
    expect(t.locked_by(&id).await, Code::NotFound, "locked-by")?;
    ok(t.create(&id, b"new").await, "create again")?;
    let owner = ok(t.locked_by(&id).await, "locked-by after re-create")?;
    check(owner.is_none(), || {
        "re-created type instance is still locked".into()
    })?;
    expect(
        t.get(&id, 2).await,
        Code::NotFound,
        "old revision 2 after re-create",
    )
    .map(drop)
}

// ---- locks ----

async fn lock_is_reported_by_locked_by_until_unlock(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    let before = ok(t.locked_by(&id).await, "locked-by before lock")?;
    check(before.is_none(), || {
        "locked_by is set before any lock".into()
    })?;
    ok(t.lock(&id, "owner-a").await, "lock")?;
    let during = ok(t.locked_by(&id).await, "locked-by while locked")?;
    check(during.as_deref() == Some("owner-a"), || {
        format!("locked_by is {during:?}, want owner-a")
    })?;
    ok(t.unlock(&id).await, "unlock")?;
    let after = ok(t.locked_by(&id).await, "locked-by after unlock")?;
    check(after.is_none(), || {
        format!("locked_by is {after:?} after unlock")
    })
}

async fn relock_by_same_owner_succeeds(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.lock(&id, "owner-a").await, "lock")?;
    ok(t.lock(&id, "owner-a").await, "lock again by the same owner")
}

async fn lock_by_other_owner_fails_naming_the_holder(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.lock(&id, "owner-a").await, "lock")?;
    let s = expect(
        t.lock(&id, "owner-b").await,
        Code::FailedPrecondition,
        "lock by another owner",
    )?;
    check(s.message().contains("owner-a"), || {
        format!("message should name the holder: {}", s.message())
    })?;
    let holder = ok(t.locked_by(&id).await, "locked-by")?;
    check(holder.as_deref() == Some("owner-a"), || {
        format!("holder changed to {holder:?}")
    })
}

async fn lock_with_empty_owner_is_invalid(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    expect(
        t.lock(&id, "").await,
        Code::InvalidArgument,
        "lock with empty owner",
    )?;
    let holder = ok(t.locked_by(&id).await, "locked-by")?;
    check(holder.is_none(), || "an empty owner took the lock".into())
}

async fn unlock_is_idempotent(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    ok(t.unlock(&id).await, "unlock of an unlocked type instance")?;
    ok(t.lock(&id, "owner-a").await, "lock")?;
    ok(t.unlock(&id).await, "unlock")?;
    ok(t.unlock(&id).await, "unlock again")
}

async fn locked_by_a(t: &Target, id: &str) -> Check {
    ok(t.create(id, b"1").await, "create")?;
    ok(t.lock(id, "owner-a").await, "lock")
}

async fn update_while_locked_by_other_owner_fails(t: Arc<Target>, id: String) -> Check {
    locked_by_a(&t, &id).await?;
    expect(
        t.update(&id, 2, b"2", Some("owner-b")).await,
        Code::FailedPrecondition,
        "update by another owner",
    )?;
    expect(
        t.update(&id, 2, b"2", None).await,
        Code::FailedPrecondition,
        "update without owner",
    )?;
    expect(
        t.get(&id, 2).await,
        Code::NotFound,
        "revision 2 was not stored",
    )
    .map(drop)
}

async fn update_while_locked_by_holder_succeeds(t: Arc<Target>, id: String) -> Check {
    locked_by_a(&t, &id).await?;
    ok(
        t.update(&id, 2, b"2", Some("owner-a")).await,
        "update by the holder",
    )?;
    let got = ok(t.get(&id, 2).await, "get")?;
    same(&t, &got, b"2", "revision 2")?;
    let holder = ok(t.locked_by(&id).await, "locked-by")?;
    check(holder.as_deref() == Some("owner-a"), || {
        format!("update changed the lock to {holder:?}")
    })
}

async fn delete_while_locked_by_other_owner_fails(t: Arc<Target>, id: String) -> Check {
    locked_by_a(&t, &id).await?;
    expect(
        t.delete(&id, Some("owner-b")).await,
        Code::FailedPrecondition,
        "delete by another owner",
    )?;
    expect(
        t.delete(&id, None).await,
        Code::FailedPrecondition,
        "delete without owner",
    )?;
    ok(t.get(&id, 1).await, "revision 1 is still there")?;
    ok(t.delete(&id, Some("owner-a")).await, "delete by the holder")
}

async fn delete_revision_while_locked_by_other_owner_fails(t: Arc<Target>, id: String) -> Check {
    locked_by_a(&t, &id).await?;
    ok(
        t.update(&id, 2, b"2", Some("owner-a")).await,
        "update by the holder",
    )?;
    expect(
        t.delete_revision(&id, 1, Some("owner-b")).await,
        Code::FailedPrecondition,
        "delete revision by another owner",
    )?;
    expect(
        t.delete_revision(&id, 1, None).await,
        Code::FailedPrecondition,
        "delete revision without owner",
    )?;
    ok(t.get(&id, 1).await, "revision 1 is still there")?;
    ok(
        t.delete_revision(&id, 1, Some("owner-a")).await,
        "delete revision by the holder",
    )
}

async fn reads_are_not_blocked_by_a_lock(t: Arc<Target>, id: String) -> Check {
    locked_by_a(&t, &id).await?;
    let got = ok(t.get(&id, 1).await, "get while locked")?;
    same(&t, &got, b"1", "revision 1")
}

// ---- invalid input ----

fn invalid_ids() -> Vec<(&'static str, String)> {
    vec![
        ("../x", "../x".into()),
        ("a/b", "a/b".into()),
        ("empty", String::new()),
        ("129 characters", "x".repeat(129)),
        ("NUL byte", "a\0b".into()),
        (".", ".".into()),
        ("..", "..".into()),
        ("space", "a b".into()),
    ]
}

async fn invalid_ids_are_rejected(t: Arc<Target>, _id: String) -> Check {
    for (name, bad) in invalid_ids() {
        expect(
            t.create(&bad, b"1").await,
            Code::InvalidArgument,
            &format!("create with id {name}"),
        )?;
        expect(
            t.get(&bad, 1).await,
            Code::InvalidArgument,
            &format!("get with id {name}"),
        )?;
        expect(
            t.update(&bad, 2, b"2", None).await,
            Code::InvalidArgument,
            &format!("update with id {name}"),
        )?;
        expect(
            t.lock(&bad, "o").await,
            Code::InvalidArgument,
            &format!("lock with id {name}"),
        )?;
        expect(
            t.delete(&bad, None).await,
            Code::InvalidArgument,
            &format!("delete with id {name}"),
        )?;
    }
    Ok(())
}

async fn revision_zero_is_invalid(t: Arc<Target>, id: String) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    expect(t.get(&id, 0).await, Code::InvalidArgument, "get revision 0")?;
    expect(
        t.update(&id, 0, b"0", None).await,
        Code::InvalidArgument,
        "update to revision 0",
    )?;
    expect(
        t.delete_revision(&id, 0, None).await,
        Code::InvalidArgument,
        "delete revision 0",
    )?;
    ok(t.get(&id, 1).await, "revision 1 is still there").map(drop)
}

async fn context_that_is_not_an_object_is_invalid_and_nothing_is_stored(
    t: Arc<Target>,
    id: String,
) -> Check {
    for raw in [&b"[1]"[..], b"\"text\"", b"42", b"true", b"{not json"] {
        let what = format!("create with context {}", String::from_utf8_lossy(raw));
        expect(
            t.create_with(&id, b"1", bytes::Bytes::copy_from_slice(raw))
                .await,
            Code::InvalidArgument,
            &what,
        )?;
        expect(
            t.get(&id, 1).await,
            Code::NotFound,
            "get after rejected create",
        )?;
    }
    ok(t.create(&id, b"1").await, "create with a valid context")?;
    expect(
        t.get_with(&id, 1, bytes::Bytes::from_static(b"[1]")).await,
        Code::InvalidArgument,
        "get with an array context",
    )
    .map(drop)
}

/// A context that breaks the backend's schema, derived from the schema and
/// the valid context, or `None` if the schema allows anything we can build.
fn invalid_context(schema: &Json, valid: Option<&Json>) -> Option<Json> {
    let mut base = valid.cloned().unwrap_or_else(|| json!({}));
    let obj = base.as_object_mut()?;
    if schema.get("additionalProperties") == Some(&Json::Bool(false)) {
        obj.insert("conformance-unexpected-field".into(), json!(1));
        return Some(base);
    }
    let props = schema.get("properties")?.as_object()?;
    for (name, prop) in props {
        let wrong = match prop.get("type").and_then(Json::as_str) {
            Some("string") => json!(12345),
            Some("integer" | "number" | "boolean" | "array") => json!({"not": "this type"}),
            Some("object") => json!("not an object"),
            _ => continue,
        };
        obj.insert(name.clone(), wrong);
        return Some(base);
    }
    None
}

async fn context_against_the_schema_is_invalid(t: Arc<Target>, id: String) -> Check {
    let Some(schema) = t.schema() else {
        // No schema: the backend takes no context, so any field is wrong.
        let bad = bytes::Bytes::from_static(br#"{"conformance-unexpected-field":1}"#);
        expect(
            t.create_with(&id, b"1", bad).await,
            Code::InvalidArgument,
            "create with a context",
        )?;
        return expect(
            t.get(&id, 1).await,
            Code::NotFound,
            "get after rejected create",
        )
        .map(drop);
    };
    let Some(bad) = invalid_context(&schema, t.valid_context().as_ref()) else {
        return skip("no schema-violating context can be derived from the backend's schema");
    };
    let s = expect(
        t.create_with(&id, b"1", bytes::Bytes::from(bad.to_string()))
            .await,
        Code::InvalidArgument,
        "create with a context against the schema",
    )?;
    check(s.message().contains("context"), || {
        format!(
            "the message should say the context is wrong: {}",
            s.message()
        )
    })?;
    expect(
        t.get(&id, 1).await,
        Code::NotFound,
        "get after rejected create",
    )
    .map(drop)
}

async fn missing_required_context_is_invalid(t: Arc<Target>, id: String) -> Check {
    if !t.describe().context_required {
        ok(
            t.create_with(&id, b"1", bytes::Bytes::new()).await,
            "create without context",
        )?;
        ok(
            t.get_with(&id, 1, bytes::Bytes::from_static(b"null")).await,
            "get with the null context the Hub sends",
        )?;
        return Ok(());
    }
    for raw in [&b""[..], b"null"] {
        expect(
            t.create_with(&id, b"1", bytes::Bytes::copy_from_slice(raw))
                .await,
            Code::InvalidArgument,
            "create without context",
        )?;
    }
    expect(
        t.get(&id, 1).await,
        Code::NotFound,
        "get after rejected create",
    )
    .map(drop)
}

// ---- concurrency ----

async fn concurrent_updates_to_same_revision_have_exactly_one_winner(
    t: Arc<Target>,
    id: String,
) -> Check {
    ok(t.create(&id, b"base").await, "create")?;
    let values: Vec<Vec<u8>> = (0..16u8)
        .map(|i| format!("writer-{i}").into_bytes())
        .collect();
    let results = join_all(values.iter().map(|v| t.update(&id, 2, v, None))).await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    check(winners.len() == 1, || {
        format!("{} of 16 concurrent updates succeeded", winners.len())
    })?;
    for r in &results {
        if let Err(s) = r {
            check(
                matches!(s.code(), Code::AlreadyExists | Code::Aborted),
                || format!("a losing update got {:?}: {}", s.code(), s.message()),
            )?;
        }
    }
    let got = ok(t.get(&id, 2).await, "get revision 2")?;
    same(
        &t,
        &got,
        &values[winners[0]],
        "revision 2 holds the winner's bytes",
    )?;
    let base = ok(t.get(&id, 1).await, "get revision 1")?;
    same(&t, &base, b"base", "revision 1 is intact")
}

async fn concurrent_creates_have_exactly_one_winner(t: Arc<Target>, id: String) -> Check {
    let values: Vec<Vec<u8>> = (0..8u8)
        .map(|i| format!("creator-{i}").into_bytes())
        .collect();
    let results = join_all(values.iter().map(|v| t.create(&id, v))).await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    check(winners.len() == 1, || {
        format!("{} of 8 concurrent creates succeeded", winners.len())
    })?;
    let got = ok(t.get(&id, 1).await, "get")?;
    same(
        &t,
        &got,
        &values[winners[0]],
        "revision 1 holds the winner's bytes",
    )
}

async fn concurrent_locks_by_different_owners_have_exactly_one_winner(
    t: Arc<Target>,
    id: String,
) -> Check {
    ok(t.create(&id, b"1").await, "create")?;
    let owners: Vec<String> = (0..8).map(|i| format!("owner-{i}")).collect();
    let results = join_all(owners.iter().map(|o| t.lock(&id, o))).await;
    let winners: Vec<&String> = owners
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(o, _)| o)
        .collect();
    check(winners.len() == 1, || {
        format!("{} of 8 concurrent lockers won", winners.len())
    })?;
    let holder = ok(t.locked_by(&id).await, "locked-by")?;
    check(holder.as_ref() == Some(winners[0]), || {
        format!("holder is {holder:?}, the winner was {}", winners[0])
    })
}
