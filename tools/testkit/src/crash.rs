//! Writers whose every answer is checked against a ledger ([`Load`]), and
//! the driver that SIGKILLs a backend under them at random moments
//! ([`kill_at_random_moments`]). The store-fault scenario
//! (`crate::fault::assert_store_fault`) drives the same writers.
//!
//! Each writer owns its TypeInstances (ids unique to the run, never reused
//! after a delete), so every answer it gets is decided by the contract
//! alone: creates, updates of successive revisions, deletes and reads of
//! acknowledged revisions. A call that fails because the store or the
//! backend is out of reach is retried with the same arguments until it
//! completes, as an operator or a retrying client would; the ledger
//! records only what was acknowledged. At the end every acknowledged
//! revision must read back byte-exact, every deleted TypeInstance must stay
//! gone, and every live one must take its next revision (nothing left
//! half-done blocks it).
//!
//! Runs are seeded: the seed is printed, and `TESTKIT_SEED=<n>` repeats
//! the same choices (the timing of kills and faults still varies).

use std::{
    fmt,
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use shared::{
    client::{Client, Connect, Timeouts},
    error::code_name,
};
use tonic::{Code, Status};

use crate::{BackendProcess, free_port};

/// The run's seed: `TESTKIT_SEED` if set, else a random one. Every failure
/// message names it ([`Report::summary`]).
pub fn seed() -> u64 {
    std::env::var("TESTKIT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// What the writers do and what bounds their calls.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Concurrent writers, each with its own connection.
    pub writers: usize,
    pub seed: u64,
    /// Ids are `<prefix>-w<writer>-<n>`; unique per run.
    pub prefix: String,
    /// Sent with every call (none for backends without a context).
    pub context: Option<Bytes>,
    /// Values are 0..this many bytes (plus a short header naming the id
    /// and revision), half of them arbitrary bytes (not UTF-8).
    pub max_value_bytes: usize,
    /// Every call must answer within this, whatever it answers.
    pub call_bound: Option<Duration>,
    /// How long one write may keep being retried before the test calls it
    /// lost.
    pub complete_within: Duration,
    /// For a backend that derives the value from the context
    /// (`acceptValue: false`): writes send no value, and every revision
    /// must read back as these bytes (the context names an object the test
    /// leaves unchanged).
    pub derived_value: Option<Bytes>,
}

impl LoadOptions {
    /// Four writers, values up to 2 KiB, no context, [`seed`]'s seed.
    pub fn new(prefix: &str) -> Self {
        let seed = seed();
        Self {
            writers: 4,
            seed,
            prefix: format!("{prefix}-{:04x}", seed & 0xffff),
            context: None,
            max_value_bytes: 2048,
            call_bound: None,
            complete_within: Duration::from_secs(45),
            derived_value: None,
        }
    }

    /// What a write sends for `value`: nothing for a derived value.
    fn sent(&self, value: &Bytes) -> Option<Bytes> {
        self.derived_value.is_none().then(|| value.clone())
    }
}

/// One TypeInstance as acknowledged to its writer.
#[derive(Clone, Debug)]
pub struct Record {
    pub id: String,
    /// Acknowledged bytes of revision `i + 1`.
    pub revisions: Vec<Bytes>,
    /// An OnDelete was acknowledged (or, retried, found it gone).
    pub deleted: bool,
    /// A call on it broke the contract (reported): its state is unknown,
    /// so it is left out of the final check.
    pub uncertain: bool,
}

/// One call as a writer saw it.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub writer: usize,
    pub what: &'static str,
    pub started: Instant,
    pub elapsed: Duration,
    pub code: Code,
    pub message: String,
}

/// A slice of the calls, for statistics.
pub struct Calls(pub Vec<CallRecord>);

impl Calls {
    pub fn count(&self, code: Code) -> usize {
        self.0.iter().filter(|c| c.code == code).count()
    }

    /// The distinct messages of the calls that answered `code`.
    pub fn messages(&self, code: Code) -> Vec<String> {
        let mut out: Vec<String> = self
            .0
            .iter()
            .filter(|c| c.code == code)
            .map(|c| c.message.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// `OK 12, UNAVAILABLE 30`.
    pub fn summary(&self) -> String {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for c in &self.0 {
            let name = code_name(c.code);
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, k)) => *k += 1,
                None => counts.push((name, 1)),
            }
        }
        counts.sort();
        let parts: Vec<String> = counts.iter().map(|(n, k)| format!("{n} {k}")).collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A write, as a writer issues it (and retries it, unchanged).
#[derive(Clone, Debug)]
enum Op {
    Create { id: String, value: Bytes },
    Update { id: String, rev: u32, value: Bytes },
    Delete { id: String },
}

impl Op {
    fn what(&self) -> &'static str {
        match self {
            Op::Create { .. } => "OnCreate",
            Op::Update { .. } => "OnUpdate",
            Op::Delete { .. } => "OnDelete",
        }
    }

    async fn call(&self, client: &Client, options: &LoadOptions) -> Result<(), Status> {
        let context = &options.context;
        match self {
            Op::Create { id, value } => client
                .create(id, options.sent(value), context.clone())
                .await
                .map(drop),
            Op::Update { id, rev, value } => client
                .update(id, *rev, options.sent(value), context.clone(), None)
                .await
                .map(drop),
            Op::Delete { id } => client.delete(id, context.clone(), None).await,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create { id, value } => write!(f, "OnCreate {id} ({} bytes)", value.len()),
            Op::Update { id, rev, value } => {
                write!(f, "OnUpdate {id} to {rev} ({} bytes)", value.len())
            }
            Op::Delete { id } => write!(f, "OnDelete {id}"),
        }
    }
}

/// What the writers share with the driver.
#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<CallRecord>>,
    violations: Mutex<Vec<String>>,
    /// Raised when a kill begins and again when the backend serves again:
    /// odd while it is down. A call that overlaps a change may fail any way
    /// the dying connection makes it fail.
    epoch: AtomicU64,
    acknowledged: AtomicUsize,
    interrupted: AtomicUsize,
}

impl Shared {
    fn violation(&self, v: String) {
        lock(&self.violations).push(v);
    }
}

/// A poisoned lock only means another writer panicked; its data is still
/// what the report needs.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writers running against a backend; see the module docs.
pub struct Load {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<Vec<Record>>>,
    options: LoadOptions,
    started: Instant,
}

/// Connects to `url`, retrying while the backend is not up yet.
async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The call timeout is far above any store deadline: the backend's
        // own budget must be what ends a call, never this client.
        let timeouts = Timeouts {
            connect: Duration::from_secs(2),
            call: Duration::from_secs(60),
        };
        match Client::connect(&Connect::plain(url), timeouts).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("connect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl Load {
    /// Starts `options.writers` writers against the backend at `url`.
    pub async fn start(url: &str, options: LoadOptions) -> Self {
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for n in 0..options.writers {
            let writer = Writer {
                n,
                client: connect(url).await,
                shared: Arc::clone(&shared),
                options: options.clone(),
                rng: fastrand::Rng::with_seed(
                    options.seed ^ (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
            };
            writers.push(tokio::spawn(writer.run(Arc::clone(&stop))));
        }
        Self {
            shared,
            stop,
            writers,
            options,
            started: Instant::now(),
        }
    }

    /// Writes acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.shared.acknowledged.load(Ordering::Relaxed)
    }

    /// The backend is about to be killed: calls from now until
    /// [`Load::resume`] may fail any way a cut connection fails.
    pub fn interrupt(&self) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The backend serves again.
    pub fn resume(&self) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops the writers once each has completed its current write
    /// (retrying it as long as it takes, up to `complete_within`).
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let mut records = Vec::new();
        let patience = self.options.complete_within + Duration::from_secs(15);
        for (n, w) in self.writers.into_iter().enumerate() {
            match tokio::time::timeout(patience, w).await {
                Ok(Ok(r)) => records.extend(r),
                Ok(Err(e)) => self.shared.violation(format!("writer {n} panicked: {e}")),
                Err(_) => self
                    .shared
                    .violation(format!("writer {n} did not finish within {patience:?}")),
            }
        }
        Report {
            records,
            calls: std::mem::take(&mut *lock(&self.shared.calls)),
            violations: std::mem::take(&mut *lock(&self.shared.violations)),
            acknowledged: self.shared.acknowledged.load(Ordering::Relaxed),
            interrupted: self.shared.interrupted.load(Ordering::Relaxed),
            context: self.options.context,
            derived_value: self.options.derived_value,
            seed: self.options.seed,
            ran: self.started.elapsed(),
        }
    }
}

struct Writer {
    n: usize,
    client: Client,
    shared: Arc<Shared>,
    options: LoadOptions,
    rng: fastrand::Rng,
}

impl Writer {
    async fn run(mut self, stop: Arc<AtomicBool>) -> Vec<Record> {
        let mut records: Vec<Record> = Vec::new();
        let mut live: Vec<usize> = Vec::new();
        let mut made = 0u32;
        while !stop.load(Ordering::SeqCst) {
            let roll = self.rng.u32(..100);
            if live.is_empty() || (roll < 20 && live.len() < 6) {
                let id = format!("{}-w{}-{made}", self.options.prefix, self.n);
                made += 1;
                let value = self.value(&id, 1);
                records.push(Record {
                    id: id.clone(),
                    revisions: Vec::new(),
                    deleted: false,
                    uncertain: false,
                });
                let i = records.len() - 1;
                if self
                    .complete(&Op::Create {
                        id,
                        value: value.clone(),
                    })
                    .await
                {
                    records[i].revisions.push(value);
                    live.push(i);
                } else {
                    records[i].uncertain = true;
                }
                continue;
            }
            let k = self.rng.usize(..live.len());
            let i = live[k];
            if roll < 35 {
                self.read(&mut records[i]).await;
            } else if roll < 43 {
                let op = Op::Delete {
                    id: records[i].id.clone(),
                };
                live.swap_remove(k);
                if self.complete(&op).await {
                    records[i].deleted = true;
                } else {
                    records[i].uncertain = true;
                }
            } else {
                let rev = records[i].revisions.len() as u32 + 1;
                let value = self.value(&records[i].id, rev);
                let op = Op::Update {
                    id: records[i].id.clone(),
                    rev,
                    value: value.clone(),
                };
                if self.complete(&op).await {
                    records[i].revisions.push(value);
                } else {
                    records[i].uncertain = true;
                    live.swap_remove(k);
                }
            }
        }
        records
    }

    /// A value naming its id and revision (so that a mix-up shows), then
    /// random bytes: printable or arbitrary.
    fn value(&mut self, id: &str, rev: u32) -> Bytes {
        if let Some(v) = &self.options.derived_value {
            return v.clone();
        }
        let mut v = format!("{id}@{rev}:").into_bytes();
        let len = self.rng.usize(..=self.options.max_value_bytes);
        if self.rng.bool() {
            v.extend((0..len).map(|_| self.rng.u8(..)));
        } else {
            v.extend((0..len).map(|_| self.rng.alphanumeric() as u8));
        }
        Bytes::from(v)
    }

    /// Whether the call may have been cut by a kill of the backend.
    fn killed_during(&self, epoch_before: u64) -> bool {
        let now = self.shared.epoch.load(Ordering::SeqCst);
        now != epoch_before || now % 2 == 1
    }

    fn note(&self, what: &'static str, started: Instant, result: &Result<(), Status>) {
        let elapsed = started.elapsed();
        let (code, message) = match result {
            Ok(()) => (Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_owned()),
        };
        if let Some(bound) = self.options.call_bound
            && elapsed > bound
        {
            self.shared.violation(format!(
                "writer {}: {what} took {elapsed:?}, more than {bound:?}, and answered {} {message}",
                self.n,
                code_name(code)
            ));
        }
        if code == Code::DeadlineExceeded {
            self.shared.violation(format!(
                "writer {}: {what} answered DEADLINE_EXCEEDED ({message}): the store budget must answer UNAVAILABLE",
                self.n
            ));
        }
        lock(&self.shared.calls).push(CallRecord {
            writer: self.n,
            what,
            started,
            elapsed,
            code,
            message,
        });
    }

    /// Calls `op` until it completes; false (and a violation) if an answer
    /// breaks the contract or it never completes.
    async fn complete(&mut self, op: &Op) -> bool {
        let first = Instant::now();
        let mut interrupted = false;
        loop {
            let epoch = self.shared.epoch.load(Ordering::SeqCst);
            let started = Instant::now();
            let result = op.call(&self.client, &self.options).await;
            self.note(op.what(), started, &result);
            let status = match result {
                Ok(()) => {
                    self.shared.acknowledged.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(s) => s,
            };
            let code = status.code();
            // The spec's answer to the retry of a delete that had already
            // finished: the TypeInstance is gone.
            if interrupted && code == Code::NotFound && matches!(op, Op::Delete { .. }) {
                self.shared.acknowledged.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            let retry = interrupted_by(code, self.killed_during(epoch));
            if !retry {
                self.shared.violation(format!(
                    "writer {}: {op}{} answered {} {}",
                    self.n,
                    if interrupted {
                        ", retried after an interrupted attempt,"
                    } else {
                        ""
                    },
                    code_name(code),
                    status.message()
                ));
                return false;
            }
            if !interrupted {
                interrupted = true;
                self.shared.interrupted.fetch_add(1, Ordering::Relaxed);
            }
            if first.elapsed() > self.options.complete_within {
                self.shared.violation(format!(
                    "writer {}: {op} did not complete within {:?} of retries; last answer {} {}",
                    self.n,
                    self.options.complete_within,
                    code_name(code),
                    status.message()
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(self.rng.u64(20..80))).await;
        }
    }

    /// Reads an acknowledged revision: its exact bytes, or an interruption.
    async fn read(&mut self, record: &mut Record) {
        let rev = self.rng.usize(..record.revisions.len());
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        let started = Instant::now();
        let result = self
            .client
            .get(&record.id, rev as u32 + 1, self.options.context.clone())
            .await;
        let as_unit = result.as_ref().map(drop).map_err(Clone::clone);
        self.note("GetValue", started, &as_unit);
        match result {
            Ok(Some(v)) if v == record.revisions[rev] => {}
            Ok(other) => {
                self.shared.violation(format!(
                    "writer {}: GetValue {} revision {} returned {} bytes, not the {} acknowledged",
                    self.n,
                    record.id,
                    rev + 1,
                    other.map_or_else(|| "unset".into(), |v| v.len().to_string()),
                    record.revisions[rev].len()
                ));
                record.uncertain = true;
            }
            Err(s) if interrupted_by(s.code(), self.killed_during(epoch)) => {}
            Err(s) => {
                self.shared.violation(format!(
                    "writer {}: GetValue {} revision {} (acknowledged) answered {} {}",
                    self.n,
                    record.id,
                    rev + 1,
                    code_name(s.code()),
                    s.message()
                ));
                record.uncertain = true;
            }
        }
    }
}

/// Whether an answer means "did not happen, or not known to": the store
/// was out of reach (UNAVAILABLE) or a race was lost (ABORTED), or — only
/// for a call that overlapped a kill — the connection died under it, which
/// tonic reports as UNKNOWN or CANCELLED (h2 errors). Every other code is an
/// answer the backend gave, and is checked.
fn interrupted_by(code: Code, killed: bool) -> bool {
    matches!(code, Code::Unavailable | Code::Aborted)
        || (killed && matches!(code, Code::Unknown | Code::Cancelled))
}

/// What the writers saw, and the final check against the backend.
pub struct Report {
    pub records: Vec<Record>,
    pub calls: Vec<CallRecord>,
    pub violations: Vec<String>,
    pub acknowledged: usize,
    pub interrupted: usize,
    context: Option<Bytes>,
    derived_value: Option<Bytes>,
    seed: u64,
    ran: Duration,
}

/// Retries `call` while it answers UNAVAILABLE or ABORTED (the store may
/// still be settling), for up to 30 s.
async fn settled<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Err(s)
                if matches!(s.code(), Code::Unavailable | Code::Aborted)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

impl Report {
    /// Calls that were under way at some point between `from` and `to`.
    pub fn calls_between(&self, from: Instant, to: Instant) -> Calls {
        Calls(
            self.calls
                .iter()
                .filter(|c| c.started <= to && c.started + c.elapsed >= from)
                .cloned()
                .collect(),
        )
    }

    pub fn slowest(&self) -> Duration {
        self.calls
            .iter()
            .map(|c| c.elapsed)
            .max()
            .unwrap_or_default()
    }

    /// One line: how much was written and how it went.
    pub fn summary(&self) -> String {
        let live = self.records.iter().filter(|r| !r.deleted && !r.uncertain);
        let revisions: usize = live.map(|r| r.revisions.len()).sum();
        format!(
            "seed {}: {} calls in {:?} ({}), {} writes acknowledged, {} interrupted and retried, \
             {} TypeInstances ({} deleted), {revisions} live revisions; slowest call {:?}",
            self.seed,
            self.calls.len(),
            self.ran,
            Calls(self.calls.clone()).summary(),
            self.acknowledged,
            self.interrupted,
            self.records.len(),
            self.records.iter().filter(|r| r.deleted).count(),
            self.slowest(),
        )
    }

    /// Reads everything back from the backend at `url`: acknowledged
    /// revisions byte-exact, deleted TypeInstances NOT_FOUND, and each live
    /// one takes its next revision. Findings are added to the violations.
    pub async fn verify(&mut self, url: &str) {
        let client = connect(url).await;
        let context = self.context.clone();
        let ctx = || context.clone();
        let mut found = Vec::new();
        for r in self.records.iter_mut().filter(|r| !r.uncertain) {
            if r.deleted {
                for rev in 1..=r.revisions.len().max(1) as u32 {
                    match settled(|| client.get(&r.id, rev, ctx())).await {
                        Err(s) if s.code() == Code::NotFound => {}
                        other => found.push(format!(
                            "deleted {} came back: GetValue of revision {rev} answered {}",
                            r.id,
                            outcome(&other)
                        )),
                    }
                }
                match settled(|| client.locked_by(&r.id, ctx())).await {
                    Err(s) if s.code() == Code::NotFound => {}
                    other => found.push(format!(
                        "deleted {} came back: GetLockedBy answered {}",
                        r.id,
                        outcome(&other)
                    )),
                }
                continue;
            }
            for (i, want) in r.revisions.iter().enumerate() {
                let rev = i as u32 + 1;
                match settled(|| client.get(&r.id, rev, ctx())).await {
                    Ok(Some(v)) if v == want => {}
                    other => found.push(format!(
                        "{} revision {rev} (acknowledged, {} bytes) reads back as {}",
                        r.id,
                        want.len(),
                        outcome(&other)
                    )),
                }
            }
            // Nothing left half-done holds the TypeInstance: it takes its
            // next revision (recorded, so that a later check includes it).
            let next = r.revisions.len() as u32 + 1;
            let (value, sent) = match &self.derived_value {
                Some(v) => (v.clone(), None),
                None => {
                    let v = Bytes::from(format!("{}@{next}:verify", r.id));
                    (v.clone(), Some(v))
                }
            };
            match settled(|| client.update(&r.id, next, sent.clone(), ctx(), None)).await {
                Ok(_) => r.revisions.push(value),
                Err(s) => found.push(format!(
                    "{} does not take revision {next} after the run: {} {}",
                    r.id,
                    code_name(s.code()),
                    s.message()
                )),
            }
        }
        self.violations.extend(found);
    }

    /// Panics with every violation, the seed and the tail of `logs`.
    pub fn assert_clean(&self, logs: &str) {
        if self.violations.is_empty() {
            return;
        }
        let tail_from = logs.char_indices().rev().nth(20_000).map_or(0, |(i, _)| i);
        panic!(
            "{} violations ({}):\n{}\n\nbackend log (tail):\n{}",
            self.violations.len(),
            self.summary(),
            self.violations
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            &logs[tail_from..]
        );
    }
}

fn outcome<T: fmt::Debug>(r: &Result<Option<T>, Status>) -> String {
    match r {
        Ok(Some(_)) => "a value".into(),
        Ok(None) => "no value".into(),
        Err(s) => format!("{} {}", code_name(s.code()), s.message()),
    }
}

/// How often and when the backend is killed.
#[derive(Clone, Debug)]
pub struct Kills {
    pub count: usize,
    /// How long each life of the backend runs, from SERVING to SIGKILL
    /// (uniform in the range, drawn from the seed).
    pub uptime: Range<Duration>,
}

impl Default for Kills {
    /// 25 kills (`TESTKIT_KILLS=<n>` for a longer soak), each life 50–700 ms.
    fn default() -> Self {
        let count = std::env::var("TESTKIT_KILLS")
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(25);
        Self {
            count,
            uptime: Duration::from_millis(50)..Duration::from_millis(700),
        }
    }
}

/// Starts the backend with `start(port)` (it must start the same backend
/// on the same store each time, on `port`), runs [`Load`] against it and
/// SIGKILLs it `kills.count` times at random moments, restarting it on the
/// same port each time. Then checks the ledger (see the module docs) and
/// panics with every violation, the seed and the backends' logs.
///
/// [`crate::Guard::stop`] is std's `Child::kill`: SIGKILL, no grace, as
/// the OOM killer or a node failure ends a pod.
pub async fn kill_at_random_moments(
    start: impl Fn(u16) -> BackendProcess,
    kills: Kills,
    options: LoadOptions,
) {
    let port = free_port();
    let mut backend = start(port).serving().await;
    let mut rng = fastrand::Rng::with_seed(options.seed ^ 0x6b69_6c6c);
    let load = Load::start(&backend.url, options).await;
    let mut logs = String::new();
    for life in 0..kills.count {
        let uptime = rng
            .u64(kills.uptime.start.as_millis() as u64..kills.uptime.end.as_millis().max(1) as u64);
        tokio::time::sleep(Duration::from_millis(uptime)).await;
        load.interrupt();
        backend.process.stop();
        logs.push_str(&format!(
            "----- life {life}, killed after {uptime} ms -----\n{}",
            backend.logs()
        ));
        backend = start(port).serving().await;
        load.resume();
    }
    // The last life runs a while: every interrupted call completes in it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut report = load.finish().await;
    report.verify(&backend.url).await;
    logs.push_str(&format!("----- last life -----\n{}", backend.logs()));
    assert!(
        report.acknowledged > kills.count,
        "too few writes were acknowledged to mean anything: {}",
        report.summary()
    );
    report.assert_clean(&logs);
}
