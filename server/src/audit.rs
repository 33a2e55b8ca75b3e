//! The audit log (`--audit-log PATH`, config `audit_log`): one JSON object per line, each with
//! `time` (RFC 3339, UTC) and `event` (auth_failed, session_start, session_end, policy_denied,
//! key_revoked, config_reloaded, audit_overflow, denied_flows_suppressed). Events go through a bounded channel to one
//! writer thread, so callers never wait on the disk: when the channel is full the event is
//! counted as lost and the count is written in a later `audit_overflow` line. The file is opened
//! for appending and reopened on request (SIGHUP, after logrotate moved it). Under systemd
//! (`JOURNAL_STREAM` set) each event also goes to the journal with structured fields
//! (`SSHVPN_EVENT`, `SSHVPN_IDENTITY`, ...), with or without a file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::log_escape::for_log;

/// Events waiting for the writer at most.
pub const QUEUE: usize = 4096;

/// The journal's native socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

enum Msg {
    Line(Map<String, Value>),
    Reopen,
    Sync(std::sync::mpsc::Sender<()>),
}

/// Handle on the audit log; cheap to call when disabled.
#[derive(Default)]
pub struct Audit {
    tx: Option<mpsc::Sender<Msg>>,
    lost: Arc<AtomicU64>,
}

/// `2026-12-01T20:56:46.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The log may live in a directory the daemon's user owns while root opens it at start: a
/// symbolic link in its place is refused, never followed (see `safe_fs`).
fn open_append(path: &Path) -> std::io::Result<File> {
    crate::safe_fs::open_append_nofollow(path, 0o640)
}

/// One journal entry (native protocol, `KEY=value` lines) for an audit event. Values are kept
/// on one line (control characters replaced) and bounded.
pub fn journal_entry(event: &Map<String, Value>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1024)
            .collect()
    };
    let text = |v: &Value| match v {
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    };
    let name = event.get("event").map(text).unwrap_or_default();
    let who = ["identity", "source"]
        .iter()
        .find_map(|k| event.get(*k).filter(|v| !v.is_null()).map(text))
        .unwrap_or_default();
    let mut o = format!("MESSAGE=audit: {name} {who}\nPRIORITY=5\nSYSLOG_IDENTIFIER=sshvpnd\n");
    for (k, v) in event {
        if k == "time" {
            continue;
        }
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        o.push_str(&format!("SSHVPN_{key}={}\n", text(v)));
    }
    o
}

struct Sinks {
    path: Option<PathBuf>,
    file: Option<File>,
    journal: Option<(std::os::unix::net::UnixDatagram, PathBuf)>,
}

impl Sinks {
    fn write(&mut self, obj: &Map<String, Value>) {
        if let (Some(file), Some(path)) = (&mut self.file, &self.path) {
            let line = Value::Object(obj.clone()).to_string() + "\n";
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::warn!("audit log {}: {e}", path.display());
            }
        }
        if let Some((sock, to)) = &self.journal {
            let _ = sock.send_to(journal_entry(obj).as_bytes(), to);
        }
    }
}

fn writer(mut sinks: Sinks, mut rx: mpsc::Receiver<Msg>, lost: Arc<AtomicU64>) {
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Line(obj) => sinks.write(&obj),
            Msg::Reopen => {
                if let Some(path) = &sinks.path {
                    match open_append(path) {
                        Ok(f) => sinks.file = Some(f),
                        Err(e) => tracing::warn!("reopening the audit log {}: {e}", path.display()),
                    }
                }
            }
            Msg::Sync(done) => {
                if let Some(f) = &sinks.file {
                    let _ = f.sync_data();
                }
                let _ = done.send(());
            }
        }
        let n = lost.swap(0, Relaxed);
        if n > 0 {
            let v = json!({"time": rfc3339(SystemTime::now()), "event": "audit_overflow", "lost": n});
            if let Value::Object(obj) = v {
                sinks.write(&obj);
            }
        }
    }
}

impl Audit {
    /// Opens (creates, appends to) the log and starts its writer thread.
    #[cfg(test)]
    pub fn open(path: &Path) -> anyhow::Result<Audit> {
        Self::start(Some(path), None)
    }

    /// The audit log of the daemon: the file if any, and the journal when running under
    /// systemd (`JOURNAL_STREAM` set and its socket present). Disabled when neither.
    pub fn for_daemon(path: Option<&Path>) -> anyhow::Result<Audit> {
        let journal = (std::env::var_os("JOURNAL_STREAM").is_some() && Path::new(JOURNAL_SOCKET).exists())
            .then(|| PathBuf::from(JOURNAL_SOCKET));
        Self::start(path, journal)
    }

    /// Starts the writer for a file and/or a journal socket.
    pub fn start(path: Option<&Path>, journal: Option<PathBuf>) -> anyhow::Result<Audit> {
        if path.is_none() && journal.is_none() {
            return Ok(Audit::default());
        }
        let file = path
            .map(|p| open_append(p).with_context(|| format!("opening the audit log {}", p.display())))
            .transpose()?;
        let journal = match journal {
            Some(to) => Some((
                std::os::unix::net::UnixDatagram::unbound().context("journal socket")?,
                to,
            )),
            None => None,
        };
        let sinks = Sinks {
            path: path.map(Path::to_path_buf),
            file,
            journal,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let l = lost.clone();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer(sinks, rx, l))
            .context("starting the audit log writer")?;
        Ok(Audit { tx: Some(tx), lost })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one event; never waits.
    pub fn emit(&self, event: &str, fields: Value) {
        let Some(tx) = &self.tx else { return };
        let mut obj = Map::new();
        obj.insert("time".into(), Value::String(rfc3339(SystemTime::now())));
        obj.insert("event".into(), Value::String(event.into()));
        if let Value::Object(m) = fields {
            // Peer-supplied text (close reasons, user names, key IDs, software strings) is in
            // these values: control and bidi characters are made visible.
            obj.extend(m.into_iter().map(|(k, v)| (k, escaped(v))));
        }
        if tx.try_send(Msg::Line(obj)).is_err() {
            self.lost.fetch_add(1, Relaxed);
        }
    }

    /// Reopens the file (after logrotate moved it).
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Msg::Reopen);
        }
    }

    /// Waits (at most `max`) until everything queued so far is written.
    pub fn sync(&self, max: Duration) {
        if let Some(tx) = &self.tx {
            let (done, wait) = std::sync::mpsc::channel();
            if tx.try_send(Msg::Sync(done)).is_ok() {
                let _ = wait.recv_timeout(max);
            }
        }
    }

    /// An authentication attempt was refused.
    pub fn auth_failed(
        &self,
        source: impl std::fmt::Display,
        user: &str,
        key: Option<&russh::keys::PublicKey>,
        reason: &str,
    ) {
        // The user name comes from the peer: bounded.
        let user: String = user.chars().take(256).collect();
        let key = key.map(sshvpn_common::keys::fingerprint);
        self.emit(
            "auth_failed",
            json!({"source": source.to_string(), "user": user, "key": key, "reason": reason}),
        );
    }

    /// A live session's credential is no longer authorized (removed, revoked, expired, `from=`
    /// no longer matching): the session is being closed.
    pub fn key_revoked(&self, identity: &str, reason: &str) {
        self.emit("key_revoked", json!({"identity": identity, "reason": reason}));
    }

    pub fn config_reloaded(&self, path: &Path, ok: bool, detail: &str) {
        self.emit(
            "config_reloaded",
            json!({"path": path.display().to_string(), "ok": ok, "detail": detail}),
        );
    }
}

/// `v` with every string in it passed through [`for_log`].
fn escaped(v: Value) -> Value {
    match v {
        Value::String(s) => match for_log(&s) {
            std::borrow::Cow::Borrowed(_) => Value::String(s),
            std::borrow::Cow::Owned(e) => Value::String(e),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(escaped).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, escaped(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_158_606_123);
        assert_eq!(rfc3339(t), "2026-12-01T20:56:46.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn writes_json_lines_appends_and_reopens() {
        let dir = std::env::temp_dir().join(format!("sshvpnd-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let a = Audit::open(&path).unwrap();
        let key = russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone();
        a.auth_failed("10.0.0.1:5555", "root", Some(&key), "not in authorized keys");
        a.sync(Duration::from_secs(5));
        // logrotate: move the file away, then reopen.
        std::fs::rename(&path, dir.join("audit.log.1")).unwrap();
        a.reopen();
        a.key_revoked("SHA256:abc", "removed from authorized_keys");
        a.sync(Duration::from_secs(5));
        let old = std::fs::read_to_string(dir.join("audit.log.1")).unwrap();
        let lines: Vec<&str> = old.lines().collect();
        assert_eq!(lines.len(), 2, "{old}");
        let v: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["event"], "auth_failed");
        assert_eq!(v["source"], "10.0.0.1:5555");
        assert_eq!(v["key"], sshvpn_common::keys::fingerprint(&key));
        assert!(v["key"].as_str().unwrap().starts_with("SHA256:"));
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        let new = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_json::from_str(new.trim()).unwrap();
        assert_eq!(v["event"], "key_revoked");
        let _ = std::fs::remove_dir_all(&dir);
        // Disabled: nothing happens.
        Audit::default().key_revoked("x", "y");
    }

    #[test]
    fn journal_entries_carry_structured_fields() {
        let dir = std::env::temp_dir().join(format!("sshvpnd-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock_path = dir.join("journal.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let a = Audit::start(None, Some(sock_path)).unwrap();
        a.auth_failed("10.0.0.1:5555", "evil\nMESSAGE=forged", None, "not in authorized keys");
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("MESSAGE=audit: auth_failed 10.0.0.1:5555\n"), "{text}");
        assert!(text.contains("\nSSHVPN_EVENT=auth_failed\n"), "{text}");
        assert!(text.contains("\nSSHVPN_USER=evil\\nMESSAGE=forged\n"), "{text}");
        assert!(text.contains("\nSSHVPN_KEY=null\n"), "{text}");
        assert_eq!(text.matches("MESSAGE=").count(), 2, "no forged field line: {text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
