//! The corpus: every case names its files, the source address and what is asked. The expected
//! answer is not written here: the real OpenSSH gives it at run time.

use std::path::{Path, PathBuf};

use crate::fixture::{Fixture, cert_of};
use crate::run::{HostFiles, Question, ServerFiles};
use crate::world::Src;

/// Where sshvpn differs from OpenSSH on purpose (docs/conformance.md lists them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deliberate {
    /// `command=` keys and `force-command` certificates: sshd runs the command (and grants the
    /// tunnel the client asks for next to it); a tunnel cannot honour a forced command, so
    /// sshvpn refuses the credential rather than grant more than the admin allowed.
    ForcedCommand,
    /// `restrict`: the installed OpenSSH 9.2 grants `ssh -w` tunnels to restricted keys;
    /// OpenSSH since commit d322f2ccf (serverloop.c `server_request_tun` checks
    /// `auth_opts->restricted`, in 10.x) refuses them. sshvpn may follow either rule.
    RestrictUpstream,
    /// StrictModes: Debian's OpenSSH (user-group-modes patch) accepts a group-writable file
    /// whose group holds only its owner; upstream `safe_path` (and sshvpnd) refuse any group or
    /// world write bit.
    DebianGroupModes,
    /// An option column ending in a comma: sshd 9.2 lets the line log in; upstream's own
    /// option-parser tests (regress/unittests/authopt) call it invalid, and sshvpnd follows them.
    UpstreamOptionParser,
    /// `verify-required` on a certificate: sshd ignores it for non-FIDO keys; russh does not
    /// give sshvpnd the signature's flags, so it refuses every certificate that demands them.
    VerifyRequiredRefused,
    /// A bad line in the trusted-CA file: sshd stops reading at it (later CAs are lost);
    /// sshvpnd makes only that line unusable (warned with FILE:LINE).
    BadLineSkipped,
    /// A known_hosts entry without `[host]:port` for a server on port 2222: ssh 9.2 accepted it
    /// in this setup; sshvpn looks such a server up only as `[host]:port` (sshd(8)'s documented
    /// format), so the bare entry is not used.
    PortNeedsBrackets,
    /// A host certificate with no principals: ssh treats it as valid for every host; sshvpn
    /// refuses it (a CA slip must not certify a key for every hub).
    NoPrincipalsRefused,
}

impl Deliberate {
    pub fn reason(self) -> &'static str {
        match self {
            Deliberate::ForcedCommand => "forced command: sshvpn grants no tunnel",
            Deliberate::RestrictUpstream => "restrict: upstream sshd (d322f2ccf) refuses tunnels",
            Deliberate::DebianGroupModes => "StrictModes: upstream rule, not Debian's group patch",
            Deliberate::UpstreamOptionParser => "trailing comma: invalid per upstream's parser tests",
            Deliberate::VerifyRequiredRefused => "verify-required: refused, sk flags not checkable",
            Deliberate::BadLineSkipped => "bad CA line: only that line is unusable",
            Deliberate::PortNeedsBrackets => "port 2222: only [host]:port entries are used",
            Deliberate::NoPrincipalsRefused => "host certificate without principals: refused",
        }
    }
}

pub struct Case {
    pub name: String,
    pub group: &'static str,
    pub src: Src,
    pub q: Question,
    pub deliberate: Option<Deliberate>,
    /// KRL cases: (KRL, the certificate or key presented), also asked of `ssh-keygen -Q`.
    pub krl_query: Option<(PathBuf, PathBuf)>,
}

struct Builder {
    cases: Vec<Case>,
}

impl Builder {
    fn push(&mut self, group: &'static str, name: &str, src: Src, q: Question) -> &mut Case {
        self.cases.push(Case {
            name: name.to_string(),
            group,
            src,
            q,
            deliberate: None,
            krl_query: None,
        });
        self.cases.last_mut().unwrap()
    }

    /// An authorized_keys case: `text` is the whole file, `identity` logs in as root.
    fn ak(&mut self, group: &'static str, name: &str, src: Src, text: String, identity: &Path) -> &mut Case {
        let q = Question::Server(ServerFiles {
            authorized_keys: text,
            identity: identity.to_path_buf(),
            ..Default::default()
        });
        self.push(group, name, src, q)
    }

    /// A user certificate case: the CAs file `cas`, no authorized keys, optional revocation file.
    fn cert(
        &mut self,
        group: &'static str,
        name: &str,
        src: Src,
        cas: String,
        identity: &Path,
        revoked: Option<PathBuf>,
    ) -> &mut Case {
        let q = Question::Server(ServerFiles {
            authorized_keys: "# certificates only\n".into(),
            trusted_cas: Some(cas),
            revoked,
            identity: identity.to_path_buf(),
            ..Default::default()
        });
        self.push(group, name, src, q)
    }

    #[allow(clippy::too_many_arguments)]
    fn host(
        &mut self,
        name: &str,
        src: Src,
        host_key: &Path,
        cert: Option<&Path>,
        known_hosts: String,
        host: &str,
        port: u16,
        identity: &Path,
    ) -> &mut Case {
        let q = Question::Host(HostFiles {
            host_key: host_key.to_path_buf(),
            host_cert: cert.map(Path::to_path_buf),
            known_hosts,
            host: host.to_string(),
            port,
            alias: None,
            identity: identity.to_path_buf(),
        });
        self.push("known_hosts", name, src, q)
    }
}

pub fn build(fx: &Fixture) -> Vec<Case> {
    let mut b = Builder { cases: Vec::new() };
    authorized_keys(fx, &mut b);
    authopt_strings(fx, &mut b);
    user_certificates(fx, &mut b);
    krls(fx, &mut b);
    known_hosts(fx, &mut b);
    b.cases
}

fn authorized_keys(fx: &Fixture, b: &mut Builder) {
    let g = "authorized_keys";
    let ka = fx.key("ka", "ed25519");
    let kb = fx.key("kb", "ed25519");
    let kec = fx.key("kec", "ecdsa");
    let krsa = fx.key("krsa", "rsa");
    let (pa, pb) = (fx.public(&ka), fx.public(&kb));
    let line = |opts: &str| format!("{opts} {pa}\n");
    use Src::*;

    b.ak(g, "plain key", A4, format!("{pa}\n"), &ka);
    b.ak(g, "ecdsa key", A4, format!("{}\n", fx.public(&kec)), &kec);
    b.ak(g, "rsa key", A4, format!("{}\n", fx.public(&krsa)), &krsa);
    b.ak(g, "key not listed", A4, format!("{pb}\n"), &ka);
    b.ak(g, "empty file", A4, String::new(), &ka);
    b.ak(
        g,
        "comments, blank lines, leading space",
        A4,
        format!("# team keys\n\n   \n  {pa} laptop\n"),
        &ka,
    );
    b.ak(
        g,
        "key with long comment",
        A4,
        format!("{pa} carol@laptop with spaces in comment\n"),
        &ka,
    );
    b.ak(g, "CRLF line ending", A4, format!("{pa}\r\n"), &ka);
    b.ak(g, "no final newline", A4, pa.clone(), &ka);
    b.ak(g, "from= exact address", A4, line("from=\"10.77.1.2\""), &ka);
    b.ak(
        g,
        "from= exact address, other source",
        B4,
        line("from=\"10.77.1.2\""),
        &ka,
    );
    b.ak(g, "from= CIDR", A4, line("from=\"10.77.1.0/24\""), &ka);
    b.ak(g, "from= CIDR with host bits", A4, line("from=\"10.77.1.9/24\""), &ka);
    b.ak(g, "from= CIDR /32", A4, line("from=\"10.77.1.2/32\""), &ka);
    b.ak(
        g,
        "from= negation of the source",
        A4,
        line("from=\"10.77.0.0/16,!10.77.1.2\""),
        &ka,
    );
    b.ak(
        g,
        "from= negation, other source",
        B4,
        line("from=\"10.77.0.0/16,!10.77.1.2\""),
        &ka,
    );
    b.ak(g, "from= negation only", B4, line("from=\"!10.77.1.2\""), &ka);
    b.ak(g, "from= negated CIDR", A4, line("from=\"*,!10.77.1.0/24\""), &ka);
    b.ak(g, "from= wildcard *", A4, line("from=\"*\""), &ka);
    b.ak(g, "from= wildcard 10.77.*", B4, line("from=\"10.77.*\""), &ka);
    b.ak(g, "from= wildcard ?", A4, line("from=\"10.77.?.2\""), &ka);
    b.ak(g, "from= wildcard no match", A4, line("from=\"10.78.*\""), &ka);
    b.ak(g, "from= host name (no DNS)", A4, line("from=\"hub.example\""), &ka);
    b.ak(
        g,
        "from= list, second matches",
        B4,
        line("from=\"10.77.1.2,10.77.2.2\""),
        &ka,
    );
    b.ak(g, "from= IPv6 CIDR", A6, line("from=\"fd00:77:1::/64\""), &ka);
    b.ak(g, "from= IPv6 address", A6, line("from=\"fd00:77:1::2\""), &ka);
    b.ak(g, "from= IPv4 only, IPv6 source", A6, line("from=\"10.77.1.2\""), &ka);
    b.ak(g, "from= unquoted", A4, line("from=10.77.1.2"), &ka);
    b.ak(g, "FROM= upper case option", A4, line("FROM=\"10.77.1.2\""), &ka);
    b.ak(
        g,
        "from= and expiry-time= combined",
        A4,
        line("from=\"10.77.1.0/24\",expiry-time=\"20991231\""),
        &ka,
    );
    b.ak(g, "expiry-time= past", A4, line("expiry-time=\"20200101\""), &ka);
    b.ak(g, "expiry-time= future date", A4, line("expiry-time=\"20991231\""), &ka);
    b.ak(
        g,
        "expiry-time= future with seconds, UTC",
        A4,
        line("expiry-time=\"20991231235959Z\""),
        &ka,
    );
    b.ak(g, "expiry-time= malformed", A4, line("expiry-time=\"209912\""), &ka);
    b.ak(
        g,
        "restrict, port-forwarding, permitopen",
        A4,
        line("restrict,port-forwarding,permitopen=\"10.0.1.20:443\""),
        &ka,
    )
    .deliberate = Some(Deliberate::RestrictUpstream);
    b.ak(g, "command= forced command", A4, line("command=\"/bin/true\""), &ka)
        .deliberate = Some(Deliberate::ForcedCommand);
    b.ak(
        g,
        "no-* flags",
        A4,
        line("no-port-forwarding,no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc"),
        &ka,
    );
    b.ak(g, "tunnel=\"5\"", A4, line("tunnel=\"5\""), &ka);
    b.ak(
        g,
        "space after comma in options",
        A4,
        line("no-pty, no-port-forwarding"),
        &ka,
    );
    b.ak(
        g,
        "quoted value with escaped quote",
        A4,
        line("environment=\"NAME=a \\\"b\\\"\""),
        &ka,
    );
    b.ak(g, "unterminated quote", A4, line("from=\"10.77.1.2"), &ka);
    b.ak(g, "principals= on a plain key", A4, line("principals=\"root\""), &ka);
    b.ak(
        g,
        "usable key after an unusable command= line",
        A4,
        format!("command=\"/usr/bin/rrsync -ro /srv\" {pb}\n{pa}\n"),
        &ka,
    );
    b.ak(
        g,
        "usable key after an unknown option line",
        A4,
        format!("frobnicate {pb}\n{pa}\n"),
        &ka,
    );
    b.ak(
        g,
        "usable key after a malformed line",
        A4,
        format!("ssh-ed25519 AAAAnotbase64!!\n{pa}\n"),
        &ka,
    );
    b.ak(
        g,
        "first line refuses (from=), second allows",
        B4,
        format!("from=\"10.77.1.2\" {pa}\n{pa}\n"),
        &ka,
    );
    b.ak(
        g,
        "first line allows, second refuses",
        B4,
        format!("{pa}\nfrom=\"10.77.1.2\" {pa}\n"),
        &ka,
    );
    b.ak(
        g,
        "only line unusable: command= and from=",
        A4,
        line("command=\"/bin/true\",from=\"10.77.9.9\""),
        &ka,
    );
    // StrictModes (sshd's default, also sshvpnd's): group/world-writable files or directories.
    let c = b.ak(
        g,
        "StrictModes: group-writable authorized_keys",
        A4,
        format!("{pa}\n"),
        &ka,
    );
    c.deliberate = Some(Deliberate::DebianGroupModes);
    if let Question::Server(s) = &mut c.q {
        s.ak_mode = Some(0o664);
    }
    let c = b.ak(g, "StrictModes: world-writable directory", A4, format!("{pa}\n"), &ka);
    if let Question::Server(s) = &mut c.q {
        s.dir_mode = Some(0o777);
    }
    let c = b.ak(g, "StrictModes: read-only 0600 file", A4, format!("{pa}\n"), &ka);
    if let Question::Server(s) = &mut c.q {
        s.ak_mode = Some(0o600);
    }
}

/// The option strings of OpenSSH's regress/unittests/authopt/tests.c (test_authkeys_parse),
/// each as the options of an authorized_keys line: sshd uses the line or skips it.
fn authopt_strings(fx: &Fixture, b: &mut Builder) {
    let g = "authopt";
    let ka = fx.path("ka");
    let pa = fx.public(&ka);
    let cases: &[(&str, &str, Option<Deliberate>)] = &[
        ("restrict", "restrict", Some(Deliberate::RestrictUpstream)),
        ("trailing comma", "restrict,", Some(Deliberate::UpstreamOptionParser)),
        ("bare comma", ",", Some(Deliberate::UpstreamOptionParser)),
        ("unknown option", "BLAH", None),
        ("unknown option with trailing comma", "BLAH,", None),
        ("tunnel explicit", "tunnel=\"1\"", None),
        ("tunnel any", "tunnel=\"any\"", None),
        ("tunnel invalid", "tunnel=\"blah\"", None),
        ("cert-authority on a plain key", "cert-authority", None),
        ("port-forwarding", "port-forwarding", None),
        ("agent-forwarding", "agent-forwarding", None),
        ("x11-forwarding", "x11-forwarding", None),
        ("pty", "pty", None),
        ("user-rc", "user-rc", None),
        ("restrict,pty", "restrict,pty", Some(Deliberate::RestrictUpstream)),
        ("no-port-forwarding", "no-port-forwarding", None),
        ("no-agent-forwarding", "no-agent-forwarding", None),
        ("no-x11-forwarding", "no-x11-forwarding", None),
        ("no-pty", "no-pty", None),
        ("no-user-rc", "no-user-rc", None),
        ("no-cert-authority", "no-cert-authority", None),
        ("command", "command=\"/bin/true\"", Some(Deliberate::ForcedCommand)),
        (
            "restrict,command,restrict",
            "restrict,command=\"/bin/true\",restrict",
            Some(Deliberate::ForcedCommand),
        ),
        ("principals", "principals=\"gregor,josef,K\"", None),
        ("from 127.0.0.0/8", "from=\"127.0.0.0/8\"", None),
        ("unquoted command", "command=oops", None),
        ("unquoted principals", "principals=estragon", None),
        ("unquoted from", "from=127.0.0.1", None),
        ("environment x2", "environment=\"foo=1\",environment=\"bar=2\"", None),
        (
            "environment repeated name",
            "environment=\"foo=1\",environment=\"foo=2\"",
            None,
        ),
        ("environment invalid", "environment=\",=bah\"", None),
        ("permitopen x2", "permitopen=\"foo:123\",permitopen=\"bar:*\"", None),
        ("permitopen port not a number", "permitopen=\"foo:bar\"", None),
        ("permitopen missing port", "permitopen=\"foo:\"", None),
        ("permitopen missing port specification", "permitopen=\"foo\"", None),
        ("permitopen invalid host", "permitopen=\"[:\"", None),
    ];
    for (label, opts, deliberate) in cases {
        let text = format!("{opts} {pa}\n");
        b.ak(g, label, Src::A4, text, &ka).deliberate = *deliberate;
    }
}

fn user_certificates(fx: &Fixture, b: &mut Builder) {
    let g = "user certificate";
    let uca = fx.key("uca", "ed25519");
    let uca2 = fx.key("uca2", "ed25519");
    let cas = format!("{}\n", fx.public(&uca));
    use Src::*;
    let c = |name: &str, id: &str, args: &[&str]| fx.certified(name, &uca, id, args);

    let ok = c("u_ok", "carol", &["-n", "root", "-V", "-5m:+1h"]);
    b.cert(g, "principal root", A4, cas.clone(), &ok, None);
    let k = c("u_alice", "alice", &["-n", "alice", "-V", "-5m:+1h"]);
    b.cert(g, "principal alice only", A4, cas.clone(), &k, None);
    let k = c("u_two", "two", &["-n", "alice,root", "-V", "-5m:+1h"]);
    b.cert(g, "principals alice,root", A4, cas.clone(), &k, None);
    let k = c("u_none", "none", &["-V", "-5m:+1h"]);
    b.cert(g, "no principals", A4, cas.clone(), &k, None);
    let k = c("u_case", "case", &["-n", "ROOT", "-V", "-5m:+1h"]);
    b.cert(g, "principal in upper case", A4, cas.clone(), &k, None);
    let k = c("u_expired", "expired", &["-n", "root", "-V", "-2h:-1h"]);
    b.cert(g, "expired", A4, cas.clone(), &k, None);
    let k = c("u_future", "future", &["-n", "root", "-V", "+1h:+2h"]);
    b.cert(g, "not yet valid", A4, cas.clone(), &k, None);
    let k = c("u_forever", "forever", &["-n", "root", "-V", "always:forever"]);
    b.cert(g, "valid always:forever", A4, cas.clone(), &k, None);
    let k = c("u_ended", "ended", &["-n", "root", "-V", "always:20200101"]);
    b.cert(g, "valid always:20200101", A4, cas.clone(), &k, None);
    let k = c("u_starts", "starts", &["-n", "root", "-V", "20990101:forever"]);
    b.cert(g, "valid 20990101:forever", A4, cas.clone(), &k, None);
    let k = c("u_src", "src", &["-n", "root", "-O", "source-address=10.77.1.0/24"]);
    b.cert(g, "source-address matches", A4, cas.clone(), &k, None);
    b.cert(g, "source-address, other source", B4, cas.clone(), &k, None);
    let k = c(
        "u_src6",
        "src6",
        &["-n", "root", "-O", "source-address=10.77.2.2,fd00:77:1::/64"],
    );
    b.cert(g, "source-address list, IPv6 source", A6, cas.clone(), &k, None);
    b.cert(g, "source-address list, IPv4 source", B4, cas.clone(), &k, None);
    let k = c("u_force", "force", &["-n", "root", "-O", "force-command=/bin/true"]);
    b.cert(g, "force-command", A4, cas.clone(), &k, None).deliberate = Some(Deliberate::ForcedCommand);
    let k = c("u_verify", "verify", &["-n", "root", "-O", "verify-required"]);
    b.cert(g, "verify-required on a non-FIDO key", A4, cas.clone(), &k, None)
        .deliberate = Some(Deliberate::VerifyRequiredRefused);
    let k = c(
        "u_crit",
        "crit",
        &["-n", "root", "-O", "critical:frobnicate@example.com=x"],
    );
    b.cert(g, "unknown critical option", A4, cas.clone(), &k, None);
    let k = c(
        "u_ext",
        "ext",
        &["-n", "root", "-O", "extension:frobnicate@example.com=x", "-O", "no-pty"],
    );
    b.cert(g, "unknown extension, no-pty", A4, cas.clone(), &k, None);
    let k = c("u_clear", "clear", &["-n", "root", "-O", "clear"]);
    b.cert(g, "no extensions (-O clear)", A4, cas.clone(), &k, None);
    let k = fx.certified("u_other_ca", &uca2, "otherca", &["-n", "root"]);
    b.cert(g, "signed by an untrusted CA", A4, cas.clone(), &k, None);
    let k = c("u_host", "hostcert", &["-h", "-n", "root"]);
    b.cert(
        g,
        "host certificate used as user certificate",
        A4,
        cas.clone(),
        &k,
        None,
    );
    b.cert(g, "CA key itself logging in", A4, cas.clone(), &uca, None);
    b.cert(
        g,
        "trusted CA file with a bad line",
        A4,
        format!("garbage line\n{cas}"),
        &ok,
        None,
    )
    .deliberate = Some(Deliberate::BadLineSkipped);
    // Through authorized_keys instead of TrustedUserCAKeys.
    let pca = fx.public(&uca);
    let akq = |text: String, id: &Path| {
        Question::Server(ServerFiles {
            authorized_keys: text,
            identity: id.to_path_buf(),
            ..Default::default()
        })
    };
    b.push(
        g,
        "cert-authority line",
        A4,
        akq(format!("cert-authority {pca}\n"), &ok),
    );
    b.push(
        g,
        "cert-authority, principals= listed",
        A4,
        akq(
            format!("cert-authority,principals=\"carol,root\" {pca}\n"),
            &k_alice(fx),
        ),
    );
    b.push(
        g,
        "cert-authority, principals= not listed",
        A4,
        akq(format!("cert-authority,principals=\"bob\" {pca}\n"), &ok),
    );
    b.push(
        g,
        "cert-authority, from= other network",
        A4,
        akq(format!("cert-authority,from=\"10.77.2.0/24\" {pca}\n"), &ok),
    );
    b.push(
        g,
        "plain CA key line (no cert-authority)",
        A4,
        akq(format!("{pca}\n"), &ok),
    );
}

/// The certificate of `u_alice` (principal alice): for a `principals=` line naming alice.
fn k_alice(fx: &Fixture) -> PathBuf {
    let k = fx.path("u_alice");
    assert!(cert_of(&k).exists());
    k
}

fn krls(fx: &Fixture, b: &mut Builder) {
    let g = "KRL";
    let uca = fx.path("uca");
    let uca2 = fx.path("uca2");
    let cas = format!("{}\n", fx.public(&uca));
    use Src::A4;
    let c = |name: &str, id: &str, serial: &str| fx.certified(name, &uca, id, &["-n", "root", "-z", serial]);
    let s7 = c("k_s7", "serial7", "7");
    let s8 = c("k_s8", "serial8", "8");
    let s15 = c("k_s15", "serial15", "15");
    let s21 = c("k_s21", "serial21", "21");
    let erin = c("k_erin", "erin-laptop", "30");
    let frank = c("k_frank", "frank-laptop", "31");
    let plain = fx.key("k_plain", "ed25519");

    let add = |name: &str, file: PathBuf, who: &Path, b: &mut Builder| {
        let presented = if cert_of(who).exists() {
            cert_of(who)
        } else {
            who.with_extension("pub")
        };
        let query = Some((file.clone(), presented));
        b.cert(g, name, A4, cas.clone(), who, Some(file)).krl_query = query;
    };
    let serial = fx.krl_spec("krl_serial", Some(&uca), "serial: 7\n");
    add("serial: 7, cert serial 7", serial.clone(), &s7, b);
    add("serial: 7, cert serial 8", serial, &s8, b);
    let range = fx.krl_spec("krl_range", Some(&uca), "serial: 10-20\n");
    add("serial range 10-20, cert 15", range.clone(), &s15, b);
    add("serial range 10-20, cert 21", range, &s21, b);
    let many = fx.krl_spec(
        "krl_bitmap",
        Some(&uca),
        "serial: 1\nserial: 3\nserial: 5\nserial: 7\nserial: 9\nserial: 11\nserial: 13\nserial: 15\n",
    );
    add("serial bitmap, cert 15", many.clone(), &s15, b);
    add("serial bitmap, cert 8", many, &s8, b);
    let other_ca = fx.krl_spec("krl_other_ca", Some(&uca2), "serial: 7\n");
    add("serial: 7 of another CA, cert serial 7", other_ca, &s7, b);
    let two = fx.krl_spec("krl_two", Some(&uca), "serial: 8\nid: erin-laptop\n");
    add("serial and key id sections, cert serial 8", two, &s8, b);
    let id = fx.krl_spec("krl_id", Some(&uca), "id: erin-laptop\n");
    add("key id erin-laptop, cert erin", id.clone(), &erin, b);
    add("key id erin-laptop, cert frank", id, &frank, b);
    let explicit = fx.krl_keys("krl_key", &[&frank]);
    add("explicit key, its certificate", explicit, &frank, b);
    let ca_revoked = fx.krl_keys("krl_ca", &[&uca]);
    add("explicit key: the CA", ca_revoked, &s8, b);
    let hash = fx.krl_spec("krl_hash", None, &format!("hash: {}\n", fx.fingerprint(&s21)));
    add("hash: SHA256 fingerprint", hash, &s21, b);
    let sha1 = fx.krl_spec("krl_sha1", None, &format!("sha1: {}\n", fx.public(&s8)));
    add("sha1: key", sha1, &s8, b);
    let sha256 = fx.krl_spec("krl_sha256", None, &format!("sha256: {}\n", fx.public(&s8)));
    add("sha256: key, other key presented", sha256, &s7, b);
    let empty = fx.krl_spec("krl_empty", None, "");
    add("empty KRL", empty, &s7, b);
    // A plain list of keys (sshd's RevokedKeys accepts either form).
    let list = fx.path("revoked_list");
    std::fs::write(&list, format!("# lost laptop\n{}\n", fx.public(&frank))).unwrap();
    b.cert(
        g,
        "plain revoked list, its certificate",
        A4,
        cas.clone(),
        &frank,
        Some(list.clone()),
    );
    b.cert(
        g,
        "plain revoked list, other certificate",
        A4,
        cas.clone(),
        &erin,
        Some(list),
    );
    let q = Question::Server(ServerFiles {
        authorized_keys: format!("{}\n", fx.public(&plain)),
        revoked: Some(fx.krl_keys("krl_plain", &[&plain])),
        identity: plain.clone(),
        ..Default::default()
    });
    b.push(g, "explicit key, plain authorized key", A4, q);
    let q = Question::Server(ServerFiles {
        authorized_keys: format!("{}\n", fx.public(&plain)),
        revoked: Some(fx.path("does-not-exist.krl")),
        identity: plain.clone(),
        ..Default::default()
    });
    b.push(g, "revoked-keys file missing", A4, q);
}

fn known_hosts(fx: &Fixture, b: &mut Builder) {
    let hk = fx.key("hk", "ed25519");
    let hk2 = fx.key("hk2", "ed25519");
    let hca = fx.key("hca", "ed25519");
    let hca2 = fx.key("hca2", "ed25519");
    let me = fx.path("ka");
    let (phk, phk2, phca, phca2) = (fx.public(&hk), fx.public(&hk2), fx.public(&hca), fx.public(&hca2));
    use Src::*;

    b.host(
        "name listed",
        A4,
        &hk,
        None,
        format!("hub.example {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "name listed, other key",
        A4,
        &hk,
        None,
        format!("hub.example {phk2}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "not listed at all",
        A4,
        &hk,
        None,
        format!("other.example {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "empty known_hosts",
        A4,
        &hk,
        None,
        String::new(),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "wildcard *.example",
        A4,
        &hk,
        None,
        format!("*.example {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "wildcard hub.exampl?",
        A4,
        &hk,
        None,
        format!("hub.exampl? {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "pattern list",
        A4,
        &hk,
        None,
        format!("alpha,hub.example,beta {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "negation",
        A4,
        &hk,
        None,
        format!("*.example,!hub.example {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "upper-case entry",
        A4,
        &hk,
        None,
        format!("HUB.EXAMPLE {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "listed by address, connect by name",
        A4,
        &hk,
        None,
        format!("10.77.1.1 {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "listed by address, connect by address",
        A4,
        &hk,
        None,
        format!("10.77.1.1 {phk}\n"),
        "10.77.1.1",
        22,
        &me,
    );
    b.host(
        "address wildcard",
        A4,
        &hk,
        None,
        format!("10.77.1.* {phk}\n"),
        "10.77.1.1",
        22,
        &me,
    );
    b.host(
        "IPv6 address",
        A6,
        &hk,
        None,
        format!("fd00:77:1::1 {phk}\n"),
        "fd00:77:1::1",
        22,
        &me,
    );
    b.host(
        "[host]:port on port 2222",
        A4,
        &hk,
        None,
        format!("[hub.example]:2222 {phk}\n"),
        "hub.example",
        2222,
        &me,
    );
    b.host(
        "bare host on port 2222",
        A4,
        &hk,
        None,
        format!("hub.example {phk}\n"),
        "hub.example",
        2222,
        &me,
    )
    .deliberate = Some(Deliberate::PortNeedsBrackets);
    b.host(
        "[host]:2222 entry, port 22",
        A4,
        &hk,
        None,
        format!("[hub.example]:2222 {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "[*.example]:2222 wildcard",
        A4,
        &hk,
        None,
        format!("[*.example]:2222 {phk}\n"),
        "hub.example",
        2222,
        &me,
    );
    let hashed = fx.hashed("kh_hashed", &format!("hub.example {phk}"));
    b.host(
        "hashed |1| name",
        A4,
        &hk,
        None,
        format!("{hashed}\n"),
        "hub.example",
        22,
        &me,
    );
    let hashed_port = fx.hashed("kh_hashed_port", &format!("[hub.example]:2222 {phk}"));
    b.host(
        "hashed |1| [host]:port",
        A4,
        &hk,
        None,
        format!("{hashed_port}\n"),
        "hub.example",
        2222,
        &me,
    );
    b.host(
        "hashed name, other host",
        B4,
        &hk,
        None,
        format!("{hashed}\n"),
        "other.example",
        22,
        &me,
    );
    b.host(
        "@revoked key",
        A4,
        &hk,
        None,
        format!("@revoked * {phk}\nhub.example {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "@revoked other key",
        A4,
        &hk,
        None,
        format!("@revoked * {phk2}\nhub.example {phk}\n"),
        "hub.example",
        22,
        &me,
    );

    let cert = |name: &str, args: &[&str]| {
        let k = fx.key(name, "ed25519");
        let mut full = vec!["-h"];
        full.extend_from_slice(args);
        fx.sign(&k, &hca, name, &full);
        k
    };
    let by_name = cert("h_name", &["-n", "hub.example,10.77.1.1", "-V", "-5m:+1h"]);
    let ca_line = format!("@cert-authority *.example {phca}\n");
    b.host(
        "@cert-authority, principal matches",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        ca_line.clone(),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "@cert-authority, by address",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        format!("@cert-authority 10.77.1.* {phca}\n"),
        "10.77.1.1",
        22,
        &me,
    );
    b.host(
        "@cert-authority pattern does not match",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        format!("@cert-authority *.example.net {phca}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "@cert-authority, other CA",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        format!("@cert-authority *.example {phca2}\n"),
        "hub.example",
        22,
        &me,
    );
    let ip_only = cert("h_ip", &["-n", "10.77.1.1", "-V", "-5m:+1h"]);
    b.host(
        "@cert-authority, principal is the resolved address only",
        A4,
        &ip_only,
        Some(&cert_of(&ip_only)),
        ca_line.clone(),
        "hub.example",
        22,
        &me,
    );
    let other = cert("h_other", &["-n", "other.example", "-V", "-5m:+1h"]);
    b.host(
        "@cert-authority, principal for another host",
        A4,
        &other,
        Some(&cert_of(&other)),
        ca_line.clone(),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "@cert-authority refused, plain key listed",
        A4,
        &other,
        Some(&cert_of(&other)),
        format!("{ca_line}hub.example {}\n", fx.public(&other)),
        "hub.example",
        22,
        &me,
    );
    let expired = cert("h_expired", &["-n", "hub.example", "-V", "-2h:-1h"]);
    b.host(
        "@cert-authority, expired certificate",
        A4,
        &expired,
        Some(&cert_of(&expired)),
        ca_line.clone(),
        "hub.example",
        22,
        &me,
    );
    let none = cert("h_none", &["-V", "-5m:+1h"]);
    b.host(
        "@cert-authority, certificate without principals",
        A4,
        &none,
        Some(&cert_of(&none)),
        ca_line.clone(),
        "hub.example",
        22,
        &me,
    )
    .deliberate = Some(Deliberate::NoPrincipalsRefused);
    let user_cert = fx.key("h_user", "ed25519");
    fx.sign(&user_cert, &hca, "usercert", &["-n", "hub.example"]);
    b.host(
        "@cert-authority, user certificate served",
        A4,
        &user_cert,
        Some(&cert_of(&user_cert)),
        ca_line.clone(),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "@cert-authority with [host]:port on 2222",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        format!("@cert-authority [*.example]:2222 {phca}\n"),
        "hub.example",
        2222,
        &me,
    );
    b.host(
        "@cert-authority bare pattern, port 2222",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        ca_line.clone(),
        "hub.example",
        2222,
        &me,
    )
    .deliberate = Some(Deliberate::PortNeedsBrackets);
    b.host(
        "@revoked CA key",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        format!("{ca_line}@revoked * {phca}\n"),
        "hub.example",
        22,
        &me,
    );
    b.host(
        "@revoked host key of a valid certificate",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        format!("{ca_line}@revoked * {}\n", fx.public(&by_name)),
        "hub.example",
        22,
        &me,
    );
    let hashed_ca = fx.hashed("kh_hashed_ca", &format!("hub.example {phca}"));
    b.host(
        "@cert-authority with hashed name",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        format!("@cert-authority {}\n", hashed_ca),
        "hub.example",
        22,
        &me,
    );
    let c = b.host(
        "HostKeyAlias",
        A4,
        &hk,
        None,
        format!("myhub {phk}\n"),
        "hub.example",
        22,
        &me,
    );
    if let Question::Host(h) = &mut c.q {
        h.alias = Some("myhub".into());
    }
    let c = b.host(
        "HostKeyAlias with host certificate",
        A4,
        &by_name,
        Some(&cert_of(&by_name)),
        format!("@cert-authority * {phca}\n"),
        "10.77.1.1",
        22,
        &me,
    );
    if let Question::Host(h) = &mut c.q {
        h.alias = Some("hub.example".into());
    }
}
