//! Runs `nft` for the access-control code from one dedicated thread. Capabilities belong to
//! threads: after `--user` only the thread that dropped privileges keeps CAP_NET_ADMIN (and
//! makes it ambient for its children), while the async runtime's workers have none. The runner
//! is started again from that thread after the drop ([`restart`]), so `nft` always runs with
//! CAP_NET_ADMIN.
//!
//! The queue is bounded ([`Admission`]): at most [`MAX_PENDING`] jobs wait or run, and queries
//! (counters, denied sets: metrics scrapes, status) take at most [`MAX_PENDING_QUERIES`] of those
//! places, so that a burst of queries never keeps a change of the policy or of the address sets
//! out. A job beyond the bound fails at once ("the nft queue is full"); a failed change of the
//! address sets is carried by the next one (`Firewall::sync` keeps what is really installed).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

type Reply = Box<dyn FnOnce(anyhow::Result<String>) + Send>;

/// Jobs waiting or running at most.
pub const MAX_PENDING: usize = 64;
/// Of those, queries at most.
pub const MAX_PENDING_QUERIES: usize = 32;

/// What a job does: a change (policy, address sets, table removal) or a query (`list ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Change,
    Query,
}

impl JobKind {
    fn of(args: &[&str]) -> JobKind {
        if args.contains(&"list") {
            JobKind::Query
        } else {
            JobKind::Change
        }
    }
}

/// The bound on the runner's queue: counts the jobs admitted and not yet finished.
#[derive(Debug, Default)]
pub struct Admission {
    pending: AtomicUsize,
    queries: AtomicUsize,
}

impl Admission {
    /// Takes a place for a job of `kind`; false when the queue is full for it.
    pub fn try_admit(&self, kind: JobKind) -> bool {
        if kind == JobKind::Query {
            let taken = self
                .queries
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < MAX_PENDING_QUERIES).then_some(n + 1)
                })
                .is_ok();
            if !taken {
                return false;
            }
        }
        // Queries hold at most MAX_PENDING_QUERIES places: changes always find the others.
        let ok = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_PENDING).then_some(n + 1)
            })
            .is_ok();
        if !ok && kind == JobKind::Query {
            self.queries.fetch_sub(1, Ordering::AcqRel);
        }
        ok
    }

    /// A job of `kind` finished (or was never run).
    pub fn done(&self, kind: JobKind) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        if kind == JobKind::Query {
            self.queries.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

static ADMISSION: Admission = Admission {
    pending: AtomicUsize::new(0),
    queries: AtomicUsize::new(0),
};

struct Job {
    kind: JobKind,
    args: Vec<String>,
    script: Option<String>,
    reply: Reply,
}

static RUNNER: Mutex<Option<Sender<Job>>> = Mutex::new(None);

fn run(args: &[String], script: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables to use an access-control policy)")?;
    if let Some(script) = script {
        let mut stdin = child.stdin.take().context("nft stdin")?;
        stdin.write_all(script.as_bytes()).context("writing to nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn spawn() -> Option<Sender<Job>> {
    let (tx, rx) = channel::<Job>();
    let started = std::thread::Builder::new().name("nft".into()).spawn(move || {
        while let Ok(job) = rx.recv() {
            let result = run(&job.args, job.script.as_deref());
            ADMISSION.done(job.kind);
            (job.reply)(result);
        }
    });
    match started {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!("cannot start the nft runner thread: {e}");
            None
        }
    }
}

/// Replaces the runner with one started by the calling thread (call after dropping privileges,
/// from the thread that did). The old one ends when its queue is dropped.
pub fn restart() {
    *RUNNER.lock().unwrap_or_else(|e| e.into_inner()) = spawn();
}

fn submit(args: &[&str], script: Option<&str>, reply: Reply) {
    let kind = JobKind::of(args);
    if !ADMISSION.try_admit(kind) {
        reply(Err(anyhow!(
            "the nft queue is full ({} jobs waiting); `nft {}` not run",
            ADMISSION.pending(),
            args.join(" ")
        )));
        return;
    }
    let job = Job {
        kind,
        args: args.iter().map(|s| s.to_string()).collect(),
        script: script.map(str::to_string),
        reply,
    };
    let mut runner = RUNNER.lock().unwrap_or_else(|e| e.into_inner());
    if runner.is_none() {
        *runner = spawn();
    }
    match runner.as_ref() {
        Some(tx) => {
            if let Err(e) = tx.send(job) {
                ADMISSION.done(kind);
                (e.0.reply)(Err(anyhow!("the nft runner thread is gone")));
            }
        }
        None => {
            ADMISSION.done(kind);
            (job.reply)(Err(anyhow!("no nft runner thread")))
        }
    }
}

/// Runs `nft ARGS` (with `script` on stdin) and returns its stdout.
pub async fn nft(args: &[&str], script: Option<&str>) -> anyhow::Result<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(
        args,
        script,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.await.map_err(|_| anyhow!("the nft runner thread is gone"))?
}

/// The same, waiting on the calling thread (at most `max`).
pub fn nft_blocking(args: &[&str], max: Duration) -> anyhow::Result<String> {
    let (tx, rx) = channel();
    submit(
        args,
        None,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(max)
        .map_err(|_| anyhow!("nft did not finish in time"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_and_queries_never_take_the_places_of_changes() {
        let a = Admission::default();
        let mut queries = 0;
        while a.try_admit(JobKind::Query) {
            queries += 1;
            assert!(queries <= MAX_PENDING_QUERIES, "queries unbounded");
        }
        assert_eq!(queries, MAX_PENDING_QUERIES);
        let mut changes = 0;
        while a.try_admit(JobKind::Change) {
            changes += 1;
            assert!(changes <= MAX_PENDING, "changes unbounded");
        }
        assert_eq!(a.pending(), MAX_PENDING, "the whole queue is used, never more");
        assert!(changes >= MAX_PENDING - MAX_PENDING_QUERIES);
        // A finished job frees its place, for its own kind.
        a.done(JobKind::Change);
        assert!(!a.try_admit(JobKind::Query), "queries still at their limit");
        assert!(a.try_admit(JobKind::Change));
        a.done(JobKind::Query);
        a.done(JobKind::Change);
        assert!(a.try_admit(JobKind::Query));
    }

    #[test]
    fn a_flood_of_queries_leaves_room_for_changes() {
        let a = Admission::default();
        // Changes already waiting, then a flood of queries (metrics scrapes) far beyond the bound.
        for _ in 0..10 {
            assert!(a.try_admit(JobKind::Change));
        }
        let admitted = (0..10_000).filter(|_| a.try_admit(JobKind::Query)).count();
        assert!(admitted <= MAX_PENDING_QUERIES);
        assert!(a.try_admit(JobKind::Change), "a session's set update still gets in");
        assert!(a.pending() <= MAX_PENDING);
    }

    #[test]
    fn job_kinds() {
        assert_eq!(
            JobKind::of(&["-j", "list", "counters", "table", "inet", "t"]),
            JobKind::Query
        );
        assert_eq!(JobKind::of(&["-f", "-"]), JobKind::Change);
        assert_eq!(JobKind::of(&["delete", "table", "inet", "t"]), JobKind::Change);
    }
}
