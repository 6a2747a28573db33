//! Connection and server commands: what redis-cli and client libraries
//! expect — PING, ECHO, QUIT, HELLO, AUTH, CLIENT, SELECT, INFO, COMMAND,
//! CONFIG.

use bytes::Bytes;

use super::{Args, CmdError, Flow, Outcome, Res, done, err, is, parse_u64};
use crate::session::Session;

pub(crate) enum Server {
    Ping(Option<Bytes>),
    Echo(Bytes),
    Quit,
    Hello {
        proto: Option<u64>,
        auth: Option<(Bytes, Bytes)>,
        setname: Option<Bytes>,
    },
    Auth {
        user: Option<Bytes>,
        pass: Bytes,
    },
    ClientSetName(Bytes),
    ClientGetName,
    ClientId,
    ClientSetInfo,
    ClientUnblock {
        id: u64,
        error: bool,
    },
    ClientHolder(Bytes),
    Select(u64),
    Info,
    CommandCount,
    CommandDocs,
    CommandTable,
    ConfigGet(Vec<Bytes>),
    AclWhoami,
    AclList,
}

impl Server {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let cmd = match a.command {
            "PING" => {
                let msg = a.next();
                if a.remaining() > 0 {
                    return Err(a.arity());
                }
                Server::Ping(msg)
            }
            "ECHO" => {
                let msg = a.require()?;
                if a.remaining() > 0 {
                    return Err(a.arity());
                }
                Server::Echo(msg)
            }
            "QUIT" => Server::Quit,
            "HELLO" => {
                let proto = match a.next() {
                    None => None,
                    Some(v) => match parse_u64(&v) {
                        Ok(p @ (2 | 3)) => Some(p),
                        _ => return Err(err("NOPROTO", "unsupported protocol version")),
                    },
                };
                let (mut auth, mut setname) = (None, None);
                while let Some(opt) = a.next() {
                    if is(&opt, "AUTH") {
                        auth = Some((a.value(&opt)?, a.value(&opt)?));
                    } else if is(&opt, "SETNAME") {
                        setname = Some(a.value(&opt)?);
                    } else {
                        return Err(a.unknown(&opt));
                    }
                }
                Server::Hello {
                    proto,
                    auth,
                    setname,
                }
            }
            "AUTH" => match a.remaining() {
                1 => Server::Auth {
                    user: None,
                    pass: a.require()?,
                },
                2 => Server::Auth {
                    user: Some(a.require()?),
                    pass: a.require()?,
                },
                _ => return Err(a.arity()),
            },
            "CLIENT" => {
                let sub = a.require()?;
                if is(&sub, "SETNAME") {
                    let name = a.require()?;
                    if name.iter().any(|&b| b <= b' ' || b > b'~') {
                        return Err(err(
                            "ERR",
                            "Client names cannot contain spaces, newlines or special characters.",
                        ));
                    }
                    Server::ClientSetName(name)
                } else if is(&sub, "GETNAME") {
                    Server::ClientGetName
                } else if is(&sub, "ID") {
                    Server::ClientId
                } else if is(&sub, "HOLDER") {
                    let token = a.require()?;
                    if token.len() < 16 {
                        return Err(err(
                            "ERR",
                            "a holder token must be at least 16 bytes (an unguessable one)",
                        ));
                    }
                    Server::ClientHolder(token)
                } else if is(&sub, "UNBLOCK") {
                    let id = parse_u64(&a.require()?)?;
                    let error = match a.next() {
                        None => false,
                        Some(how) if is(&how, "TIMEOUT") => false,
                        Some(how) if is(&how, "ERROR") => true,
                        Some(how) => return Err(a.unknown(&how)),
                    };
                    Server::ClientUnblock { id, error }
                } else if is(&sub, "SETINFO") {
                    // Client libraries announce themselves; nothing to keep.
                    return Ok(Server::ClientSetInfo);
                } else {
                    return Err(err(
                        "ERR",
                        format!("unknown subcommand '{}'", String::from_utf8_lossy(&sub)),
                    ));
                }
            }
            "SELECT" => Server::Select(parse_u64(&a.require()?)?),
            "ACL" => {
                let sub = a.require()?;
                if is(&sub, "WHOAMI") {
                    Server::AclWhoami
                } else if is(&sub, "LIST") {
                    Server::AclList
                } else {
                    return Err(err(
                        "ERR",
                        format!(
                            "unknown subcommand '{}': ACL takes WHOAMI or LIST (users live in --acl-file)",
                            String::from_utf8_lossy(&sub)
                        ),
                    ));
                }
            }
            // Sections are not told apart: INFO answers everything.
            "INFO" => return Ok(Server::Info),
            "COMMAND" => {
                // Enough of COMMAND for redis-cli and client libraries to
                // start: they cope with an empty command table.
                return Ok(match a.next() {
                    Some(sub) if is(&sub, "COUNT") => Server::CommandCount,
                    Some(sub) if is(&sub, "DOCS") => Server::CommandDocs,
                    _ => Server::CommandTable,
                });
            }
            _ => {
                // CONFIG GET answers the few settings a client acts on,
                // under Redis's names; settings are fixed at start-up.
                let sub = a.require()?;
                if !is(&sub, "GET") {
                    return Err(err(
                        "ERR",
                        "CONFIG supports only GET; settings are fixed at start-up",
                    ));
                }
                let mut patterns = Vec::new();
                while let Some(p) = a.next() {
                    patterns.push(p);
                }
                if patterns.is_empty() {
                    return Err(a.arity());
                }
                return Ok(Server::ConfigGet(patterns));
            }
        };
        a.end()?;
        Ok(cmd)
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        match self {
            Server::Ping(None) => s.reply().simple("PONG"),
            Server::Ping(Some(msg)) | Server::Echo(msg) => s.reply().bulk(&msg),
            Server::Quit => {
                s.reply().simple("OK");
                return Ok(Outcome::Done(Flow::Close));
            }
            Server::Hello {
                proto,
                auth,
                setname,
            } => hello(s, proto, auth, setname)?,
            Server::Auth { user, pass } => {
                check_password(s, user.as_deref(), &pass)?;
                s.reply().simple("OK");
            }
            Server::ClientSetName(name) => {
                s.name = (!name.is_empty()).then_some(name);
                s.seen.name.lock().clone_from(&s.name);
                s.reply().simple("OK");
            }
            Server::ClientGetName => match s.name.clone() {
                Some(n) => s.reply().bulk(&n),
                None => s.reply().null(),
            },
            Server::ClientId => {
                let id = s.id;
                s.reply().uint(id);
            }
            Server::ClientSetInfo => s.reply().simple("OK"),
            Server::ClientHolder(token) => {
                if !s.holds.is_empty() {
                    return Err(err(
                        "ERR",
                        "CLIENT HOLDER must come before this connection holds any message",
                    ));
                }
                s.leave_group();
                // One user's token never names another user's group.
                let token = match &s.user {
                    Some(u) => {
                        let mut t = bytes::BytesMut::from(u.name.as_bytes());
                        t.extend_from_slice(b"\0");
                        t.extend_from_slice(&token);
                        t.freeze()
                    }
                    None => token,
                };
                s.group = Some(s.broker.join_group(&token));
                s.reply().simple("OK");
            }
            Server::ClientUnblock { id, error } => {
                let unblocked = s
                    .broker
                    .unblock(id, error, s.user.as_deref())
                    .map_err(|why| err("NOPERM", why))?;
                s.reply().int(i64::from(unblocked));
            }
            Server::Select(0) => s.reply().simple("OK"),
            Server::Select(_) => return Err(err("ERR", "DB index is out of range")),
            Server::Info => info(s),
            Server::CommandCount => s.reply().int(0),
            Server::CommandDocs => s.reply().map(0),
            Server::ConfigGet(patterns) => config_get(s, &patterns),
            Server::AclWhoami => {
                let name = s
                    .user
                    .as_ref()
                    .map_or_else(|| "default".to_string(), |u| u.name.clone());
                s.reply().bulk(name.as_bytes());
            }
            Server::AclList => {
                let lines: Vec<String> = match s.broker.acl.get() {
                    None => vec!["user default on all".to_string()],
                    Some(acl) => {
                        if !s.user.as_ref().is_some_and(|u| u.operator()) {
                            return Err(err(
                                "NOPERM",
                                "ACL LIST needs the 'admin' right on every queue (admin = [\"*\"])",
                            ));
                        }
                        acl.users().iter().map(|u| u.describe()).collect()
                    }
                };
                let mut r = s.reply();
                r.array(lines.len());
                for l in lines {
                    r.bulk(l.as_bytes());
                }
            }
            Server::CommandTable => s.reply().array(0),
        }
        done()
    }
}

/// The credentials an AUTH or a HELLO ... AUTH request carries (user,
/// password; `default` when AUTH names none), read before the request is
/// run so that their check can be done off the workers.
pub(crate) fn credentials_in(req: &ferry_proto::Request) -> Option<(&[u8], &[u8])> {
    let name = &req[0];
    if name.eq_ignore_ascii_case(b"AUTH") {
        return match req.len() {
            2 => Some((b"default", &req[1])),
            3 => Some((&req[1], &req[2])),
            _ => None,
        };
    }
    if name.eq_ignore_ascii_case(b"HELLO") {
        // As `Server::parse` reads it: the protocol, then options; the
        // last AUTH counts, SETNAME takes a value, anything else is an
        // error (and no password is checked).
        let (mut i, mut found) = (2, None);
        while i < req.len() {
            if req[i].eq_ignore_ascii_case(b"AUTH") && i + 2 < req.len() {
                found = Some((&req[i + 1], &req[i + 2]));
                i += 3;
            } else if req[i].eq_ignore_ascii_case(b"SETNAME") && i + 1 < req.len() {
                i += 2;
            } else {
                return None;
            }
        }
        return found;
    }
    None
}

/// CONFIG GET: the settings whose names match a pattern (`*` for any
/// run of characters), as Redis names them.
fn config_get(s: &mut Session, patterns: &[Bytes]) {
    let c = &s.broker.config;
    let all = [
        ("proto-max-bulk-len", c.max_payload.to_string()),
        ("maxclients", c.max_clients.to_string()),
        ("maxmemory", c.max_memory.to_string()),
        (
            "appendonly",
            (c.durability != crate::config::Durability::Memory).to_string(),
        ),
        (
            "appendfsync",
            match c.durability {
                crate::config::Durability::Sync => "always",
                _ => "everysec",
            }
            .to_string(),
        ),
    ];
    let matching: Vec<&(&str, String)> = all
        .iter()
        .filter(|(name, _)| {
            patterns
                .iter()
                .any(|p| crate::acl::glob(p, name.as_bytes(), true))
        })
        .collect();
    let mut r = s.reply();
    r.map(matching.len());
    for (name, value) in matching {
        r.bulk(name.as_bytes());
        r.bulk(value.as_bytes());
    }
}

/// Checks credentials: against the ACL file's users when there is one
/// (a password alone is the `default` user's), else `--requirepass` (any
/// user name). Logs the session in as the user — unless, while it was a
/// stranger, a newcomer was given its place (the broker was full).
fn check_password(s: &mut Session, user: Option<&[u8]>, pass: &[u8]) -> Result<(), CmdError> {
    let u = credentials(s, user, pass).inspect_err(|e| {
        if e.code == "WRONGPASS" {
            s.wrong_passwords += 1;
        }
    })?;
    if !s.seen.authenticated() {
        return Err(err(
            "ERR",
            "max number of clients reached (this connection did not authenticate in time to keep its place)",
        ));
    }
    if u.is_some() {
        s.user = u;
    }
    s.authed = true;
    Ok(())
}

/// The user these credentials name (`None` without an ACL file), or the
/// refusal.
fn credentials(
    s: &Session,
    user: Option<&[u8]>,
    pass: &[u8],
) -> Result<Option<std::sync::Arc<crate::acl::User>>, CmdError> {
    let wrong = || {
        err(
            "WRONGPASS",
            "invalid username-password pair or user is disabled.",
        )
    };
    if let Some(acl) = s.broker.acl.get() {
        let u = acl
            .authenticate(user.unwrap_or(b"default"), pass)
            .ok_or_else(wrong)?;
        return Ok(Some(u));
    }
    let Some(want) = &s.broker.config.requirepass else {
        return Err(err(
            "ERR",
            "AUTH <password> called without any password configured for the default user",
        ));
    };
    // One password, whoever is named (as the HTTP port takes any user
    // name): `ferry://name:password@host` works with --requirepass too.
    let _ = user;
    if !crate::acl::constant_time_eq(pass, want.as_bytes()) {
        return Err(wrong());
    }
    Ok(None)
}

fn hello(
    s: &mut Session,
    proto: Option<u64>,
    auth: Option<(Bytes, Bytes)>,
    setname: Option<Bytes>,
) -> Result<(), CmdError> {
    if let Some((user, pass)) = auth {
        check_password(s, Some(&user), &pass)?;
    }
    if !s.authed {
        return Err(err(
            "NOAUTH",
            "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        ));
    }
    if setname.is_some() {
        s.name = setname;
    }
    let proto = proto.unwrap_or(if s.resp3 { 3 } else { 2 });
    s.resp3 = proto == 3;
    let id = s.id;
    let mut r = s.reply();
    r.map(7);
    r.bulk(b"server");
    r.bulk(b"ferry");
    r.bulk(b"version");
    r.bulk(env!("CARGO_PKG_VERSION").as_bytes());
    r.bulk(b"proto");
    r.uint(proto);
    r.bulk(b"id");
    r.uint(id);
    r.bulk(b"mode");
    r.bulk(b"standalone");
    r.bulk(b"role");
    r.bulk(b"master");
    r.bulk(b"modules");
    r.array(0);
    Ok(())
}

fn info(s: &mut Session) {
    let v = s.broker.view();
    let http = s
        .broker
        .http_addr()
        .map_or_else(String::new, |a| a.to_string());
    let text = format!(
        "# Server\r\nferry_version:{}\r\nredis_version:7.0.0\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\nthreads:{}\r\ndurability:{}\r\nhttp_addr:{}\r\n\r\n# Persistence\r\nlog_records:{}\r\nlog_syncs:{}\r\nlog_bytes:{}\r\nlog_compactions:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n# Limits\r\nmax_payload:{}\r\nmax_request:{}\r\nidle_timeout:{}\r\nwrite_timeout:{}\r\nrefused_requests:{}\r\nidle_closed:{}\r\nslow_closed:{}\r\nunauthenticated_closed:{}\r\n\r\n# Stats\r\ntotal_commands_processed:{}\r\n\r\n# Memory\r\nqueued_memory:{}\r\nmax_memory:{}\r\n\r\n# Queues\r\nqueues:{}\r\nlocks:{}\r\nlock_waiters:{}\r\nsemaphores:{}\r\nsemaphore_waiters:{}\r\nevents:{}\r\nevent_waiters:{}\r\nconditions:{}\r\ncondition_waiters:{}\r\nbarriers:{}\r\nbarrier_waiters:{}\r\n",
        v.version,
        v.process_id,
        v.uptime_seconds,
        v.threads,
        v.durability,
        http,
        v.log_records,
        v.log_syncs,
        v.log_bytes,
        v.log_compactions,
        v.connected_clients,
        v.max_clients,
        s.broker.config.max_payload,
        v.max_request,
        v.idle_timeout_seconds,
        v.write_timeout_seconds,
        v.refused_requests,
        v.idle_closed,
        v.slow_closed,
        v.unauthenticated_closed,
        v.commands_processed,
        v.queued_memory,
        v.max_memory,
        v.queues,
        v.locks,
        v.lock_waiters,
        v.semaphores,
        v.semaphore_waiters,
        v.events,
        v.event_waiters,
        v.conditions,
        v.condition_waiters,
        v.barriers,
        v.barrier_waiters,
    );
    s.reply().bulk(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::credentials_in;
    use crate::acl::glob;

    #[test]
    fn the_credentials_checked_first_are_the_ones_the_command_uses() {
        let req = |args: &[&str]| ferry_proto::Request::from_args(args);
        let got = |args: &[&str]| credentials_in(&req(args)).map(|(u, p)| (u.to_vec(), p.to_vec()));
        let pair = |u: &str, p: &str| Some((u.as_bytes().to_vec(), p.as_bytes().to_vec()));
        assert_eq!(got(&["AUTH", "pw"]), pair("default", "pw"));
        assert_eq!(got(&["auth", "u", "pw"]), pair("u", "pw"));
        assert_eq!(got(&["AUTH", "a", "b", "c"]), None);
        // HELLO: the last AUTH counts, SETNAME takes a value (even "AUTH"),
        // and anything the parser refuses checks nothing.
        assert_eq!(
            got(&["HELLO", "3", "AUTH", "a", "b", "AUTH", "u", "g"]),
            pair("u", "g")
        );
        assert_eq!(
            got(&["HELLO", "3", "SETNAME", "AUTH", "AUTH", "u", "g"]),
            pair("u", "g")
        );
        assert_eq!(got(&["HELLO", "3", "AUTH", "u"]), None);
        assert_eq!(got(&["HELLO", "3", "BOGUS", "AUTH", "u", "g"]), None);
        assert_eq!(got(&["HELLO", "3"]), None);
    }

    #[test]
    fn globs_match_as_redis_config_get_does() {
        assert!(glob(b"*", b"maxclients", true));
        assert!(glob(b"proto-*", b"proto-max-bulk-len", true));
        assert!(glob(b"MAXCLIENTS", b"maxclients", true));
        assert!(glob(b"*max*len", b"proto-max-bulk-len", true));
        assert!(!glob(b"max", b"maxclients", true));
        assert!(!glob(b"save", b"maxclients", true));
        // A hostile pattern costs no more than its length times the name's.
        let hostile = [b'*'; 10_000];
        assert!(!glob(
            &[&hostile[..], b"x"].concat(),
            b"proto-max-bulk-len",
            true
        ));
    }
}
