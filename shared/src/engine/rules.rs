//! The protocol's answers (spec §3), as pure functions of the state a
//! backend has read and the request. The engine uses them for head-based
//! stores; sops-git and flux-helmrelease, which keep state their own way,
//! use the same functions so that every status code and message is decided
//! in one place.

use crate::{Error, Owner, TypeInstanceId};

/// NOT_FOUND for a TypeInstance, worded as Capact's clients match it.
pub fn not_found(id: &TypeInstanceId) -> Error {
    Error::not_found(format!("TypeInstance \"{id}\" was not found"))
}

/// NOT_FOUND for one revision, worded as Capact's clients match it.
pub fn revision_not_found(id: &TypeInstanceId, rev: u32) -> Error {
    Error::not_found(format!(
        "TypeInstance \"{id}\" in revision {rev} was not found"
    ))
}

pub fn already_exists(id: &TypeInstanceId) -> Error {
    Error::already_exists(format!("type instance {id} already exists"))
}

pub fn revision_exists(id: &TypeInstanceId, rev: u32) -> Error {
    Error::already_exists(format!(
        "revision {rev} of type instance {id} already exists"
    ))
}

pub fn not_above_latest(id: &TypeInstanceId, rev: u32, latest: u32) -> Error {
    Error::failed_precondition(format!(
        "revision {rev} of type instance {id} is not above the latest revision {latest}"
    ))
}

pub fn locked_by(id: &TypeInstanceId, holder: &str) -> Error {
    Error::failed_precondition(format!("type instance {id} is locked by {holder}"))
}

/// The admin service's force-unlock as a compare-and-set on the holder:
/// `Ok(())` when `expected` holds the lock, else FAILED_PRECONDITION saying
/// who does (or that nobody does) and that nothing changed.
pub fn force_unlock_step(
    id: &TypeInstanceId,
    holder: Option<&str>,
    expected: &Owner,
) -> Result<(), Error> {
    match holder {
        Some(h) if h == expected.as_str() => Ok(()),
        Some(h) => Err(Error::failed_precondition(format!(
            "type instance {id} is locked by {h}, not by {expected}: nothing changed"
        ))),
        None => Err(Error::failed_precondition(format!(
            "type instance {id} is not locked: nothing changed"
        ))),
    }
}

/// ABORTED: the store kept changing under us; the caller may retry.
pub fn contended(id: &TypeInstanceId) -> Error {
    Error::aborted(format!(
        "type instance {id} changed concurrently too often; retry"
    ))
}

/// ABORTED: another call's unfinished work on the TypeInstance is in the way.
pub fn busy(id: &TypeInstanceId) -> Error {
    Error::aborted(format!(
        "type instance {id} has a change in progress by another call; retry"
    ))
}

/// A state change guarded by the lock: allowed for no lock or the holder.
pub fn check_lock(
    id: &TypeInstanceId,
    holder: Option<&str>,
    owner: Option<&Owner>,
) -> Result<(), Error> {
    match holder {
        Some(h) if Some(h) != owner.map(Owner::as_str) => Err(locked_by(id, h)),
        _ => Ok(()),
    }
}

/// What OnLock does on a TypeInstance whose lock is `holder`.
#[derive(Debug, PartialEq, Eq)]
pub enum LockStep {
    /// Already held by this owner: success, nothing to write.
    Held,
    /// Free: take it.
    Take,
}

pub fn lock_step(
    id: &TypeInstanceId,
    holder: Option<&str>,
    owner: &Owner,
) -> Result<LockStep, Error> {
    match holder {
        Some(h) if h == owner.as_str() => Ok(LockStep::Held),
        Some(h) => Err(locked_by(id, h)),
        None => Ok(LockStep::Take),
    }
}

/// What OnUpdate(rev) does, given the latest committed revision and, when
/// `rev <= latest`, the bytes stored at `rev` (`None`: not stored).
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateStep {
    /// The revision is stored with these very bytes: a retry, success.
    Done,
    /// Write it.
    Write,
}

pub fn update_step(
    id: &TypeInstanceId,
    rev: u32,
    latest: u32,
    stored: Option<&[u8]>,
    value: &[u8],
    holder: Option<&str>,
    owner: Option<&Owner>,
) -> Result<UpdateStep, Error> {
    if let Some(bytes) = stored {
        return if bytes == value {
            Ok(UpdateStep::Done)
        } else {
            Err(revision_exists(id, rev))
        };
    }
    check_lock(id, holder, owner)?;
    if rev <= latest {
        return Err(not_above_latest(id, rev, latest));
    }
    Ok(UpdateStep::Write)
}

/// What OnCreate does on an existing TypeInstance whose revision 1 holds
/// `first` (`None`: other revisions exist or revision 1 is gone).
pub fn create_on_existing(
    id: &TypeInstanceId,
    latest: u32,
    first: Option<&[u8]>,
    value: &[u8],
) -> Result<(), Error> {
    match first {
        Some(bytes) if latest == 1 && bytes == value => Ok(()),
        _ => Err(already_exists(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn id() -> TypeInstanceId {
        TypeInstanceId::parse("ti").unwrap_or_else(|e| panic!("{e}"))
    }

    fn owner(s: &str) -> Owner {
        Owner::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn not_found_messages_match_capacts_wording() {
        assert_eq!(
            not_found(&id()).message(),
            "TypeInstance \"ti\" was not found"
        );
        assert_eq!(
            revision_not_found(&id(), 3).message(),
            "TypeInstance \"ti\" in revision 3 was not found"
        );
    }

    #[test]
    fn update_of_a_stored_revision_compares_bytes_before_the_lock() {
        let other = owner("b");
        let a = Some("a");
        assert!(matches!(
            update_step(&id(), 2, 2, Some(b"x"), b"x", a, Some(&other)),
            Ok(UpdateStep::Done)
        ));
        let err = update_step(&id(), 2, 2, Some(b"y"), b"x", a, Some(&other)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        let err = update_step(&id(), 3, 2, None, b"x", a, Some(&other)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        let err = update_step(&id(), 2, 2, None, b"x", None, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert!(matches!(
            update_step(&id(), 3, 2, None, b"x", a, Some(&owner("a"))),
            Ok(UpdateStep::Write)
        ));
    }

    #[test]
    fn lock_is_idempotent_for_the_holder_and_refused_to_others() {
        assert!(matches!(
            lock_step(&id(), Some("a"), &owner("a")),
            Ok(LockStep::Held)
        ));
        assert!(matches!(
            lock_step(&id(), None, &owner("a")),
            Ok(LockStep::Take)
        ));
        let err = lock_step(&id(), Some("a"), &owner("b")).unwrap_err();
        assert!(err.message().contains("locked by a"));
    }
}
