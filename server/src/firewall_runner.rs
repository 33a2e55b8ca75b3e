//! Runs `nft` for the access-control code from one dedicated thread. Capabilities belong to
//! threads: after `--user` only the thread that dropped privileges keeps CAP_NET_ADMIN (and
//! makes it ambient for its children), while the async runtime's workers have none. The runner
//! is started again from that thread after the drop ([`restart`]), so `nft` always runs with
//! CAP_NET_ADMIN.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

type Reply = Box<dyn FnOnce(anyhow::Result<String>) + Send>;

struct Job {
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
            (job.reply)(run(&job.args, job.script.as_deref()));
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
    let job = Job {
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
                (e.0.reply)(Err(anyhow!("the nft runner thread is gone")));
            }
        }
        None => (job.reply)(Err(anyhow!("no nft runner thread"))),
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
