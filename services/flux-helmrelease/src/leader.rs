//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one registers releases in the Hub.
//!
//! The rules are client-go's: the holder renews every `retry` interval; a
//! replica takes the Lease over only after it saw the record unchanged for
//! a whole `duration` (measured on its own clock, so clock skew between
//! nodes does not matter); every write is a compare-and-set on the Lease's
//! resourceVersion; a holder that cannot renew within `renew_deadline`
//! steps down before anyone else may take over (`renew_deadline <
//! duration`).

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tokio::sync::watch;

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process: two replicas never share it.
    pub identity: String,
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl LeaseConfig {
    /// client-go's proportions: renew deadline 2/3 and retry 1/5 of the duration.
    pub fn new(namespace: String, name: String, identity: String, duration: Duration) -> Self {
        Self {
            namespace,
            name,
            identity,
            renew_deadline: duration * 2 / 3,
            retry: duration / 5,
            duration,
        }
    }
}

/// Runs the election until the process ends; the receiver says whether
/// this process leads now.
pub fn spawn(client: Client, config: LeaseConfig) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(run(client, config, tx));
    rx
}

/// What this process last saw of the Lease.
struct Observed {
    record: (Option<String>, Option<MicroTime>),
    since: Instant,
}

async fn run(client: Client, config: LeaseConfig, tx: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renewed: Option<Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &config, &mut observed).await {
            Ok(true) => {
                last_renewed = Some(Instant::now());
                if !*tx.borrow() {
                    tracing::info!(lease = %config.name, identity = %config.identity, "leader election: leading");
                }
                tx.send_replace(true);
            }
            Ok(false) => {
                if *tx.borrow() {
                    tracing::info!(lease = %config.name, "leader election: another replica leads");
                }
                last_renewed = None;
                tx.send_replace(false);
            }
            Err(e) => {
                tracing::warn!(lease = %config.name, error = %e, "leader election: cannot read or write the lease");
                // Step down before another replica may take over.
                if last_renewed.is_none_or(|t| t.elapsed() >= config.renew_deadline) {
                    if *tx.borrow() {
                        tracing::warn!(lease = %config.name, "leader election: lost the lease (renew deadline passed)");
                    }
                    tx.send_replace(false);
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(config.retry).await;
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// One round: `Ok(true)` when this process holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record = (spec.holder_identity.clone(), spec.renew_time.clone());
    let changed = observed.as_ref().is_none_or(|o| o.record != record);
    if changed {
        *observed = Some(Observed {
            record,
            since: Instant::now(),
        });
    }
    let mine = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let expired = spec.holder_identity.as_deref().is_none_or(str::is_empty)
        || observed
            .as_ref()
            .is_some_and(|o| o.since.elapsed() >= config.duration);
    if !mine && !expired {
        return Ok(false);
    }
    let mut next = spec.clone();
    next.renew_time = Some(now());
    next.lease_duration_seconds = Some(seconds);
    if !mine {
        next.holder_identity = Some(config.identity.clone());
        next.acquire_time = Some(now());
        next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    lease.spec = Some(next);
    // replace carries the resourceVersion read above: a concurrent writer
    // makes it fail with 409 instead of being overwritten.
    let name = lease.name_any();
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_deadline_is_shorter_than_the_lease() {
        let c = LeaseConfig::new(
            "ns".into(),
            "l".into(),
            "me".into(),
            Duration::from_secs(15),
        );
        assert!(c.renew_deadline < c.duration);
        assert!(c.retry < c.renew_deadline);
    }
}
