//! The tunnel session state machine, without I/O (in the manner of quinn-proto).
//!
//! Inputs: `handle_control` for each control message, `handle_activity` whenever any frame
//! arrives, `handle_timeout` when the deadline from `poll_timeout` passes. Outputs: control
//! messages to send (`poll_transmit`) and events for the driver (`poll_event`). Time is always
//! passed in; the session never reads a clock, so tests drive it with a simulated one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::control::{CloseCode, Control, Features, Hello, PROTOCOL_VERSION, TunnelConfig};
use super::frame;

/// Timer settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How long the hello/config exchange may take.
    pub handshake_timeout: Duration,
    /// A keepalive is sent this often.
    pub keepalive_interval: Duration,
    /// The peer is declared dead when nothing arrived for this long.
    pub dead_peer_timeout: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            handshake_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(5),
            dead_peer_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Features both sides announced.
    pub features: Features,
    /// The smaller of both MTUs: the largest plain packet either side sends.
    pub mtu: u16,
    /// Largest frame payload the peer accepts (what we may send).
    pub peer_max_payload: usize,
    pub peer_software: String,
    /// The client's instance tag, if it sent one.
    pub peer_instance: Option<String>,
}

impl Negotiated {
    /// Whether GSO offload was agreed, as both ends log it ("offload on" / "offload off").
    pub fn offload(&self) -> Offload {
        Offload(self.features.contains(Features::GSO))
    }
}

/// The offload outcome of a handshake; displays as `offload on` or `offload off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload(pub bool);

impl std::fmt::Display for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0 { "offload on" } else { "offload off" })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Server only: the client said hello; answer with [`Session::accept`] or [`Session::close`].
    ClientHello(Negotiated),
    /// The tunnel is up. On the client, carries the server's configuration.
    Established {
        negotiated: Negotiated,
        config: Option<TunnelConfig>,
    },
    /// A keepalive round trip completed.
    Rtt(Duration),
    /// The peer closed the session.
    Closed { code: CloseCode, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("peer speaks protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("unexpected {0} message")]
    Unexpected(&'static str),
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("peer silent for {0:?} (dead-peer timeout)")]
    DeadPeer(Duration),
    #[error("peer MTU {0} is below the minimum of 576")]
    BadMtu(u16),
}

impl SessionError {
    pub fn close_code(&self) -> CloseCode {
        match self {
            SessionError::HandshakeTimeout(_) | SessionError::DeadPeer(_) => CloseCode::Timeout,
            _ => CloseCode::ProtocolError,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's hello.
    AwaitHello,
    /// Client: hello seen, waiting for config. Server: hello seen, waiting for `accept`.
    AwaitConfig(Negotiated),
    Established(Negotiated),
    Closed,
}

#[derive(Debug)]
pub struct Session {
    role: Role,
    local: Hello,
    timers: Timers,
    state: State,
    started: Instant,
    last_rx: Instant,
    next_keepalive: Instant,
    /// Token and send time of the keepalive in flight.
    pending_ping: Option<(u64, Instant)>,
    next_token: u64,
    transmits: VecDeque<Control>,
    events: VecDeque<Event>,
    last_rtt: Option<Duration>,
}

impl Session {
    pub fn new(role: Role, local: Hello, timers: Timers, now: Instant) -> Session {
        let mut s = Session {
            role,
            timers,
            state: State::AwaitHello,
            started: now,
            last_rx: now,
            next_keepalive: now + timers.keepalive_interval,
            pending_ping: None,
            next_token: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            last_rtt: None,
            local: local.clone(),
        };
        s.transmits.push_back(Control::Hello(local));
        s
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        match &self.state {
            State::Established(n) | State::AwaitConfig(n) => Some(n),
            _ => None,
        }
    }

    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Something arrived from the peer: it is alive.
    pub fn handle_activity(&mut self, now: Instant) {
        self.last_rx = now;
    }

    pub fn handle_control(&mut self, now: Instant, msg: Control) -> Result<(), SessionError> {
        self.last_rx = now;
        match (msg, &self.state) {
            (_, State::Closed) => Ok(()),
            (Control::Close { code, reason }, _) => {
                self.state = State::Closed;
                self.events.push_back(Event::Closed { code, reason });
                Ok(())
            }
            (Control::Hello(peer), State::AwaitHello) => {
                if peer.version != PROTOCOL_VERSION {
                    return Err(SessionError::Version(peer.version));
                }
                if peer.mtu < 576 {
                    return Err(SessionError::BadMtu(peer.mtu));
                }
                let negotiated = Negotiated {
                    features: self.local.features.intersect(peer.features),
                    mtu: self.local.mtu.min(peer.mtu),
                    peer_max_payload: (peer.max_payload as usize).min(frame::MAX_PAYLOAD_LIMIT),
                    peer_software: peer.software,
                    peer_instance: peer.instance,
                };
                if self.role == Role::Server {
                    self.events.push_back(Event::ClientHello(negotiated.clone()));
                }
                self.state = State::AwaitConfig(negotiated);
                Ok(())
            }
            (Control::Hello(_), _) => Err(SessionError::Unexpected("second hello")),
            (Control::Config(cfg), State::AwaitConfig(n)) if self.role == Role::Client => {
                let negotiated = n.clone();
                self.state = State::Established(negotiated.clone());
                self.events.push_back(Event::Established {
                    negotiated,
                    config: Some(cfg),
                });
                Ok(())
            }
            (Control::Config(_), _) => Err(SessionError::Unexpected("config")),
            (Control::Keepalive(token), _) => {
                // Only the latest keepalive is answered: a peer flooding keepalives (and perhaps not
                // reading) can make this queue hold at most one answer.
                self.queue_transmit(Control::KeepaliveAck(token));
                Ok(())
            }
            (Control::KeepaliveAck(token), _) => {
                if let Some((t, sent)) = self.pending_ping
                    && t == token
                {
                    let rtt = now.saturating_duration_since(sent);
                    self.pending_ping = None;
                    self.last_rtt = Some(rtt);
                    self.events.push_back(Event::Rtt(rtt));
                }
                Ok(())
            }
        }
    }

    /// Server: accept the client with this configuration (after [`Event::ClientHello`]).
    pub fn accept(&mut self, config: TunnelConfig) -> Result<(), SessionError> {
        match &self.state {
            State::AwaitConfig(n) if self.role == Role::Server => {
                let negotiated = n.clone();
                self.transmits.push_back(Control::Config(config));
                self.state = State::Established(negotiated.clone());
                self.events.push_back(Event::Established {
                    negotiated,
                    config: None,
                });
                Ok(())
            }
            _ => Err(SessionError::Unexpected("accept")),
        }
    }

    /// Queue a close message; the session sends nothing after it.
    pub fn close(&mut self, code: CloseCode, reason: impl Into<String>) {
        if self.state != State::Closed {
            self.transmits.push_back(Control::Close {
                code,
                reason: reason.into(),
            });
            self.state = State::Closed;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The next instant at which [`Session::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Instant {
        match self.state {
            State::Established(_) => self.next_keepalive.min(self.last_rx + self.timers.dead_peer_timeout),
            State::Closed => self.last_rx + self.timers.dead_peer_timeout,
            _ => self.started + self.timers.handshake_timeout,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        match self.state {
            State::Established(_) => {
                if now >= self.last_rx + self.timers.dead_peer_timeout {
                    return Err(SessionError::DeadPeer(self.timers.dead_peer_timeout));
                }
                if now >= self.next_keepalive {
                    let token = self.next_token;
                    self.next_token += 1;
                    self.pending_ping = Some((token, now));
                    self.queue_transmit(Control::Keepalive(token));
                    self.next_keepalive = now + self.timers.keepalive_interval;
                }
                Ok(())
            }
            State::Closed => Ok(()),
            _ if now >= self.started + self.timers.handshake_timeout => {
                Err(SessionError::HandshakeTimeout(self.timers.handshake_timeout))
            }
            _ => Ok(()),
        }
    }

    /// Queues a control message. Keepalives and their answers replace one of the same kind that
    /// is still waiting, so the queue holds at most one of each whatever the peer sends (bounded
    /// state: hello, config, keepalive, keepalive answer, close).
    fn queue_transmit(&mut self, msg: Control) {
        let same_kind = |m: &Control| {
            matches!(
                (m, &msg),
                (Control::Keepalive(_), Control::Keepalive(_)) | (Control::KeepaliveAck(_), Control::KeepaliveAck(_))
            )
        };
        match self.transmits.iter_mut().find(|m| same_kind(m)) {
            Some(waiting) => *waiting = msg,
            None => self.transmits.push_back(msg),
        }
    }

    /// Control messages waiting to be sent (at most one of each kind).
    pub fn pending_transmits(&self) -> usize {
        self.transmits.len()
    }

    pub fn poll_transmit(&mut self) -> Option<Control> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves every queued control message from one session to the other.
    fn pump(from: &mut Session, to: &mut Session, now: Instant) -> Result<(), SessionError> {
        while let Some(m) = from.poll_transmit() {
            to.handle_control(now, m)?;
        }
        Ok(())
    }

    fn pair(client_features: Features, server_features: Features) -> (Session, Session, Instant) {
        let now = Instant::now();
        let c = Session::new(Role::Client, Hello::new(client_features, 1500), Timers::default(), now);
        let s = Session::new(Role::Server, Hello::new(server_features, 1400), Timers::default(), now);
        (c, s, now)
    }

    fn config() -> TunnelConfig {
        TunnelConfig {
            addr4: Some("10.0.0.2/24".parse().unwrap()),
            mtu: 1400,
            ..Default::default()
        }
    }

    #[test]
    fn handshake_negotiates_features_and_mtu() {
        let (mut c, mut s, now) = pair(Features::GSO, Features::default());
        pump(&mut c, &mut s, now).unwrap();
        let Some(Event::ClientHello(n)) = s.poll_event() else {
            panic!("server saw no hello")
        };
        assert_eq!(n.mtu, 1400);
        assert_eq!(n.features, Features::default());
        s.accept(config()).unwrap();
        pump(&mut s, &mut c, now).unwrap();
        assert!(matches!(s.poll_event(), Some(Event::Established { config: None, .. })));
        match c.poll_event() {
            Some(Event::Established {
                negotiated,
                config: Some(cfg),
            }) => {
                assert_eq!(cfg, config());
                assert!(!negotiated.features.contains(Features::GSO));
                assert_eq!(negotiated.mtu, 1400);
            }
            other => panic!("client not established: {other:?}"),
        }
        assert!(c.is_established() && s.is_established());
    }

    #[test]
    fn gso_needs_both_sides() {
        let (mut c, mut s, now) = pair(Features::GSO, Features::GSO);
        pump(&mut c, &mut s, now).unwrap();
        assert!(s.negotiated().unwrap().features.contains(Features::GSO));
    }

    #[test]
    fn version_mismatch_is_rejected() {
        let (_, mut s, now) = pair(Features::default(), Features::default());
        let mut h = Hello::new(Features::default(), 1500);
        h.version = 9;
        assert_eq!(s.handle_control(now, Control::Hello(h)), Err(SessionError::Version(9)));
    }

    #[test]
    fn config_before_hello_and_config_to_server_are_errors() {
        let (mut c, mut s, now) = pair(Features::default(), Features::default());
        assert!(c.handle_control(now, Control::Config(config())).is_err());
        pump(&mut c, &mut s, now).unwrap();
        assert!(s.handle_control(now, Control::Config(config())).is_err());
    }

    #[test]
    fn handshake_times_out() {
        let (mut c, _, now) = pair(Features::default(), Features::default());
        let deadline = c.poll_timeout();
        assert!(c.handle_timeout(deadline - Duration::from_millis(1)).is_ok());
        assert!(matches!(
            c.handle_timeout(deadline),
            Err(SessionError::HandshakeTimeout(_))
        ));
        assert_eq!(deadline, now + Timers::default().handshake_timeout);
    }

    #[test]
    fn keepalives_measure_rtt_and_detect_dead_peers() {
        let (mut c, mut s, mut now) = pair(Features::default(), Features::default());
        pump(&mut c, &mut s, now).unwrap();
        s.accept(config()).unwrap();
        pump(&mut s, &mut c, now).unwrap();
        while c.poll_event().is_some() {}
        // First keepalive is due after the interval.
        now = c.poll_timeout();
        c.handle_timeout(now).unwrap();
        let ping = c.poll_transmit().unwrap();
        assert!(matches!(ping, Control::Keepalive(_)));
        s.handle_control(now, ping).unwrap();
        let later = now + Duration::from_millis(3);
        pump(&mut s, &mut c, later).unwrap();
        assert_eq!(c.poll_event(), Some(Event::Rtt(Duration::from_millis(3))));
        // Then silence: keepalives keep going out until the dead-peer timeout fires.
        let mut t;
        loop {
            t = c.poll_timeout();
            match c.handle_timeout(t) {
                Ok(()) => while c.poll_transmit().is_some() {},
                Err(e) => {
                    assert_eq!(e, SessionError::DeadPeer(Timers::default().dead_peer_timeout));
                    break;
                }
            }
        }
        assert_eq!(t, later + Timers::default().dead_peer_timeout);
    }

    #[test]
    fn a_keepalive_flood_leaves_one_answer_queued() {
        let (mut c, mut s, mut now) = pair(Features::default(), Features::default());
        pump(&mut c, &mut s, now).unwrap();
        s.accept(config()).unwrap();
        pump(&mut s, &mut c, now).unwrap();
        while s.poll_transmit().is_some() {}
        // A peer that floods keepalives and never reads what we send: whatever it sends, the
        // queue holds one answer (to the latest) and one keepalive of our own at most.
        for token in 0..100_000u64 {
            s.handle_control(now, Control::Keepalive(token)).unwrap();
            if token % 1000 == 0 {
                now += Duration::from_secs(1);
                s.handle_timeout(now).unwrap();
            }
        }
        assert!(s.pending_transmits() <= 2, "{} queued", s.pending_transmits());
        let queued: Vec<Control> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert!(queued.contains(&Control::KeepaliveAck(99_999)), "{queued:?}");
        assert!(queued.iter().any(|m| matches!(m, Control::Keepalive(_))), "{queued:?}");
    }

    #[test]
    fn close_is_reported_and_silences_the_session() {
        let (mut c, mut s, now) = pair(Features::default(), Features::default());
        pump(&mut c, &mut s, now).unwrap();
        s.poll_event();
        s.close(CloseCode::NotAuthorized, "no");
        while s.poll_transmit().is_some_and(|m| !matches!(m, Control::Close { .. })) {}
        c.handle_control(
            now,
            Control::Close {
                code: CloseCode::NotAuthorized,
                reason: "no".into(),
            },
        )
        .unwrap();
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed {
                code: CloseCode::NotAuthorized,
                reason: "no".into()
            })
        );
        assert!(c.is_closed());
    }
}
