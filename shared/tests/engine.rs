//! The revision engine proved on the in-memory store: a crash at every
//! store call of every operation, and seeded random interleavings of
//! concurrent operations checked for linearizability against the protocol's
//! sequential model (spec §3). A failing interleaving prints its seed;
//! `ENGINE_SEED=<n> cargo test -p shared --test engine` replays it.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use shared::{
    Context, ErrorKind, Owner, Revision, TypeInstanceId, Value, ValueBackend,
    engine::{
        Clock, Engine, Intent, Options,
        memory::{CONDITIONAL, Contents, KEEP, MemoryStore, UNCONDITIONAL},
    },
};

// ---------------------------------------------------------------------------
// The sequential model: what one TypeInstance is, and what each call answers.

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Model {
    revisions: BTreeMap<u32, Vec<u8>>,
    lock: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Create(Vec<u8>),
    Update(u32, Vec<u8>, Option<&'static str>),
    Delete(Option<&'static str>),
    DeleteRevision(u32, Option<&'static str>),
    Lock(&'static str),
    Unlock,
    Get(u32),
    LockedBy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Res {
    Ok,
    Value(Vec<u8>),
    Holder(Option<String>),
    Err(ErrorKind),
}

thread_local! {
    /// Retention of the engine under test (APP_MAX_REVISIONS) and of the
    /// model; paused-clock tests run on one thread each.
    static RETAIN: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

impl Model {
    fn exists(&self) -> bool {
        !self.revisions.is_empty()
    }

    fn latest(&self) -> u32 {
        self.revisions.keys().next_back().copied().unwrap_or(0)
    }

    fn locked_out(&self, owner: Option<&str>) -> bool {
        self.lock.as_deref().is_some_and(|h| Some(h) != owner)
    }

    fn apply(&self, op: &Op) -> (Model, Res) {
        use ErrorKind::*;
        let mut m = self.clone();
        let res = match op {
            Op::Create(v) => {
                if !m.exists() {
                    m.revisions.insert(1, v.clone());
                    m.lock = None;
                    Res::Ok
                } else if m.latest() == 1 && m.revisions.get(&1) == Some(v) {
                    Res::Ok
                } else {
                    Res::Err(AlreadyExists)
                }
            }
            Op::Update(n, v, owner) => {
                if !m.exists() {
                    Res::Err(NotFound)
                } else if let Some(stored) = m.revisions.get(n) {
                    if stored == v {
                        Res::Ok
                    } else {
                        Res::Err(AlreadyExists)
                    }
                } else if m.locked_out(*owner) || *n <= m.latest() {
                    Res::Err(FailedPrecondition)
                } else {
                    m.revisions.insert(*n, v.clone());
                    if let Some(keep) = RETAIN.get() {
                        m.revisions.retain(|r, _| *r > n.saturating_sub(keep));
                    }
                    Res::Ok
                }
            }
            Op::Delete(owner) => {
                if !m.exists() {
                    Res::Err(NotFound)
                } else if m.locked_out(*owner) {
                    Res::Err(FailedPrecondition)
                } else {
                    m = Model::default();
                    Res::Ok
                }
            }
            Op::DeleteRevision(n, owner) => {
                if !m.exists() || *n > m.latest() {
                    Res::Err(NotFound)
                } else if m.locked_out(*owner) {
                    Res::Err(FailedPrecondition)
                } else if m.revisions.remove(n).is_none() {
                    Res::Err(NotFound)
                } else {
                    if !m.exists() {
                        m.lock = None;
                    }
                    Res::Ok
                }
            }
            Op::Lock(o) => {
                if !m.exists() {
                    Res::Err(NotFound)
                } else if m.lock.as_deref().is_some_and(|h| h != *o) {
                    Res::Err(FailedPrecondition)
                } else {
                    m.lock = Some((*o).to_owned());
                    Res::Ok
                }
            }
            Op::Unlock => {
                if !m.exists() {
                    Res::Err(NotFound)
                } else {
                    m.lock = None;
                    Res::Ok
                }
            }
            Op::Get(n) => match m.revisions.get(n) {
                Some(v) => Res::Value(v.clone()),
                None => Res::Err(NotFound),
            },
            Op::LockedBy => {
                if m.exists() {
                    Res::Holder(m.lock.clone())
                } else {
                    Res::Err(NotFound)
                }
            }
        };
        (m, res)
    }
}

// ---------------------------------------------------------------------------
// Calling the engine.

fn id() -> TypeInstanceId {
    TypeInstanceId::parse("ti").unwrap_or_else(|e| panic!("{e}"))
}

fn owner(o: &str) -> Owner {
    Owner::parse(o).unwrap_or_else(|e| panic!("{e}"))
}

fn rev(n: u32) -> Revision {
    Revision::new(n).unwrap_or_else(|| panic!("revision {n}"))
}

async fn call<B: ValueBackend>(b: &B, op: &Op) -> Res {
    let id = id();
    let ctx = Context::none();
    let done = |r: shared::Result<()>| match r {
        Ok(()) => Res::Ok,
        Err(e) => Res::Err(e.kind()),
    };
    match op {
        Op::Create(v) => done(b.create(&id, Value::from(v.clone()), &ctx).await.map(drop)),
        Op::Update(n, v, o) => done(
            b.update(
                &id,
                rev(*n),
                Value::from(v.clone()),
                &ctx,
                o.map(owner).as_ref(),
            )
            .await
            .map(drop),
        ),
        Op::Delete(o) => done(b.delete(&id, &ctx, o.map(owner).as_ref()).await),
        Op::DeleteRevision(n, o) => done(
            b.delete_revision(&id, rev(*n), &ctx, o.map(owner).as_ref())
                .await,
        ),
        Op::Lock(o) => done(b.lock(&id, &ctx, &owner(o)).await),
        Op::Unlock => done(b.unlock(&id, &ctx).await),
        Op::Get(n) => match b.get_value(&id, rev(*n), &ctx).await {
            Ok(v) => Res::Value(v.as_bytes().to_vec()),
            Err(e) => Res::Err(e.kind()),
        },
        Op::LockedBy => match b.get_locked_by(&id, &ctx).await {
            Ok(h) => Res::Holder(h.map(|o| o.as_str().to_owned())),
            Err(e) => Res::Err(e.kind()),
        },
    }
}

/// The model state the engine shows through its reads.
async fn observe<B: ValueBackend>(b: &B) -> Model {
    let mut m = Model::default();
    for n in 1..=4 {
        if let Res::Value(v) = call(b, &Op::Get(n)).await {
            m.revisions.insert(n, v);
        }
    }
    if let Res::Holder(h) = call(b, &Op::LockedBy).await {
        m.lock = h;
    }
    m
}

fn engine<const C: u8>(store: MemoryStore<C>) -> Engine<MemoryStore<C>> {
    Engine::new(
        store,
        Options {
            clock: Clock::tokio(),
            max_revisions: RETAIN.get(),
            ..Options::default()
        },
    )
}

async fn apply_all<B: ValueBackend>(b: &B, ops: &[Op]) -> Model {
    let mut model = Model::default();
    for op in ops {
        let (next, want) = model.apply(op);
        let got = call(b, op).await;
        assert_eq!(got, want, "setup {op:?}");
        model = next;
    }
    model
}

/// What the store may hold at rest: no object outside the live head's life
/// and revisions, no unfinished intent on a live head.
fn assert_tidy(contents: &Contents, model: &Model) {
    let head = contents.heads.get("ti").map(|(h, _)| h.clone());
    match &head {
        Some(h) if h.is_live() => {
            assert_eq!(h.intent, None, "a live head keeps an intent: {h:?}");
            assert_eq!(h.latest, model.latest(), "latest");
            for (i, life, r) in contents.objects.keys() {
                assert!(
                    i == "ti" && life == &h.life && *r <= h.latest && *r > h.floor,
                    "stray object {life}/{r} beside {h:?}"
                );
            }
        }
        other => {
            assert!(!model.exists(), "the TypeInstance should exist: {other:?}");
            assert!(
                contents.objects.is_empty(),
                "objects left after a delete: {:?}",
                contents.objects.keys()
            );
            if let Some(h) = other {
                // Only a finished delete's mark may stay (stores whose head
                // removal is unconditional), or a create that never committed.
                assert!(
                    matches!(
                        h.intent,
                        Some(Intent::Deleted { .. }) | Some(Intent::Write { .. }) | None
                    ),
                    "leftover head {h:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Crash points.

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// (setup, operation): every operation, from the states that matter.
fn crash_scenarios() -> Vec<(&'static str, Vec<Op>, Op)> {
    let one = vec![Op::Create(v("a"))];
    let two = vec![Op::Create(v("a")), Op::Update(2, v("b"), None)];
    let three = vec![
        Op::Create(v("a")),
        Op::Update(2, v("b"), None),
        Op::Update(3, v("c"), None),
    ];
    let locked = vec![Op::Create(v("a")), Op::Lock("o")];
    let reborn = vec![
        Op::Create(v("a")),
        Op::Update(2, v("b"), None),
        Op::Delete(None),
    ];
    vec![
        ("create", vec![], Op::Create(v("a"))),
        ("create after a delete", reborn, Op::Create(v("n"))),
        ("update", one.clone(), Op::Update(2, v("b"), None)),
        (
            "update by the holder",
            locked.clone(),
            Op::Update(2, v("b"), Some("o")),
        ),
        ("delete", three.clone(), Op::Delete(None)),
        (
            "delete by the holder",
            locked.clone(),
            Op::Delete(Some("o")),
        ),
        (
            "delete latest revision",
            three.clone(),
            Op::DeleteRevision(3, None),
        ),
        (
            "delete older revision",
            two.clone(),
            Op::DeleteRevision(1, None),
        ),
        (
            "delete last revision",
            one.clone(),
            Op::DeleteRevision(1, None),
        ),
        ("lock", one.clone(), Op::Lock("o")),
        ("unlock", locked, Op::Unlock),
        (
            "update after a rolled-back revision",
            {
                let mut s = two;
                s.push(Op::DeleteRevision(2, None));
                s
            },
            Op::Update(2, v("z"), None),
        ),
    ]
}

async fn crash_points<const C: u8>() {
    let lease = Options::default().lease + Duration::from_secs(1);
    for (name, setup, op) in crash_scenarios() {
        // How many store calls the operation makes when nothing fails.
        let probe = engine(MemoryStore::<C>::new());
        let pre = apply_all(&probe, &setup).await;
        let (post, want) = pre.apply(&op);
        probe.store().reset_calls();
        assert_eq!(call(&probe, &op).await, want, "{name}: healthy run");
        let calls = probe.store().calls();
        for (k, wait) in (0..calls).flat_map(|k| [(k, true), (k, false)]) {
            let e = engine(MemoryStore::<C>::new());
            apply_all(&e, &setup).await;
            e.store().fail_after(k);
            let first = call(&e, &op).await;
            e.store().heal();
            let seen = observe(&e).await;
            assert!(
                seen == pre || seen == post,
                "{name}: crash after call {k} left a state that is neither before nor after: {seen:?} (first answer {first:?})"
            );
            // The retry comes at once (it must still complete the call: the
            // state is what counts), or after the crashed call's lease (then
            // nothing of the crash may be left either).
            if wait {
                tokio::time::advance(lease).await;
            }
            let again = call(&e, &op).await;
            let done = match (&want, &again) {
                (a, b) if a == b => true,
                // A crashed call that already took effect: its retry finds
                // the work done.
                (Res::Ok, Res::Err(ErrorKind::NotFound)) => {
                    matches!(op, Op::Delete(_) | Op::DeleteRevision(..))
                }
                _ => false,
            };
            assert!(
                done,
                "{name}: crash after call {k}: retry answered {again:?}, want {want:?}"
            );
            assert_eq!(
                observe(&e).await,
                post,
                "{name}: crash after call {k}: state after the retry"
            );
            if !wait {
                continue;
            }
            let contents = e.store().contents();
            let tidy = std::panic::catch_unwind(|| assert_tidy(&contents, &post));
            assert!(
                tidy.is_ok(),
                "{name}: crash after call {k}: untidy store {contents:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_operation_is_atomic_and_completed_by_its_retry_after_a_crash_at_any_call() {
    crash_points::<UNCONDITIONAL>().await;
}

#[tokio::test(start_paused = true)]
async fn the_same_holds_where_the_head_is_removed_conditionally() {
    crash_points::<CONDITIONAL>().await;
}

// ---------------------------------------------------------------------------
// Interleavings.

#[derive(Clone, Debug)]
struct Rec {
    op: Op,
    invoked: u64,
    answered: u64,
    res: Res,
}

impl Rec {
    /// ABORTED may come after the change took effect (its cleanup lost a
    /// race): the call is indeterminate, like one that never answered.
    fn indeterminate(&self) -> bool {
        self.res == Res::Err(ErrorKind::Aborted)
    }
}

/// Wing & Gong: is there an order of the calls, consistent with real time,
/// in which the sequential model gives every recorded answer?
fn linearizable(start: &Model, history: &[Rec]) -> bool {
    fn search(state: &Model, left: u64, h: &[Rec], dead: &mut HashSet<(u64, Model)>) -> bool {
        if left == 0 {
            return true;
        }
        if dead.contains(&(left, state.clone())) {
            return false;
        }
        let pending = |i: usize| left & (1 << i) != 0;
        for i in (0..h.len()).filter(|&i| pending(i)) {
            // Only a call that began before every pending call ended can go next.
            if (0..h.len()).any(|j| pending(j) && h[j].answered < h[i].invoked) {
                continue;
            }
            let (next, res) = state.apply(&h[i].op);
            let rest = left & !(1 << i);
            if (res == h[i].res || h[i].indeterminate()) && search(&next, rest, h, dead) {
                return true;
            }
            if h[i].indeterminate() && search(state, rest, h, dead) {
                return true;
            }
        }
        dead.insert((left, state.clone()));
        false
    }
    search(
        start,
        (1u64 << history.len()) - 1,
        history,
        &mut HashSet::new(),
    )
}

fn random_op(rng: &mut fastrand::Rng) -> Op {
    let val = |rng: &mut fastrand::Rng| v(if rng.bool() { "x" } else { "y" });
    let who = |rng: &mut fastrand::Rng| [None, Some("a"), Some("b")][rng.usize(0..3)];
    match rng.u32(0..9) {
        0 => Op::Create(val(rng)),
        1 | 2 => Op::Update(rng.u32(2..4), val(rng), who(rng)),
        3 => Op::Delete(who(rng)),
        4 => Op::DeleteRevision(rng.u32(1..4), who(rng)),
        5 => Op::Lock(if rng.bool() { "a" } else { "b" }),
        6 => Op::Unlock,
        7 => Op::Get(rng.u32(1..4)),
        _ => Op::LockedBy,
    }
}

async fn interleaving<const C: u8>(seed: u64) -> Result<(), String> {
    fastrand::seed(seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let e = Arc::new(engine(MemoryStore::<C>::new().with_shuffle(seed)));
    let setups: [Vec<Op>; 4] = [
        vec![],
        vec![Op::Create(v("x"))],
        vec![Op::Create(v("x")), Op::Update(2, v("y"), None)],
        vec![
            Op::Create(v("x")),
            Op::Update(2, v("y"), None),
            Op::Lock("a"),
        ],
    ];
    let start = apply_all(&*e, &setups[rng.usize(0..setups.len())]).await;
    let ops: Vec<Op> = (0..rng.usize(3..9)).map(|_| random_op(&mut rng)).collect();
    let clock = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for op in ops.clone() {
        let (e, clock) = (Arc::clone(&e), Arc::clone(&clock));
        tasks.push(tokio::spawn(async move {
            let invoked = clock.fetch_add(1, Ordering::SeqCst);
            let res = call(&*e, &op).await;
            let answered = clock.fetch_add(1, Ordering::SeqCst);
            Rec {
                op,
                invoked,
                answered,
                res,
            }
        }));
    }
    let mut history = Vec::new();
    for t in tasks {
        history.push(t.await.map_err(|e| format!("task: {e}"))?);
    }
    // The state at rest, read after every call answered.
    for op in [Op::Get(1), Op::Get(2), Op::Get(3), Op::LockedBy] {
        let invoked = clock.fetch_add(1, Ordering::SeqCst);
        let res = call(&*e, &op).await;
        let answered = clock.fetch_add(1, Ordering::SeqCst);
        history.push(Rec {
            op,
            invoked,
            answered,
            res,
        });
    }
    if linearizable(&start, &history) {
        Ok(())
    } else {
        let mut lines = format!("seed {seed}: not linearizable from {start:?}\n");
        for r in &history {
            lines.push_str(&format!(
                "  [{:>3}..{:>3}] {:?} -> {:?}\n",
                r.invoked, r.answered, r.op, r.res
            ));
        }
        Err(lines)
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("ENGINE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => (0..6000).collect(),
    }
}

#[tokio::test(start_paused = true)]
async fn random_interleavings_are_linearizable() {
    for seed in seeds() {
        if let Err(e) = interleaving::<UNCONDITIONAL>(seed).await {
            panic!("{e}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_holds_where_deleted_heads_are_kept() {
    crash_points::<KEEP>().await;
}

#[tokio::test(start_paused = true)]
async fn random_interleavings_are_linearizable_where_deleted_heads_are_kept() {
    for seed in seeds() {
        if let Err(e) = interleaving::<KEEP>(seed).await {
            panic!("{e}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn random_interleavings_are_linearizable_with_conditional_head_removal() {
    for seed in seeds() {
        if let Err(e) = interleaving::<CONDITIONAL>(seed).await {
            panic!("{e}");
        }
    }
}

// ---------------------------------------------------------------------------
// Retention (APP_MAX_REVISIONS): the same proofs with pruning on.

#[tokio::test(start_paused = true)]
async fn with_retention_every_operation_is_atomic_and_completed_by_its_retry() {
    RETAIN.set(Some(2));
    crash_points::<UNCONDITIONAL>().await;
    crash_points::<KEEP>().await;
}

#[tokio::test(start_paused = true)]
async fn with_retention_random_interleavings_are_linearizable() {
    RETAIN.set(Some(2));
    for seed in seeds().into_iter().take(3000) {
        if let Err(e) = interleaving::<CONDITIONAL>(seed).await {
            panic!("{e}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retention_keeps_the_newest_revisions_and_the_lock() {
    RETAIN.set(Some(3));
    let e = engine(MemoryStore::<UNCONDITIONAL>::new());
    let mut ops = vec![Op::Create(v("1")), Op::Lock("o")];
    ops.extend((2..=10).map(|n| Op::Update(n, v(&n.to_string()), Some("o"))));
    apply_all(&e, &ops).await;
    for n in 1..=7 {
        assert_eq!(
            call(&e, &Op::Get(n)).await,
            Res::Err(ErrorKind::NotFound),
            "{n}"
        );
    }
    for n in 8..=10 {
        assert_eq!(call(&e, &Op::Get(n)).await, Res::Value(v(&n.to_string())));
    }
    assert_eq!(call(&e, &Op::LockedBy).await, Res::Holder(Some("o".into())));
    let contents = e.store().contents();
    let mut kept: Vec<u32> = contents.objects.keys().map(|(_, _, r)| *r).collect();
    kept.sort();
    assert_eq!(kept, vec![8, 9, 10], "pruned objects are removed");
    // Deleting the kept revisions one by one ends the TypeInstance, never
    // bringing back a pruned one.
    for n in [10, 9] {
        assert_eq!(call(&e, &Op::DeleteRevision(n, Some("o"))).await, Res::Ok);
    }
    assert_eq!(call(&e, &Op::Get(8)).await, Res::Value(v("8")));
    assert_eq!(
        call(&e, &Op::DeleteRevision(7, Some("o"))).await,
        Res::Err(ErrorKind::NotFound)
    );
    assert_eq!(call(&e, &Op::DeleteRevision(8, Some("o"))).await, Res::Ok);
    assert_eq!(call(&e, &Op::LockedBy).await, Res::Err(ErrorKind::NotFound));
}

#[tokio::test(start_paused = true)]
async fn a_lowered_limit_catches_up_a_bounded_number_of_revisions_per_update() {
    let with = |keep: Option<u32>, store: Arc<MemoryStore<UNCONDITIONAL>>| {
        Engine::new(
            store,
            Options {
                clock: Clock::tokio(),
                max_revisions: keep,
                ..Options::default()
            },
        )
    };
    let store = Arc::new(MemoryStore::<UNCONDITIONAL>::new());
    let unlimited = with(None, Arc::clone(&store));
    let mut ops = vec![Op::Create(v("1"))];
    ops.extend((2..=40).map(|n| Op::Update(n, v("x"), None)));
    apply_all(&unlimited, &ops).await;
    // The same store, now with a limit of 2: the first update prunes 17.
    let e = with(Some(2), store);
    e.store().reset_calls();
    assert_eq!(call(&e, &Op::Update(41, v("y"), None)).await, Res::Ok);
    let calls = e.store().calls();
    assert!(calls < 30, "one update made {calls} store calls");
    assert_eq!(call(&e, &Op::Get(17)).await, Res::Err(ErrorKind::NotFound));
    assert_eq!(call(&e, &Op::Get(18)).await, Res::Value(v("x")));
    assert_eq!(call(&e, &Op::Update(42, v("z"), None)).await, Res::Ok);
    assert_eq!(call(&e, &Op::Update(43, v("w"), None)).await, Res::Ok);
    assert_eq!(call(&e, &Op::Get(41)).await, Res::Err(ErrorKind::NotFound));
    assert_eq!(call(&e, &Op::Get(42)).await, Res::Value(v("z")));
}

// ---------------------------------------------------------------------------
// Specific fences.

#[tokio::test(start_paused = true)]
async fn an_owner_less_update_never_commits_after_another_owners_lock() {
    // Interleave by hand: the update's claim, then the lock, then the rest.
    for seed in 0..200 {
        fastrand::seed(seed);
        let e = Arc::new(engine(
            MemoryStore::<UNCONDITIONAL>::new().with_shuffle(seed),
        ));
        apply_all(&*e, &[Op::Create(v("x"))]).await;
        let upd = {
            let e = Arc::clone(&e);
            tokio::spawn(async move { call(&*e, &Op::Update(2, v("y"), None)).await })
        };
        let lock = call(&*e, &Op::Lock("b")).await;
        let after_lock = call(&*e, &Op::Get(2)).await;
        let upd = upd.await.unwrap_or(Res::Err(ErrorKind::Internal));
        let later = call(&*e, &Op::Get(2)).await;
        if lock == Res::Ok && after_lock == Res::Err(ErrorKind::NotFound) {
            assert_eq!(
                later,
                Res::Err(ErrorKind::NotFound),
                "seed {seed}: update {upd:?} took effect after the lock"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_intent_of_a_dead_call_is_taken_over_after_its_lease() {
    let e = engine(MemoryStore::<UNCONDITIONAL>::new());
    apply_all(&e, &[Op::Create(v("x")), Op::Update(2, v("y"), None)]).await;
    // Crash a delete-revision right after it recorded its intent (read
    // head, read revision, record).
    e.store().fail_after(3);
    assert_eq!(
        call(&e, &Op::DeleteRevision(1, None)).await,
        Res::Err(ErrorKind::Unavailable)
    );
    e.store().heal();
    assert_eq!(call(&e, &Op::Get(1)).await, Res::Err(ErrorKind::NotFound));
    // Within the lease another revision's delete waits (ABORTED, retryable)...
    assert_eq!(
        call(&e, &Op::DeleteRevision(2, None)).await,
        Res::Err(ErrorKind::Aborted)
    );
    // ...after it, the dead call's work is finished and the new call goes on.
    tokio::time::advance(Options::default().lease).await;
    assert_eq!(call(&e, &Op::DeleteRevision(2, None)).await, Res::Ok);
    assert_eq!(observe(&e).await, Model::default());
}
