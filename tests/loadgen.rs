//! `sshvpn-loadgen`: many sshvpn tunnel clients in one process, for load-testing `sshvpnd`.
//!
//! Each client is a real SSH connection (its own ed25519 key, public-key authentication, a
//! session channel with the `sshvpn` subsystem) running the library's own tunnel driver
//! (`sshvpn_common::tunnel::Tunnel`, as the real client does) over an in-memory TUN
//! (`sshvpn_common::tun::fake::FakeTun`): no TUN device is needed on this side. The clients craft
//! their IPv4/UDP packets, addressed to the other clients' assigned addresses, inject them into
//! their fake TUN, and count what the driver writes to it. The server routes
//! them through its kernel (TUN -> forwarding -> TUN), so its namespace needs ip_forward=1.
//!
//! This is a test tool: it accepts ANY server host key. Never point it at a server you do not
//! control.
//!
//!   sshvpn-loadgen keys --count 500 --dir DIR
//!       writes DIR/seeds (the private keys, one hex ed25519 seed a line) and DIR/authorized_keys
//!       (for sshvpnd --authorized-keys). Then start sshvpnd with those keys.
//!   sshvpn-loadgen run --server 10.200.0.2:4022 --dir DIR [options]
//!       connects the clients, then pushes traffic among them, then disconnects; prints a report
//!       and a last line `RESULT key=value ...`. With --server-pid it samples the server's
//!       /proc/PID/status (VmRSS, VmHWM) and /proc/PID/stat (utime+stime) between the phases.
//!
//! LOADGEN_VERBOSE=1 in the environment logs each retried connect.
//!
//! Exit status: 0 all clients connected and stayed up and loss <= --max-loss; 1 some client
//! failed; 2 only the loss was too high; 3 usage or setup error.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::BufMut;
use clap::{Args, Parser};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, client};
use sshvpn_common::proto::{CloseCode, Role};
use sshvpn_common::tun::fake::FakeTun;
use sshvpn_common::tunnel::{
    ChannelRx, ChannelTx, DataPath, SessionOptions, TunnelStats, WhenFull, feed_queue, packet_queue,
};
use tokio::sync::{Notify, Semaphore, watch};

/// Command line (clap); usage errors exit with status 3, as setup errors do.
#[derive(Debug, Parser)]
#[command(
    name = "sshvpn-loadgen",
    about = "Many sshvpn tunnel clients in one process, for load-testing sshvpnd",
    after_help = "Exit status: 0 all clients connected and stayed up and loss <= --max-loss; 1 some \
                  client failed; 2 only the loss was too high; 3 usage or setup error."
)]
enum Cli {
    /// Write DIR/seeds (the private keys, one hex ed25519 seed a line) and DIR/authorized_keys
    /// (for sshvpnd --authorized-keys).
    Keys {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Connect the clients, push traffic among them, disconnect; print a report and a last line
    /// `RESULT key=value ...`.
    Run(RunOpts),
}

/// Marks the loadgen's packets/// Marks the loadgen's packets: "SVLG".
const MAGIC: [u8; 4] = *b"SVLG";
/// IPv4 header + UDP header + magic, sender, seq, send time.
const MIN_PACKET: usize = 20 + 8 + 4 + 4 + 8 + 8;
const UDP_SRC_PORT: u16 = 40_000;
const UDP_DST_PORT: u16 = 40_001;
/// The kernel reports utime/stime in USER_HZ, which is 100 on Linux.
const USER_HZ: f64 = 100.0;

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version go to stdout with status 0; real usage errors get 3.
            let code = if e.use_stderr() { 3 } else { 0 };
            let _ = e.print();
            return std::process::ExitCode::from(code);
        }
    };
    let result = match cli {
        Cli::Keys { count, dir } => cmd_keys(count, &dir).map(|()| 0),
        Cli::Run(opts) => opts.check().and_then(|()| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(cmd_run(opts))
        }),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("sshvpn-loadgen: {e:#}");
            std::process::ExitCode::from(3)
        }
    }
}

/// A duration in (fractional) seconds.
fn secs(s: &str) -> anyhow::Result<Duration> {
    let v: f64 = s.parse().with_context(|| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).with_context(|| format!("{s:?} is not a valid number of seconds"))
}

// ---------------------------------------------------------------------------------------------
// keys

fn cmd_keys(count: usize, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut seeds = String::new();
    let mut authorized = String::new();
    for i in 0..count {
        let seed: [u8; 32] = rand::random();
        let key = key_from_seed(&seed);
        let public = key.public_key().to_openssh()?;
        authorized.push_str(&format!("{public} loadgen-{i}\n"));
        seeds.push_str(&hex(&seed));
        seeds.push('\n');
    }
    write_private(&dir.join("seeds"), &seeds)?;
    std::fs::write(dir.join("authorized_keys"), authorized)?;
    println!(
        "wrote {count} keys: {} and {}",
        dir.join("seeds").display(),
        dir.join("authorized_keys").display()
    );
    Ok(())
}

fn key_from_seed(seed: &[u8; 32]) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(seed))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn load_keys(dir: &Path, n: Option<usize>) -> anyhow::Result<Vec<PrivateKey>> {
    let path = dir.join("seeds");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let seed = unhex32(line).ok_or_else(|| anyhow!("{}:{}: bad seed", path.display(), i + 1))?;
        keys.push(key_from_seed(&seed));
    }
    if let Some(n) = n {
        if n > keys.len() {
            bail!("--clients {n} but {} holds only {} keys", path.display(), keys.len());
        }
        keys.truncate(n);
    }
    if keys.is_empty() {
        bail!("{} holds no keys", path.display());
    }
    Ok(keys)
}

// ---------------------------------------------------------------------------------------------
// run: options and shared state

#[derive(Debug, Clone, Args)]
struct RunOpts {
    /// The server, ADDR:PORT.
    #[arg(long)]
    server: SocketAddr,
    /// Directory written by `keys`.
    #[arg(long)]
    dir: PathBuf,
    /// Clients to connect (default: every key in DIR/seeds).
    #[arg(long)]
    clients: Option<usize>,
    /// Traffic phase length, seconds.
    #[arg(long, default_value = "30", value_parser = secs)]
    duration: Duration,
    /// Packets per second each client sends.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// IPv4 packet size, 52..1400.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// SSH handshakes in flight at once; keep it below the START of the server's
    /// --max-startups or the server drops some.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Per attempt, TCP connect to subsystem start, seconds.
    #[arg(long, default_value = "30", value_parser = secs)]
    connect_timeout: Duration,
    /// Reconnect attempts per client after a failed connect.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Idle time with everyone connected before the traffic, seconds.
    #[arg(long, default_value = "5", value_parser = secs)]
    settle: Duration,
    /// Sample the server's memory and CPU (same PID namespace): /proc/PID/status (VmRSS, VmHWM)
    /// and /proc/PID/stat (utime+stime) between the phases.
    #[arg(long)]
    server_pid: Option<u32>,
    /// SSH user name.
    #[arg(long, default_value = "loadgen")]
    user: String,
    /// Spread the clients over source addresses from this IPv4 prefix, CIDR.
    #[arg(long, value_parser = parse_v4_net)]
    source_net: Option<(Ipv4Addr, u8)>,
    /// ... K of them, its 1st to Kth host addresses, assigned round robin (they must be
    /// configured on a local interface; default: the kernel's choice, one address for all,
    /// which meets the server's per-source limits).
    #[arg(long, default_value_t = 0)]
    sources: u32,
    /// Fail (exit 2) above this packet loss, percent.
    #[arg(long, default_value_t = 1.0)]
    max_loss: f64,
}

impl RunOpts {
    /// The checks clap cannot express.
    fn check(&self) -> anyhow::Result<()> {
        if !(MIN_PACKET..=1400).contains(&self.size) {
            bail!("--size must be {MIN_PACKET}..=1400");
        }
        if let Some((_, prefix)) = self.source_net {
            let hosts = (1u64 << (32 - u32::from(prefix))).saturating_sub(2);
            if self.sources == 0 || u64::from(self.sources) > hosts {
                bail!("--sources must be 1..={hosts} with --source-net");
            }
        }
        if self.concurrency == 0 || self.rate.is_nan() || self.rate < 0.0 {
            bail!("--concurrency must be positive and --rate not negative");
        }
        Ok(())
    }
}

fn parse_v4_net(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/').context("expected ADDR/PREFIX")?;
    let addr: Ipv4Addr = a.parse().with_context(|| format!("address {a:?}"))?;
    let prefix: u8 = p.parse().with_context(|| format!("prefix length {p:?}"))?;
    if !(8..=30).contains(&prefix) {
        bail!("prefix must be 8..=30");
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    Ok((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

/// The source address of client `idx`, if the clients are spread over several.
fn source_addr(opts: &RunOpts, idx: usize) -> Option<Ipv4Addr> {
    let (base, _) = opts.source_net?;
    Some(Ipv4Addr::from(u32::from(base) + 1 + (idx as u32 % opts.sources)))
}

/// What the clients are told to do.
#[derive(Debug, Clone)]
enum Phase {
    Connecting,
    /// Send packets to these addresses (every connected client's, in client order).
    Traffic(Arc<Vec<Ipv4Addr>>),
    /// Stop sending, keep receiving.
    Drain,
    /// Close the tunnel and disconnect.
    Stop,
}

#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Sessions that ended on their own after connecting (server closed, dead peer, ...).
    dropped: AtomicUsize,
    retries: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    /// Frames that were not one of our packets for this client (e.g. ICMP from the server).
    other: AtomicU64,
    /// Our packets delivered to the wrong client.
    misrouted: AtomicU64,
}

struct Shared {
    opts: RunOpts,
    epoch: Instant,
    counters: Counters,
    /// Assigned address of each client, once connected.
    addrs: Mutex<Vec<Option<Ipv4Addr>>>,
    /// Time at which the last client connected (relative to `epoch`).
    last_connect: Mutex<Duration>,
    errors: Mutex<BTreeMap<String, usize>>,
    progress: Notify,
}

impl Shared {
    fn error(&self, e: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(e)
            .or_default() += 1;
    }
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// What one client measured.
#[derive(Default)]
struct ClientReport {
    connect_time: Option<Duration>,
    /// One-way latencies of the packets it received, in microseconds.
    latencies_us: Vec<u32>,
}

// ---------------------------------------------------------------------------------------------
// one client

/// Test tool: any host key is accepted.
struct AcceptAnyHostKey;

impl client::Handler for AcceptAnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

type Handle = client::Handle<AcceptAnyHostKey>;

/// TCP connect, SSH handshake, public-key authentication, session channel, subsystem.
async fn ssh_connect(
    opts: &RunOpts,
    source: Option<Ipv4Addr>,
    config: Arc<client::Config>,
    key: &PrivateKey,
) -> anyhow::Result<(Handle, ChannelReadHalf, ChannelWriteHalf<client::Msg>)> {
    let tcp = match source {
        None => tokio::net::TcpStream::connect(opts.server)
            .await
            .context("TCP connect")?,
        Some(src) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket
                .bind(SocketAddr::from((src, 0)))
                .with_context(|| format!("binding to source address {src}"))?;
            socket
                .connect(opts.server)
                .await
                .with_context(|| format!("TCP connect from {src}"))?
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut handle = client::connect_stream(config, tcp, AcceptAnyHostKey)
        .await
        .context("SSH handshake")?;
    let signer = PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None);
    let auth = handle
        .authenticate_publickey(opts.user.clone(), signer)
        .await
        .context("authentication")?;
    if !auth.success() {
        bail!("server refused the key (not in its authorized keys?)");
    }
    let mut channel = handle
        .channel_open_session()
        .await
        .context("opening the session channel")?;
    channel
        .request_subsystem(true, sshvpn_common::ssh::SUBSYSTEM)
        .await
        .context("requesting the subsystem")?;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) => {
                bail!("server refused the subsystem (--max-clients reached?)")
            }
            Some(_) => continue,
            None => bail!("server closed the channel before the subsystem started"),
        }
    }
    let (rx, tx) = channel.split();
    Ok((handle, rx, tx))
}

async fn client_task(
    idx: usize,
    key: PrivateKey,
    shared: Arc<Shared>,
    config: Arc<client::Config>,
    handshakes: Arc<Semaphore>,
    phase: watch::Receiver<Phase>,
) -> ClientReport {
    let mut report = ClientReport::default();
    let permit = handshakes.acquire_owned().await.ok();
    let started = Instant::now();
    let mut attempt = 0;
    let result = loop {
        let r = tokio::time::timeout(
            shared.opts.connect_timeout,
            ssh_connect(&shared.opts, source_addr(&shared.opts, idx), config.clone(), &key),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow!("timed out")));
        match r {
            Ok(c) => break Ok(c),
            Err(e) if attempt < shared.opts.retries => {
                attempt += 1;
                shared.counters.retries.fetch_add(1, Relaxed);
                log_retry(idx, &e);
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(e) => break Err(e),
        }
    };
    let (handle, rx, tx) = match result {
        Ok(c) => c,
        Err(e) => {
            shared.error(format!("connect: {e:#}"));
            shared.counters.failed.fetch_add(1, Relaxed);
            shared.progress.notify_one();
            return report;
        }
    };
    let mut tunnel = ClientTunnel {
        idx,
        shared: shared.clone(),
        addr: None,
        targets: None,
        pos: 0,
        seq: 0,
        latencies_us: Vec::new(),
    };
    let outcome = tunnel.run(rx, tx, phase, permit, started, &mut report).await;
    report.latencies_us = std::mem::take(&mut tunnel.latencies_us);
    match outcome {
        Ok(()) => {}
        Err(e) => {
            let established = tunnel.addr.is_some();
            shared.error(if established {
                format!("session: {e:#}")
            } else {
                format!("tunnel handshake: {e:#}")
            });
            if established {
                shared.counters.dropped.fetch_add(1, Relaxed);
            } else {
                shared.counters.failed.fetch_add(1, Relaxed);
                shared.progress.notify_one();
            }
        }
    }
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "load test done", "en")
        .await;
    report
}

fn log_retry(idx: usize, e: &anyhow::Error) {
    if std::env::var_os("LOADGEN_VERBOSE").is_some() {
        eprintln!("client {idx}: retrying after: {e:#}");
    }
}

/// Outbound queue of one client (TUN reader to driver), as the real client's.
const OUTBOUND_PACKETS: usize = 1024;
const OUTBOUND_BYTES: usize = 1 << 20;

/// One client's traffic: packets it injects into its fake TUN and packets the driver writes there.
struct ClientTunnel {
    idx: usize,
    shared: Arc<Shared>,
    /// Assigned address, once the config arrived.
    addr: Option<Ipv4Addr>,
    targets: Option<Arc<Vec<Ipv4Addr>>>,
    /// This client's position in `targets`.
    pos: usize,
    seq: u64,
    latencies_us: Vec<u32>,
}

/// Resolves once the phase is [`Phase::Stop`] (or the test is gone).
async fn stopped(mut phase: watch::Receiver<Phase>) {
    loop {
        if matches!(*phase.borrow_and_update(), Phase::Stop) {
            return;
        }
        if phase.changed().await.is_err() {
            return;
        }
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ClientTunnel {
    /// Handshake, then the data phase with the library's driver over a fake TUN, until the test
    /// stops (`Ok`) or the session ends (`Err`).
    async fn run(
        &mut self,
        rx: ChannelReadHalf,
        tx: ChannelWriteHalf<client::Msg>,
        mut phase: watch::Receiver<Phase>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        started: Instant,
        report: &mut ClientReport,
    ) -> anyhow::Result<()> {
        let mut tunnel =
            sshvpn_common::tunnel::open(Role::Client, SessionOptions::default(), ChannelRx(rx), ChannelTx(tx));
        let established = tokio::select! {
            r = tunnel.handshake(|_| Err((CloseCode::ProtocolError, "not a server".into()))) => r?,
            () = stopped(phase.clone()) => bail!("still not established when the test ended"),
        };
        let addr = established
            .config
            .and_then(|c| c.addr4)
            .and_then(|a| match a.addr() {
                std::net::IpAddr::V4(v4) => Some(v4),
                _ => None,
            })
            .ok_or_else(|| anyhow!("config without an IPv4 address"))?;
        self.addr = Some(addr);
        report.connect_time = Some(started.elapsed());
        self.shared.addrs.lock().unwrap_or_else(|e| e.into_inner())[self.idx] = Some(addr);
        *self.shared.last_connect.lock().unwrap_or_else(|e| e.into_inner()) = self.shared.epoch.elapsed();
        self.shared.counters.connected.fetch_add(1, Relaxed);
        self.shared.progress.notify_one();
        // Let the next client start its handshake.
        drop(permit);

        let tun = Arc::new(FakeTun::new("loadgen", false));
        let stats = Arc::new(TunnelStats::default());
        let (queue, outbound) = packet_queue(OUTBOUND_PACKETS, OUTBOUND_BYTES);
        let _feeder = AbortOnDrop(tokio::spawn({
            let (tun, stats) = (tun.clone(), stats.clone());
            async move { feed_queue(&*tun, &queue, &stats, WhenFull::Wait).await }
        }));
        let data = DataPath {
            tun: tun.clone(),
            outbound: outbound.into(),
            // Whatever the server sends is counted (misrouted, other), not filtered.
            admit: Box::new(|_| true),
            stats: stats.clone(),
            icmp_sources: Vec::new(),
        };
        let stop = {
            let phase = phase.clone();
            async move {
                stopped(phase).await;
                (CloseCode::Normal, "load test finished".to_string())
            }
        };
        let session = tunnel.run(data, stop);
        tokio::pin!(session);

        let period = if self.shared.opts.rate > 0.0 {
            Some(Duration::from_secs_f64(1.0 / self.shared.opts.rate))
        } else {
            None
        };
        let mut ticker: Option<tokio::time::Interval> = None;
        let result = loop {
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = &mut session => break r.map_err(anyhow::Error::from),
                pkt = tun.next_written() => self.receive_packet(&pkt),
                _ = tick => {
                    if let Some(pkt) = self.next_packet() {
                        tun.inject(pkt);
                    }
                }
                changed = phase.changed() => {
                    let p = if changed.is_ok() { phase.borrow_and_update().clone() } else { Phase::Stop };
                    match p {
                        Phase::Connecting | Phase::Stop => {}
                        Phase::Traffic(targets) => {
                            if let Some(period) = period {
                                self.pos = targets.iter().position(|a| *a == addr).unwrap_or(0);
                                self.targets = Some(targets);
                                // Spread the clients' sends evenly over one period.
                                let n = self.shared.addrs.lock().unwrap_or_else(|e| e.into_inner()).len();
                                let offset = period.mul_f64(self.idx as f64 / n.max(1) as f64);
                                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                                ticker = Some(t);
                            }
                        }
                        Phase::Drain => ticker = None,
                    }
                }
            }
        };
        // Packets the driver dropped before the TUN (not IP, offloaded, link-local) are not ours.
        let st = stats.snapshot();
        let c = &self.shared.counters;
        c.other.fetch_add(st.drop_malformed + st.drop_local_scope, Relaxed);
        for pkt in tun.take_written() {
            self.receive_packet(&pkt);
        }
        result
    }

    /// One UDP packet to the next client in turn.
    fn next_packet(&mut self) -> Option<Vec<u8>> {
        let (Some(src), Some(targets)) = (self.addr, self.targets.as_ref()) else {
            return None;
        };
        let m = targets.len();
        let dst = if m > 1 {
            targets[(self.pos + 1 + (self.seq as usize % (m - 1))) % m]
        } else {
            targets[0]
        };
        let size = self.shared.opts.size;
        let mut out = Vec::with_capacity(size);
        // IPv4 header
        out.put_u8(0x45);
        out.put_u8(0);
        out.put_u16(size as u16);
        out.put_u16(self.seq as u16);
        out.put_u16(0x4000); // don't fragment
        out.put_u8(64);
        out.put_u8(17); // UDP
        out.put_u16(0); // checksum, filled in below
        out.put_slice(&src.octets());
        out.put_slice(&dst.octets());
        let csum = ipv4_checksum(&out[..20]);
        out[10..12].copy_from_slice(&csum.to_be_bytes());
        // UDP header; a zero checksum means "none" for UDP over IPv4.
        out.put_u16(UDP_SRC_PORT);
        out.put_u16(UDP_DST_PORT);
        out.put_u16((size - 20) as u16);
        out.put_u16(0);
        // payload
        out.put_slice(&MAGIC);
        out.put_u32(self.idx as u32);
        out.put_u64(self.seq);
        out.put_u64(self.shared.now_us());
        out.put_bytes(0, size - MIN_PACKET);
        self.seq += 1;
        self.shared.counters.sent.fetch_add(1, Relaxed);
        Some(out)
    }

    fn receive_packet(&mut self, p: &[u8]) {
        let c = &self.shared.counters;
        let ours = p.len() >= MIN_PACKET
            && p[0] == 0x45
            && p[9] == 17
            && p[20..22] == UDP_SRC_PORT.to_be_bytes()
            && p[28..32] == MAGIC;
        if !ours {
            c.other.fetch_add(1, Relaxed);
            return;
        }
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        if Some(dst) != self.addr {
            c.misrouted.fetch_add(1, Relaxed);
            return;
        }
        c.received.fetch_add(1, Relaxed);
        let sent_us = u64::from_be_bytes(p[44..52].try_into().unwrap_or_default());
        let lat = self.shared.now_us().saturating_sub(sent_us);
        self.latencies_us.push(lat.min(u64::from(u32::MAX)) as u32);
    }
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---------------------------------------------------------------------------------------------
// process sampling

#[derive(Debug, Clone, Copy)]
struct ProcSample {
    at: Instant,
    rss_kib: u64,
    hwm_kib: u64,
    cpu_ticks: u64,
    threads: u64,
    fds: usize,
}

fn sample_proc(pid: &str) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the process running?)"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may contain spaces: state is field 3.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let num = |field_no: usize| -> u64 { rest.get(field_no - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(ProcSample {
        at: Instant::now(),
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_ticks: num(14) + num(15),
        threads: num(20),
        fds,
    })
}

fn cpu_percent(a: &ProcSample, b: &ProcSample) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 / USER_HZ / wall * 100.0
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

// ---------------------------------------------------------------------------------------------
// run

async fn cmd_run(opts: RunOpts) -> anyhow::Result<u8> {
    let keys = load_keys(&opts.dir, opts.clients)?;
    let n = keys.len();
    let server_pid = opts.server_pid.map(|p| p.to_string());
    let sample = |what: &str| -> Option<ProcSample> {
        let pid = server_pid.as_deref()?;
        match sample_proc(pid) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("cannot sample the server {what}: {e:#}");
                None
            }
        }
    };
    let me = || sample_proc("self").ok();

    let config = Arc::new(sshvpn_common::ssh::client_config());
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        epoch: Instant::now(),
        counters: Counters::default(),
        addrs: Mutex::new(vec![None; n]),
        last_connect: Mutex::new(Duration::ZERO),
        errors: Mutex::new(BTreeMap::new()),
        progress: Notify::new(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let handshakes = Arc::new(Semaphore::new(opts.concurrency));

    println!(
        "loadgen: {n} clients{} -> {} (concurrency {}, {} pkt/s x {} B each for {:.0} s)",
        match opts.source_net {
            Some((base, prefix)) => format!(" from {} addresses of {base}/{prefix}", opts.sources),
            None => String::new(),
        },
        opts.server,
        opts.concurrency,
        opts.rate,
        opts.size,
        opts.duration.as_secs_f64()
    );
    let s_base = sample("before connecting");
    let me_base = me();
    // VmHWM misses peaks that glibc hands back with madvise, so also poll VmRSS for its maximum.
    let peak_rss = Arc::new(AtomicU64::new(0));
    let peak_fds = Arc::new(AtomicU64::new(0));
    if let Some(pid) = server_pid.clone() {
        let (peak_rss, peak_fds) = (peak_rss.clone(), peak_fds.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                let Ok(s) = tokio::task::spawn_blocking({
                    let pid = pid.clone();
                    move || sample_proc(&pid)
                })
                .await
                else {
                    return;
                };
                let Ok(s) = s else { return };
                peak_rss.fetch_max(s.rss_kib, Relaxed);
                peak_fds.fetch_max(s.fds as u64, Relaxed);
            }
        });
    }

    // Phase 1: connect everyone.
    let t0 = Instant::now();
    let tasks: Vec<_> = keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            tokio::spawn(client_task(
                i,
                key,
                shared.clone(),
                config.clone(),
                handshakes.clone(),
                phase_rx.clone(),
            ))
        })
        .collect();
    drop(phase_rx);
    let mut last_print = Instant::now();
    // Sampled whenever another client came up: the last one bounds the connect phase's CPU time
    // (the phase itself may end much later, when the last failing client gives up).
    let mut s_last_connect = None;
    let mut seen = 0;
    loop {
        let up = shared.counters.connected.load(Relaxed);
        if up != seen {
            seen = up;
            s_last_connect = sample("while connecting");
        }
        let done = up + shared.counters.failed.load(Relaxed);
        if done >= n {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), shared.progress.notified()).await;
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            println!(
                "  connecting: {} up, {} failed after {:.1} s",
                shared.counters.connected.load(Relaxed),
                shared.counters.failed.load(Relaxed),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let connected = shared.counters.connected.load(Relaxed);
    let connect_failed = shared.counters.failed.load(Relaxed);
    let connect_wall = shared
        .last_connect
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .saturating_sub(t0.duration_since(shared.epoch));
    let s_connected = sample("after connecting");
    let me_connected = me();
    println!(
        "connected {connected}/{n} in {:.2} s ({:.1} clients/s), {connect_failed} failed",
        connect_wall.as_secs_f64(),
        connected as f64 / connect_wall.as_secs_f64().max(1e-9)
    );

    // Phase 2: everyone connected, idle (keepalives only).
    tokio::time::sleep(opts.settle).await;
    let s_idle = sample("idle");

    // Phase 3: traffic among the clients.
    let targets: Vec<Ipv4Addr> = shared
        .addrs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .flatten()
        .copied()
        .collect();
    let t_traffic = Instant::now();
    let _ = phase_tx.send(Phase::Traffic(Arc::new(targets)));
    let mut next_print = t_traffic + Duration::from_secs(5);
    while t_traffic.elapsed() < opts.duration {
        let left = opts.duration.saturating_sub(t_traffic.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        if Instant::now() >= next_print {
            next_print += Duration::from_secs(5);
            println!(
                "  traffic: {:.0} s, sent {} received {}, {} sessions dropped",
                t_traffic.elapsed().as_secs_f64(),
                shared.counters.sent.load(Relaxed),
                shared.counters.received.load(Relaxed),
                shared.counters.dropped.load(Relaxed)
            );
        }
    }
    let s_loaded = sample("after the traffic");
    let me_loaded = me();
    let _ = phase_tx.send(Phase::Drain);
    // Packets still in flight (server queues, kernel) get two seconds to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let traffic_wall = t_traffic.elapsed();

    // Phase 4: disconnect and collect.
    let _ = phase_tx.send(Phase::Stop);
    let mut connect_times = Vec::new();
    let mut latencies = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(30), t).await {
            Ok(Ok(r)) => {
                if let Some(c) = r.connect_time {
                    connect_times.push(c.as_micros().min(u128::from(u32::MAX)) as u32);
                }
                latencies.extend(r.latencies_us);
            }
            Ok(Err(e)) => shared.error(format!("client task panicked: {e}")),
            Err(_) => shared.error("client did not finish within 30 s of the stop".into()),
        }
    }
    // Give the server time to tear the sessions down, then see what memory it kept.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s_after = sample("after disconnecting");

    // Report.
    let c = &shared.counters;
    let sent = c.sent.load(Relaxed);
    let received = c.received.load(Relaxed);
    let lost = sent.saturating_sub(received);
    let loss_pct = if sent > 0 {
        lost as f64 * 100.0 / sent as f64
    } else {
        0.0
    };
    let dropped = c.dropped.load(Relaxed);
    let errors = connect_failed + dropped;
    connect_times.sort_unstable();
    latencies.sort_unstable();
    let ms = |us: f64| us / 1000.0;
    let mut kv: Vec<(&str, String)> = vec![
        ("clients", n.to_string()),
        ("connected", connected.to_string()),
        ("connect_failed", connect_failed.to_string()),
        ("sessions_dropped", dropped.to_string()),
        ("errors", errors.to_string()),
        ("retries", c.retries.load(Relaxed).to_string()),
        ("connect_s", format!("{:.2}", connect_wall.as_secs_f64())),
        (
            "connect_rate",
            format!("{:.1}", connected as f64 / connect_wall.as_secs_f64().max(1e-9)),
        ),
        ("connect_ms_p50", format!("{:.0}", ms(percentile(&connect_times, 50.0)))),
        ("connect_ms_p99", format!("{:.0}", ms(percentile(&connect_times, 99.0)))),
        ("sent", sent.to_string()),
        ("received", received.to_string()),
        ("lost", lost.to_string()),
        ("loss_pct", format!("{loss_pct:.3}")),
        ("misrouted", c.misrouted.load(Relaxed).to_string()),
        ("other_rx", c.other.load(Relaxed).to_string()),
        ("pps", format!("{:.0}", received as f64 / traffic_wall.as_secs_f64())),
        ("latency_ms_p50", format!("{:.2}", ms(percentile(&latencies, 50.0)))),
        ("latency_ms_p99", format!("{:.2}", ms(percentile(&latencies, 99.0)))),
        (
            "latency_ms_max",
            format!("{:.2}", ms(latencies.last().copied().unwrap_or(0).into())),
        ),
    ];
    let per = |kib: u64| kib as f64 / connected.max(1) as f64;
    if let (Some(b), Some(cn), Some(i), Some(l), Some(a)) = (s_base, s_connected, s_idle, s_loaded, s_after) {
        let delta = |s: &ProcSample| s.rss_kib.saturating_sub(b.rss_kib);
        kv.extend([
            ("server_rss_base_kib", b.rss_kib.to_string()),
            ("server_rss_connected_kib", cn.rss_kib.to_string()),
            ("server_rss_idle_kib", i.rss_kib.to_string()),
            ("server_rss_loaded_kib", l.rss_kib.to_string()),
            ("server_rss_after_kib", a.rss_kib.to_string()),
            ("server_hwm_kib", a.hwm_kib.to_string()),
            ("server_rss_peak_kib", peak_rss.load(Relaxed).to_string()),
            (
                "server_rss_peak_delta_per_client_kib",
                format!("{:.1}", per(peak_rss.load(Relaxed).saturating_sub(b.rss_kib))),
            ),
            ("server_fds_peak", peak_fds.load(Relaxed).to_string()),
            ("server_rss_per_client_kib", format!("{:.1}", per(l.rss_kib))),
            ("server_rss_delta_per_client_kib", format!("{:.1}", per(delta(&l)))),
            ("server_rss_idle_delta_per_client_kib", format!("{:.1}", per(delta(&i)))),
            (
                "server_hwm_delta_per_client_kib",
                format!("{:.1}", per(a.hwm_kib.saturating_sub(b.hwm_kib))),
            ),
            (
                "server_cpu_connect_pct",
                format!("{:.1}", cpu_percent(&b, &s_last_connect.unwrap_or(cn))),
            ),
            ("server_cpu_idle_pct", format!("{:.1}", cpu_percent(&cn, &i))),
            ("server_cpu_traffic_pct", format!("{:.1}", cpu_percent(&i, &l))),
            ("server_threads", l.threads.to_string()),
            ("server_fds_base", b.fds.to_string()),
            ("server_fds_connected", l.fds.to_string()),
            ("server_fds_after", a.fds.to_string()),
        ]);
    }
    if let (Some(b), Some(cn), Some(l)) = (me_base, me_connected, me_loaded) {
        kv.extend([
            ("loadgen_rss_kib", l.rss_kib.to_string()),
            ("loadgen_cpu_connect_pct", format!("{:.1}", cpu_percent(&b, &cn))),
            ("loadgen_cpu_traffic_pct", format!("{:.1}", cpu_percent(&cn, &l))),
        ]);
    }
    let get = |k: &str| {
        kv.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "-".into())
    };

    println!();
    println!(
        "=== sshvpn load test: {n} clients, {:.0} s traffic ===",
        opts.duration.as_secs_f64()
    );
    println!(
        "clients connected      {connected}/{n}  ({connect_failed} failed to connect, {dropped} dropped later, {} retries)",
        get("retries")
    );
    println!(
        "connect rate           {} clients/s ({} s for all; per client p50 {} ms, p99 {} ms; concurrency {})",
        get("connect_rate"),
        get("connect_s"),
        get("connect_ms_p50"),
        get("connect_ms_p99"),
        opts.concurrency
    );
    println!(
        "packets                sent {sent}, received {received}, lost {lost} ({loss_pct:.3}%), misrouted {}, other {}",
        get("misrouted"),
        get("other_rx")
    );
    println!(
        "latency (one way)      p50 {} ms, p99 {} ms, max {} ms; {} pkt/s delivered",
        get("latency_ms_p50"),
        get("latency_ms_p99"),
        get("latency_ms_max"),
        get("pps")
    );
    if s_base.is_some() {
        println!(
            "server RSS             base {} KiB, connected+idle {} KiB, end of traffic {} KiB, after disconnect {} KiB; peak {} KiB polled, {} KiB VmHWM",
            get("server_rss_base_kib"),
            get("server_rss_idle_kib"),
            get("server_rss_loaded_kib"),
            get("server_rss_after_kib"),
            get("server_rss_peak_kib"),
            get("server_hwm_kib")
        );
        println!(
            "server RSS per client  {} KiB total/clients; above base: {} KiB end of traffic, {} KiB idle, {} KiB peak polled, {} KiB peak VmHWM",
            get("server_rss_per_client_kib"),
            get("server_rss_delta_per_client_kib"),
            get("server_rss_idle_delta_per_client_kib"),
            get("server_rss_peak_delta_per_client_kib"),
            get("server_hwm_delta_per_client_kib")
        );
        println!(
            "server CPU             connecting {}%, idle {}%, traffic {}% (100% = one core); {} threads; fds {} before, {} connected, {} peak, {} after",
            get("server_cpu_connect_pct"),
            get("server_cpu_idle_pct"),
            get("server_cpu_traffic_pct"),
            get("server_threads"),
            get("server_fds_base"),
            get("server_fds_connected"),
            get("server_fds_peak"),
            get("server_fds_after")
        );
    }
    println!(
        "loadgen                RSS {} KiB, CPU connecting {}%, traffic {}%",
        get("loadgen_rss_kib"),
        get("loadgen_cpu_connect_pct"),
        get("loadgen_cpu_traffic_pct")
    );
    let errs = shared.errors.lock().unwrap_or_else(|e| e.into_inner());
    if !errs.is_empty() {
        println!("errors:");
        for (e, count) in errs.iter() {
            println!("  {count} x {e}");
        }
    }
    println!(
        "RESULT {}",
        kv.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    );
    Ok(if errors > 0 || connected < n {
        1
    } else if loss_pct > opts.max_loss {
        2
    } else {
        0
    })
}
