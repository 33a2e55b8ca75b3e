//! Differential conformance against OpenSSH itself: for every case of a corpus (authorized_keys
//! options, the option strings of OpenSSH's own authopt unit test, user certificates, KRLs of each
//! section type, known_hosts entries and host certificates), the real OpenSSH (`sshd` + `ssh`,
//! `ssh-keygen -Q`) and the real sshvpn (`sshvpnd` + `sshvpn connect`) decide with the same files
//! from the same source address; the decisions must be equal, except for the deliberate
//! differences named in `corpus::Deliberate`. A table of every case is printed
//! (`cargo test -p sshvpn-tests --test conformance -- --nocapture`). docs/conformance.md
//! describes the suite.
//!
//! Each case gets a fresh sshd and a fresh sshvpnd (both start in well under 0.1 s): decisions do
//! not depend on the order of the cases, on re-read timing, or on sshvpnd's per-source
//! penalties for failed logins.

#[path = "conformance/corpus.rs"]
mod corpus;
#[path = "conformance/fixture.rs"]
mod fixture;
#[path = "conformance/run.rs"]
mod run;
#[path = "conformance/world.rs"]
mod world;

use std::path::{Path, PathBuf};
use std::time::Instant;

use corpus::{Case, Deliberate};
use run::{Decision, Env};
use sshvpn_tests::Bin;
use sshvpn_tests::net::run_ok;
use world::World;

/// A directory under /run (not /tmp: sshd's StrictModes refuses files below a world-writable
/// directory), removed on drop.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Same,
    Deliberate(Deliberate),
    Skipped,
    Differs,
    Error,
}

fn verdict(case: &Case, openssh: &Decision, sshvpn: &Decision) -> Verdict {
    use Decision::*;
    match (openssh, sshvpn) {
        (Error(_), _) | (_, Error(_)) => Verdict::Error,
        (_, Skipped(_)) | (Skipped(_), _) => Verdict::Skipped,
        (Granted, Granted) | (Refused(_), Refused(_)) => match case.deliberate {
            // Following OpenSSH 9.2 where upstream now refuses is allowed too.
            Some(Deliberate::RestrictUpstream) | None => Verdict::Same,
            // A deliberate difference that is not there: the case's note is wrong.
            Some(_) => Verdict::Differs,
        },
        (Granted, Refused(_)) => match case.deliberate {
            Some(d) => Verdict::Deliberate(d),
            None => Verdict::Differs,
        },
        // Only a line sshd stops at and sshvpnd skips may grant where sshd refuses.
        (Refused(_), Granted) => match case.deliberate {
            Some(d @ Deliberate::BadLineSkipped) => Verdict::Deliberate(d),
            _ => Verdict::Differs,
        },
    }
}

fn verdict_text(v: Verdict) -> String {
    match v {
        Verdict::Same => "same".into(),
        Verdict::Deliberate(d) => format!("deliberate ({})", d.reason()),
        Verdict::Skipped => "skipped".into(),
        Verdict::Differs => "DIFFERS".into(),
        Verdict::Error => "ERROR".into(),
    }
}

/// For KRL cases: `ssh-keygen -Q` must agree with sshd (revoked ⇒ refused), else the case is
/// not measuring what it claims.
fn check_krl(case: &Case, openssh: Decision) -> Decision {
    let Some((krl, presented)) = &case.krl_query else {
        return openssh;
    };
    match (run::krl_query(krl, presented), &openssh) {
        (Err(e), _) => Decision::Error(format!("ssh-keygen -Q: {e}")),
        (Ok(true), Decision::Granted) => Decision::Error("ssh-keygen -Q says REVOKED but sshd granted".into()),
        (Ok(true), Decision::Refused(r)) => Decision::Refused(format!("ssh-keygen -Q: REVOKED; sshd: {r}")),
        (Ok(false), Decision::Granted) => Decision::Granted,
        (Ok(false), Decision::Refused(r)) => Decision::Refused(format!("ssh-keygen -Q: ok; sshd: {r}")),
        (Ok(_), other) => other.clone(),
    }
}

fn sshvpn_help_mentions(bin: &str, args: &[&str], needle: &str) -> bool {
    let out = std::process::Command::new(Bin::path(bin))
        .args(args)
        .output()
        .expect("help");
    String::from_utf8_lossy(&out.stdout).contains(needle)
}

#[test]
fn sshvpn_decides_as_openssh() {
    sshvpn_tests::require_root();
    for p in ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing: apt-get install openssh-server openssh-client"
        );
    }
    let started = Instant::now();
    let base = RunDir(PathBuf::from(format!("/run/sshvpn-conformance-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&base.0);
    std::fs::create_dir_all(&base.0).expect("mkdir base");
    let host_key = base.0.join("throwaway_host_key");
    run_ok(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", host_key.to_str().unwrap()],
    );
    let empty_home = base.0.join("home");
    std::fs::create_dir_all(&empty_home).unwrap();
    let env = Env {
        base: base.0.clone(),
        host_key,
        empty_home,
        sshvpn_has_alias: sshvpn_help_mentions("sshvpn", &["connect", "--help"], "--host-key-alias"),
    };
    let fx = fixture::Fixture::new(base.0.join("keys"));
    let cases = corpus::build(&fx);
    let made = started.elapsed().as_secs_f64();

    // One world per implementation; OpenSSH and sshvpn decide each case at the same time.
    let ow = World::new("co");
    let vw = World::new("cv");
    let mut rows = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let dir = env.base.join(format!("case{i:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = run::write_files(&dir, &case.q);
        let (o, v) = std::thread::scope(|s| {
            let o = s.spawn(|| run::openssh(&ow, &env, &dir, case.src, &case.q, &paths));
            let v = s.spawn(|| run::sshvpn(&vw, &env, &dir, case.src, &case.q, &paths));
            (o.join().expect("openssh side"), v.join().expect("sshvpn side"))
        });
        let o = check_krl(case, o);
        let verdict = verdict(case, &o, &v);
        rows.push((case, o, v, verdict));
    }

    // The table.
    let mut out = String::new();
    out.push_str(&format!(
        "\nConformance with OpenSSH {}: {} cases (keys made in {made:.1}s, run in {:.1}s)\n",
        openssh_version(),
        rows.len(),
        started.elapsed().as_secs_f64()
    ));
    out.push_str("| # | group | case | source | OpenSSH | sshvpn | verdict | OpenSSH detail | sshvpn detail |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (i, (case, o, v, verdict)) in rows.iter().enumerate() {
        out.push_str(&format!(
            "| {i} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            case.group,
            case.name,
            case.src.label(),
            o.word(),
            v.word(),
            verdict_text(*verdict),
            o.detail(),
            v.detail()
        ));
    }
    let count = |f: fn(&Verdict) -> bool| rows.iter().filter(|r| f(&r.3)).count();
    out.push_str(&format!(
        "same {}, deliberate {}, skipped {}, DIFFERS {}, ERROR {}\n",
        count(|v| *v == Verdict::Same),
        count(|v| matches!(v, Verdict::Deliberate(_))),
        count(|v| *v == Verdict::Skipped),
        count(|v| *v == Verdict::Differs),
        count(|v| *v == Verdict::Error),
    ));
    println!("{out}");
    if let Ok(path) = std::env::var("SSHVPN_CONFORMANCE_TABLE") {
        let _ = std::fs::write(path, &out);
    }

    assert!(rows.len() >= 60, "the corpus has {} cases, fewer than 60", rows.len());
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| matches!(r.3, Verdict::Differs | Verdict::Error))
        .map(|(c, o, v, verdict)| {
            format!(
                "{} / {}: OpenSSH {} ({}), sshvpn {} ({}): {}",
                c.group,
                c.name,
                o.word(),
                o.detail(),
                v.word(),
                v.detail(),
                verdict_text(*verdict)
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} case(s) where sshvpn does not decide as OpenSSH:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

fn openssh_version() -> String {
    let out = std::process::Command::new("ssh").arg("-V").output().expect("ssh -V");
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}
