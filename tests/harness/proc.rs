//! Processes of the binaries under test, started inside namespaces, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::net::Netns;

/// The project's binaries, next to the test executable's directory (`target/<profile>/`).
pub struct Bin;

impl Bin {
    pub fn path(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        let p = dir.join(name);
        assert!(
            p.exists(),
            "{} is missing: build the binaries first (`cargo build --workspace`, as scripts/test.sh does)",
            p.display()
        );
        p
    }
}

/// A child process with its combined output in a log file.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Process {
    /// Starts the project binary `bin` with `args` inside `ns`, stdout and stderr to `log`.
    pub fn spawn(ns: &Netns, bin: &str, args: &[&str], log: PathBuf) -> Process {
        Self::spawn_cmd(ns, Bin::path(bin).to_str().unwrap(), args, &[], log)
    }

    /// Starts any program with `args` and extra environment `env` inside `ns`.
    pub fn spawn_cmd(ns: &Netns, program: &str, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Process {
        let bin = program;
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Process {
            child,
            log,
            name: format!("{bin}@{}", ns.name),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log otherwise (or if the process exits).
    pub fn wait_for_log(&mut self, needle: &str, secs: f64) {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not log {needle:?} within {secs}s:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits for the process to exit, at most `secs`.
    pub fn wait_exit(&mut self, secs: f64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM, then the exit status (SIGKILL after 5 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        match self.wait_exit(5.0) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                self.child.wait().expect("wait")
            }
        }
    }
}

impl Drop for Process {
    /// SIGTERM first, so that the process undoes what it changed on the host; SIGKILL if it
    /// has not exited after 3 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(3.0).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
