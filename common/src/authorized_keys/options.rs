//! The options column of an `authorized_keys` line, parsed as OpenSSH's `sshauthopt_parse`
//! (auth-options.c) parses it: option names are case-insensitive; flags match as prefixes
//! (`opt_flag`), with `no-` negating those sshd lets negate; valued options are `name="..."`
//! with `\"` inside; `restrict` then a flag re-enables that flag but the line stays restricted;
//! a repeated `command=`, `principals=` or `from=` rejects the line, a repeated `expiry-time=`
//! keeps the earliest; `permitopen` / `permitlisten` / `tunnel` / `environment` values are
//! validated as sshd validates them. Then what sshvpnd cannot honour (`command=`,
//! `verify-required`, `no-touch-required`) rejects the line too. Pure, no I/O.

use std::time::SystemTime;

use super::{KeyOptionError, MAX_LIST, parse_expiry, parse_net};

/// sshd's `SSH_AUTHOPT_PERMIT_MAX` and `SSH_AUTHOPT_ENV_MAX`.
const MAX_PERMITS: usize = 4096;
const MAX_ENV: usize = 1024;
/// sshd's `SSH_TUNID_MAX`.
const MAX_TUN: u32 = 0x7fff_fffd;

/// `tunnel="..."`: the device sshd would force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelDevice {
    Any,
    Number(u32),
}

/// The options column of one line, as far as it matters here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// `from=`: the source address must match this pattern list.
    pub from: Option<Vec<String>>,
    /// `expiry-time=`: not accepted after this instant (the earliest, if repeated).
    pub expiry: Option<SystemTime>,
    /// `cert-authority`: the key is a CA for user certificates, not a user key.
    pub cert_authority: bool,
    /// `principals=`: with `cert-authority`, certificate principals accepted instead of the user name.
    pub principals: Option<Vec<String>>,
    /// `restrict`: sshd refuses tunnel forwarding to such a key (serverloop.c,
    /// `server_request_tun`), whatever flags follow it; sshvpnd refuses the login.
    pub restricted: bool,
    /// `tunnel="N"`: the tun device sshd would force. sshvpnd has one device: the key gets it.
    pub tunnel: Option<TunnelDevice>,
    /// `permitopen=` / `permitlisten=`: validated, meaningless for a layer-3 tunnel.
    pub permitopen: Vec<String>,
    pub permitlisten: Vec<String>,
    /// `environment=` (first of a name wins, as sshd keeps it).
    pub environment: Vec<String>,
    /// What sshd knows but sshvpnd cannot honour; [`parse_options`] rejects lines with them.
    pub(crate) force_command: Option<String>,
    pub(crate) verify_required: bool,
    pub(crate) no_touch_required: bool,
}

/// Where the options column ends: the first whitespace outside double quotes
/// (`sshkey_advance_past_options`). Err: an unterminated quote.
pub fn split_options(line: &str) -> Result<(&str, &str), KeyOptionError> {
    let b = line.as_bytes();
    let mut quoted = None;
    let mut i = 0;
    while i < b.len() && (quoted.is_some() || (b[i] != b' ' && b[i] != b'\t')) {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'"') {
            i += 1;
        } else if b[i] == b'"' {
            quoted = if quoted.is_some() { None } else { Some(i) };
        }
        i += 1;
    }
    if let Some(open) = quoted {
        // The option whose value is open: the name before `="`.
        let head = line[..open].trim_end_matches('=');
        let name = head.rsplit(',').next().unwrap_or(head).to_ascii_lowercase();
        return Err(KeyOptionError::NoClosingQuote { name });
    }
    Ok((&line[..i], &line[i..]))
}

/// `opt_flag`: `name` (or `no-name` when negatable) as a case-insensitive prefix of `s`.
/// Some((rest, enabled)).
fn opt_flag<'a>(name: &str, negatable: bool, s: &'a str) -> Option<(&'a str, bool)> {
    let (s2, negated) = match s.get(..3) {
        Some(p) if negatable && p.eq_ignore_ascii_case("no-") => (&s[3..], true),
        _ => (s, false),
    };
    let head = s2.get(..name.len())?;
    head.eq_ignore_ascii_case(name).then(|| (&s2[name.len()..], !negated))
}

/// `opt_match`: `name=` case-insensitively at the start of `s`; the rest after `=`.
fn opt_match<'a>(name: &str, s: &'a str) -> Option<&'a str> {
    let head = s.get(..name.len())?;
    (head.eq_ignore_ascii_case(name) && s.as_bytes().get(name.len()) == Some(&b'=')).then(|| &s[name.len() + 1..])
}

/// `opt_dequote`: a double-quoted value (`\"` is a quote); the value and the rest.
fn dequote<'a>(name: &str, s: &'a str) -> Result<(String, &'a str), KeyOptionError> {
    let Some(body) = s.strip_prefix('"') else {
        return Err(KeyOptionError::Unquoted { name: name.into() });
    };
    let mut v = String::new();
    let mut it = body.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            '\\' if it.peek().map(|p| p.1) == Some('"') => {
                v.push('"');
                it.next();
            }
            '"' => return Ok((v, &body[i + 1..])),
            c => v.push(c),
        }
    }
    Err(KeyOptionError::NoClosingQuote { name: name.into() })
}

const FLAGS: &[(&str, bool)] = &[
    ("restrict", false),
    ("cert-authority", false),
    ("port-forwarding", true),
    ("agent-forwarding", true),
    ("x11-forwarding", true),
    ("touch-required", true),
    ("verify-required", true),
    ("pty", true),
    ("user-rc", true),
];

/// Parses an options column (`opts`, no whitespace outside quotes) as sshd does, then
/// refuses what sshvpnd cannot honour.
pub fn parse_option_column(opts: &str) -> Result<KeyOptions, KeyOptionError> {
    let mut o = KeyOptions::default();
    let mut s = opts;
    while !s.is_empty() && !s.starts_with([' ', '\t']) {
        let before = s;
        s = one_option(&mut o, s)?;
        if s.is_empty() || s.starts_with([' ', '\t']) {
            break;
        }
        let Some(rest) = s.strip_prefix(',') else {
            let consumed = &before[..before.len() - s.len()];
            if s.starts_with('=') && !consumed.is_empty() {
                return Err(KeyOptionError::TakesNoValue {
                    name: consumed.to_ascii_lowercase(),
                });
            }
            return Err(KeyOptionError::Unknown { name: snippet(before) });
        };
        if rest.is_empty() {
            return Err(KeyOptionError::TrailingComma);
        }
        s = rest;
    }
    if o.force_command.is_some() {
        return Err(KeyOptionError::ForcedCommand);
    }
    if o.verify_required {
        return Err(KeyOptionError::VerifyRequired);
    }
    if o.no_touch_required {
        return Err(KeyOptionError::NoTouchRequired);
    }
    if o.principals.is_some() && !o.cert_authority {
        return Err(KeyOptionError::PrincipalsWithoutCertAuthority);
    }
    Ok(o)
}

/// One option at the start of `s` (or nothing, if none matches: the caller then finds no
/// comma and reports an unknown option, as sshd does). Returns the rest.
fn one_option<'a>(o: &mut KeyOptions, s: &'a str) -> Result<&'a str, KeyOptionError> {
    for (name, negatable) in FLAGS {
        if let Some((rest, on)) = opt_flag(name, *negatable, s) {
            match *name {
                "restrict" => o.restricted = true,
                "cert-authority" => o.cert_authority = true,
                "touch-required" => o.no_touch_required = !on,
                "verify-required" => o.verify_required = on,
                _ => {}
            }
            return Ok(rest);
        }
    }
    if let Some(rest) = opt_match("command", s) {
        if o.force_command.is_some() {
            return Err(KeyOptionError::Twice { name: "command" });
        }
        let (v, rest) = dequote("command", rest)?;
        o.force_command = Some(v);
        return Ok(rest);
    }
    if let Some(rest) = opt_match("principals", s) {
        if o.principals.is_some() {
            return Err(KeyOptionError::Twice { name: "principals" });
        }
        let (v, rest) = dequote("principals", rest)?;
        let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
        if list.len() > MAX_LIST || list.iter().any(String::is_empty) {
            return Err(KeyOptionError::BadPrincipals { value: v });
        }
        o.principals = Some(list);
        return Ok(rest);
    }
    if let Some(rest) = opt_match("from", s) {
        if o.from.is_some() {
            return Err(KeyOptionError::Twice { name: "from" });
        }
        let (v, rest) = dequote("from", rest)?;
        o.from = Some(parse_from(&v)?);
        return Ok(rest);
    }
    if let Some(rest) = opt_match("expiry-time", s) {
        let (v, rest) = dequote("expiry-time", rest)?;
        let t = parse_expiry(&v).ok_or(KeyOptionError::BadExpiry { value: v })?;
        o.expiry = Some(o.expiry.map_or(t, |e| e.min(t)));
        return Ok(rest);
    }
    if let Some(rest) = opt_match("environment", s) {
        if o.environment.len() > MAX_ENV {
            return Err(KeyOptionError::BadValue {
                name: "environment",
                value: "(too many)".into(),
            });
        }
        let (v, rest) = dequote("environment", rest)?;
        let name = v.split_once('=').map(|(n, _)| n);
        let valid = name.is_some_and(|n| {
            !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if !valid {
            return Err(KeyOptionError::BadValue {
                name: "environment",
                value: v,
            });
        }
        let n = name.unwrap_or_default();
        if !o.environment.iter().any(|e| e.split_once('=').map(|x| x.0) == Some(n)) {
            o.environment.push(v);
        }
        return Ok(rest);
    }
    for (name, bare_port) in [("permitopen", false), ("permitlisten", true)] {
        if let Some(rest) = opt_match(name, s) {
            let list = if bare_port {
                &mut o.permitlisten
            } else {
                &mut o.permitopen
            };
            if list.len() > MAX_PERMITS {
                return Err(KeyOptionError::BadValue {
                    name,
                    value: "(too many)".into(),
                });
            }
            let (v, rest) = dequote(name, rest)?;
            let v = if bare_port && !v.contains(':') {
                format!("*:{v}")
            } else {
                v
            };
            if !valid_permit(&v) {
                return Err(KeyOptionError::BadValue { name, value: v });
            }
            list.push(v);
            return Ok(rest);
        }
    }
    if let Some(rest) = opt_match("tunnel", s) {
        let (v, rest) = dequote("tunnel", rest)?;
        let dev = if v.eq_ignore_ascii_case("any") {
            Some(TunnelDevice::Any)
        } else {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_TUN)
                .map(TunnelDevice::Number)
        };
        o.tunnel = Some(dev.ok_or(KeyOptionError::BadValue {
            name: "tunnel",
            value: v,
        })?);
        return Ok(rest);
    }
    Ok(s)
}

/// `handle_permit`'s syntax check: `host:port` (host may be `[v6]`), port `*` or 1..65535.
fn valid_permit(v: &str) -> bool {
    let (host, port) = if let Some(r) = v.strip_prefix('[') {
        match r.split_once(']') {
            Some((h, after)) => match after.chars().next() {
                Some(':') | Some('/') => (h, Some(&after[1..])),
                None => (h, None),
                Some(_) => return false,
            },
            None => return false,
        }
    } else {
        match v.find([':', '/']) {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    if host.len() >= 1025 {
        return false;
    }
    match port {
        Some("*") => true,
        Some(p) => {
            // a2port: a number 1..65535 (service names are not looked up here).
            p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
        }
        None => false,
    }
}

fn snippet(s: &str) -> String {
    s.chars().take(20).collect()
}

/// A `from=` pattern list: comma-separated, `!` negates; CIDR entries must be valid networks
/// (sshd's `match_host_and_ip` rejects the line for an invalid one when it is checked).
fn parse_from(v: &str) -> Result<Vec<String>, KeyOptionError> {
    let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
    if list.len() > MAX_LIST {
        return Err(KeyOptionError::FromTooLong);
    }
    for p in &list {
        let body = p.strip_prefix('!').unwrap_or(p);
        if body.is_empty() {
            return Err(KeyOptionError::FromEmptyPattern { list: v.to_string() });
        }
        if body.contains('/') && parse_net(body).is_none() {
            return Err(KeyOptionError::FromBadNetwork {
                pattern: body.to_string(),
            });
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<KeyOptions, KeyOptionError> {
        parse_option_column(s)
    }

    /// The option strings of openssh-portable regress/unittests/authopt/tests.c
    /// (`test_authkeys_parse`) and their expected results.
    #[test]
    fn openssh_authopt_unit_cases() {
        // Success cases.
        assert_eq!(parse("").unwrap(), KeyOptions::default());
        assert!(parse("restrict").unwrap().restricted);
        for bad in [
            "restrict,",
            ",",
            "BLAH",
            "BLAH,",
            "no-cert-authority",
            "tunnel=\"blah\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // `BLAH ` (trailing whitespace): the column ends at the space, still unknown.
        assert!(parse(split_options("BLAH ").unwrap().0).is_err());
        assert_eq!(parse("tunnel=\"1\"").unwrap().tunnel, Some(TunnelDevice::Number(1)));
        assert_eq!(parse("tunnel=\"any\"").unwrap().tunnel, Some(TunnelDevice::Any));
        for flag in [
            "port-forwarding",
            "agent-forwarding",
            "x11-forwarding",
            "pty",
            "user-rc",
            "no-port-forwarding",
            "no-agent-forwarding",
            "no-x11-forwarding",
            "no-pty",
            "no-user-rc",
        ] {
            let o = parse(flag).unwrap();
            assert!(!o.restricted, "{flag}");
            // restrict then the flag: parsed, and still restricted.
            let o = parse(&format!("restrict,{flag}")).unwrap();
            assert!(o.restricted, "{flag}");
        }
        assert!(parse("cert-authority").unwrap().cert_authority);
        assert!(parse("restrict,cert-authority").unwrap().restricted);
        // String options, also between two `restrict`.
        assert_eq!(
            parse("restrict,from=\"127.0.0.0/8\",restrict").unwrap().from,
            Some(vec!["127.0.0.0/8".to_string()])
        );
        assert_eq!(
            parse("cert-authority,principals=\"gregor,josef,K\"")
                .unwrap()
                .principals,
            Some(vec!["gregor".into(), "josef".into(), "K".into()])
        );
        // command= parses in sshd; sshvpnd cannot honour it.
        assert_eq!(parse("command=\"/bin/true\""), Err(KeyOptionError::ForcedCommand));
        assert_eq!(
            parse("restrict,command=\"/bin/true\",restrict"),
            Err(KeyOptionError::ForcedCommand)
        );
        for (name, s) in [
            ("command", "command=oops"),
            ("principals", "principals=estragon"),
            ("from", "from=127.0.0.1"),
        ] {
            assert_eq!(parse(s), Err(KeyOptionError::Unquoted { name: name.into() }), "{s}");
        }
        // Arrays.
        assert_eq!(
            parse("environment=\"foo=1\",environment=\"bar=2\"")
                .unwrap()
                .environment,
            vec!["foo=1".to_string(), "bar=2".into()]
        );
        assert_eq!(
            parse("restrict,environment=\"foo=1\",environment=\"foo=2\",restrict")
                .unwrap()
                .environment,
            vec!["foo=1".to_string()]
        );
        assert_eq!(
            parse("permitopen=\"foo:123\",permitopen=\"bar:*\"").unwrap().permitopen,
            vec!["foo:123".to_string(), "bar:*".into()]
        );
        assert!(parse("environment=\",=bah\"").is_err());
        for bad in ["foo:bar", "foo:", "foo", "[:"] {
            assert!(parse(&format!("permitopen=\"{bad}\"")).is_err(), "{bad}");
        }
    }

    #[test]
    fn sshd_parsing_details() {
        // Case-insensitive names; repeated flags are fine; repeated from= is not.
        assert!(parse("RESTRICT,No-Pty,FROM=\"10.0.0.0/8\"").unwrap().restricted);
        assert!(parse("no-pty,no-pty").is_ok());
        assert_eq!(
            parse("from=\"a\",from=\"b\""),
            Err(KeyOptionError::Twice { name: "from" })
        );
        assert_eq!(
            parse("command=\"a\",command=\"b\""),
            Err(KeyOptionError::Twice { name: "command" })
        );
        // Repeated expiry-time: the earliest.
        let o = parse("expiry-time=\"20991231Z\",expiry-time=\"20300101Z\"").unwrap();
        assert_eq!(o.expiry, parse_expiry("20300101Z"));
        // Quoted commas and escaped quotes stay inside the value.
        let o = parse("environment=\"A=x,\\\"y\\\"\"").unwrap();
        assert_eq!(o.environment, vec!["A=x,\"y\"".to_string()]);
        // A flag name followed by a value or by junk is unknown.
        assert!(parse("pty=\"x\"").is_err());
        assert!(parse("restrictx").is_err());
        // permitlisten accepts a bare port; permitopen does not.
        assert_eq!(
            parse("permitlisten=\"8080\"").unwrap().permitlisten,
            vec!["*:8080".to_string()]
        );
        assert!(parse("permitopen=\"8080\"").is_err());
        assert!(parse("permitopen=\"[::1]:22\"").is_ok());
        assert!(parse("permitopen=\"host:0\"").is_err());
        assert!(parse("permitopen=\"host:65536\"").is_err());
        // FIDO requirements sshvpnd cannot check, and the positive forms it need not.
        assert_eq!(parse("verify-required"), Err(KeyOptionError::VerifyRequired));
        assert_eq!(parse("no-touch-required"), Err(KeyOptionError::NoTouchRequired));
        assert!(parse("touch-required,no-verify-required").is_ok());
        // The column ends at the first whitespace outside quotes.
        assert_eq!(
            split_options("from=\"a b\",no-pty ssh-ed25519 AAAA").unwrap(),
            ("from=\"a b\",no-pty", " ssh-ed25519 AAAA")
        );
        assert!(split_options("from=\"a b ssh-ed25519").is_err());
    }
}
