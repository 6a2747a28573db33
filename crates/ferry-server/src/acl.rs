//! Users and what they may do (`--acl-file`, TOML): each user's password,
//! stored hashed (argon2id, PHC string: `ferry hash-password` makes one),
//! and glob patterns of the queues it may put to, get from, administer,
//! and of the locks it may take.
//!
//! ```toml
//! [users.default]            # AUTH <password> logs in as `default`
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! put = ["*"]
//! get = ["*"]
//! admin = ["*"]              # admin on "*": ACL LIST and the HTTP port
//! locks = ["*"]
//!
//! [users.worker]
//! password_hash = "$argon2id$..."
//! get = ["jobs.*"]
//!
//! [users.public]
//! password_hash = "$argon2id$..."
//! put = ["pub.*"]
//! max_bytes = "1gb"          # the queues it may put to hold at most this
//! max_queues = 100           # it may see (and so make) at most this many
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::config::{SettingsError, Size};

/// What a command needs of its user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Right {
    /// Put to a queue (QPUT, QPUTMANY).
    Put,
    /// Get from a queue and settle what was got (QGET, QDONE, QNACK,
    /// QTOUCH).
    Get,
    /// Look at or make a queue (QLEN, QINFO, QPEEK, QJOIN, QCREATE): any
    /// right on it.
    See,
    /// Configure, purge, drop or shut down a queue.
    Admin,
    /// Take and release a lock.
    Lock,
}

impl Right {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Right::Put => "put",
            Right::Get => "get",
            Right::See => "see",
            Right::Admin => "admin",
            Right::Lock => "lock",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    password_hash: String,
    #[serde(default)]
    put: Vec<String>,
    #[serde(default)]
    get: Vec<String>,
    #[serde(default)]
    admin: Vec<String>,
    #[serde(default)]
    locks: Vec<String>,
    max_bytes: Option<Size>,
    max_queues: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    users: HashMap<String, UserFile>,
}

/// One user.
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) name: String,
    hash: String,
    put: Vec<String>,
    get: Vec<String>,
    admin: Vec<String>,
    locks: Vec<String>,
    /// The queues it may put to may hold at most this many bytes
    /// together; its puts beyond are refused (`-OOM`).
    max_bytes: Option<u64>,
    /// It may see at most this many queues; a queue it would make beyond
    /// is refused.
    max_queues: Option<u64>,
    /// Bytes held in the queues it may put to (kept while it has a
    /// `max_bytes`).
    bytes: AtomicU64,
    /// Queues it may see (kept while it has a `max_queues`).
    queues: AtomicU64,
}

/// How a queue counts toward a user's limits.
pub(crate) struct Charge {
    pub(crate) user: Arc<User>,
    /// Its bytes count toward the user's `max_bytes`.
    bytes: bool,
    /// It counts toward the user's `max_queues`.
    queue: bool,
}

impl Charge {
    /// The queue's held bytes changed by `delta`.
    pub(crate) fn add_bytes(&self, delta: i64) {
        if self.bytes {
            if delta >= 0 {
                self.user.bytes.fetch_add(delta as u64, Ordering::Relaxed);
            } else {
                let _ = self
                    .user
                    .bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                        Some(b.saturating_sub(delta.unsigned_abs()))
                    });
            }
        }
    }

    /// The queue was made (`true`) or dropped.
    pub(crate) fn count_queue(&self, made: bool) {
        if self.queue {
            if made {
                self.user.queues.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = self
                    .user
                    .queues
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
            }
        }
    }
}

impl User {
    /// Why a put of its that would hold `adds` bytes more must be refused,
    /// if it must: the queues it may put to would pass its `max_bytes`.
    pub(crate) fn over_bytes(&self, adds: u64) -> Option<String> {
        let max = self.max_bytes?;
        let held = self.bytes.load(Ordering::Relaxed);
        (held >= max || held.saturating_add(adds) > max).then(|| {
            format!(
                "user '{}' is at its max_bytes: the queues it may put to hold {held} bytes (max {max}), and this put would add {adds}; puts are refused until they drain",
                self.name
            )
        })
    }

    /// Why it may not make another queue, if it may not.
    pub(crate) fn over_queues(&self) -> Option<String> {
        let max = self.max_queues?;
        let n = self.queues.load(Ordering::Relaxed);
        (n >= max).then(|| {
            format!(
                "user '{}' is at its max_queues: it may see {n} queues (max {max}); drop some first",
                self.name
            )
        })
    }

    /// May it do `right` to the queue (or lock) `name`?
    pub(crate) fn may(&self, right: Right, name: &[u8]) -> bool {
        let any = |patterns: &[String]| patterns.iter().any(|p| glob(p.as_bytes(), name, false));
        match right {
            Right::Put => any(&self.put),
            Right::Get => any(&self.get),
            Right::Admin => any(&self.admin),
            Right::Lock => any(&self.locks),
            Right::See => any(&self.put) || any(&self.get) || any(&self.admin),
        }
    }

    /// An operator: admin on every queue (`admin = ["*"]`).
    pub(crate) fn operator(&self) -> bool {
        self.admin.iter().any(|p| p == "*")
    }

    /// As ACL LIST shows it.
    pub(crate) fn describe(&self) -> String {
        let mut line = format!("user {} on #<argon2id>", self.name);
        for (right, patterns) in [
            ("put", &self.put),
            ("get", &self.get),
            ("admin", &self.admin),
            ("locks", &self.locks),
        ] {
            for p in patterns {
                line.push_str(&format!(" {right}:{p}"));
            }
        }
        if let Some(max) = self.max_bytes {
            line.push_str(&format!(
                " max_bytes:{max} (holds {})",
                self.bytes.load(Ordering::Relaxed)
            ));
        }
        if let Some(max) = self.max_queues {
            line.push_str(&format!(
                " max_queues:{max} (sees {})",
                self.queues.load(Ordering::Relaxed)
            ));
        }
        line
    }
}

/// Every user, and the credentials already checked. An argon2 check costs
/// tens of milliseconds by design: once per user and password, not once
/// per connection, and off the runtime's workers (`Broker::check_password`).
pub(crate) struct Acl {
    users: HashMap<String, Arc<User>>,
    /// The password found right for each user (the last one).
    checked: Mutex<HashMap<String, Vec<u8>>>,
    /// Credentials found wrong lately, newest last (at most
    /// [`REMEMBERED_WRONG`]): answered again without argon2.
    wrong: Mutex<std::collections::VecDeque<(Vec<u8>, Vec<u8>)>>,
    /// A hash an unknown user's password is checked against, so that the
    /// time an answer takes does not tell which user names exist.
    decoy: String,
}

/// Wrong credentials remembered.
const REMEMBERED_WRONG: usize = 256;

/// The longest user name and password checked: anything longer is wrong
/// without a check, and never remembered (the cache of wrong ones would
/// otherwise keep whatever a client sends).
const MAX_USER: usize = 256;
const MAX_PASSWORD: usize = 1024;

/// What is known of credentials without checking them.
pub(crate) enum Known {
    Right(Arc<User>),
    Wrong,
    /// Not checked yet: argon2 must say.
    Unchecked,
}

impl Acl {
    /// Reads and checks the file: every hash must parse.
    pub(crate) fn load(path: &Path) -> Result<Acl, SettingsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SettingsError(format!("reading {}: {e}", path.display())))?;
        let file: AclFile = toml::from_str(&text)
            .map_err(|e| SettingsError(format!("parsing {}: {e}", path.display())))?;
        let mut users = HashMap::new();
        for (name, u) in file.users {
            if let Err(e) = PasswordHash::new(&u.password_hash) {
                return Err(SettingsError(format!(
                    "{}: user {name}: password_hash is not a PHC hash ({e}); make one with `ferry hash-password`",
                    path.display()
                )));
            }
            let max_bytes = match &u.max_bytes {
                Some(size) => {
                    Some(size.bytes(&format!("{}: user {name}: max_bytes", path.display()))?)
                }
                None => None,
            };
            users.insert(
                name.clone(),
                Arc::new(User {
                    name,
                    hash: u.password_hash,
                    put: u.put,
                    get: u.get,
                    admin: u.admin,
                    locks: u.locks,
                    max_bytes,
                    max_queues: u.max_queues,
                    bytes: AtomicU64::new(0),
                    queues: AtomicU64::new(0),
                }),
            );
        }
        let decoy = hash_password(b"no user has this password")
            .map_err(|e| SettingsError(format!("making a decoy hash: {e}")))?;
        Ok(Acl {
            users,
            checked: Mutex::new(HashMap::new()),
            wrong: Mutex::new(std::collections::VecDeque::new()),
            decoy,
        })
    }

    /// What the caches know of these credentials: no argon2. Credentials
    /// longer than any a user has are wrong at once (and never kept).
    pub(crate) fn known(&self, user: &[u8], password: &[u8]) -> Known {
        if user.len() > MAX_USER || password.len() > MAX_PASSWORD {
            return Known::Wrong;
        }
        let name = std::str::from_utf8(user).ok();
        let u = name.and_then(|n| self.users.get(n));
        if let (Some(name), Some(u)) = (name, u)
            && let Some(right) = self.checked.lock().get(name)
            && constant_time_eq(right, password)
        {
            return Known::Right(Arc::clone(u));
        }
        let wrong = self.wrong.lock();
        if wrong
            .iter()
            .any(|(u, p)| u == user && constant_time_eq(p, password))
        {
            return Known::Wrong;
        }
        Known::Unchecked
    }

    /// Checks credentials with argon2 (slow by design: call it off the
    /// runtime's workers) and remembers the answer. An unknown user's
    /// password is checked against a decoy, taking the same time.
    pub(crate) fn verify(&self, user: &[u8], password: &[u8]) -> Option<Arc<User>> {
        if user.len() > MAX_USER || password.len() > MAX_PASSWORD {
            return None;
        }
        let u = std::str::from_utf8(user)
            .ok()
            .and_then(|n| self.users.get(n));
        let hash = u.map_or(self.decoy.as_str(), |u| u.hash.as_str());
        let right = PasswordHash::new(hash)
            .ok()
            .is_some_and(|h| Argon2::default().verify_password(password, &h).is_ok());
        match u {
            Some(u) if right => {
                self.checked
                    .lock()
                    .insert(u.name.clone(), password.to_vec());
                Some(Arc::clone(u))
            }
            _ => {
                let mut wrong = self.wrong.lock();
                if wrong.len() >= REMEMBERED_WRONG {
                    wrong.pop_front();
                }
                wrong.push_back((user.to_vec(), password.to_vec()));
                None
            }
        }
    }

    /// The user these credentials name, if the password is theirs: from
    /// the caches, else checked here.
    pub(crate) fn authenticate(&self, user: &[u8], password: &[u8]) -> Option<Arc<User>> {
        match self.known(user, password) {
            Known::Right(u) => Some(u),
            Known::Wrong => None,
            Known::Unchecked => self.verify(user, password),
        }
    }

    /// The users with limits that queue `name` counts toward.
    pub(crate) fn charges(&self, name: &[u8]) -> Vec<Charge> {
        self.users
            .values()
            .filter_map(|u| {
                let bytes = u.max_bytes.is_some() && u.may(Right::Put, name);
                let queue = u.max_queues.is_some() && u.may(Right::See, name);
                (bytes || queue).then(|| Charge {
                    user: Arc::clone(u),
                    bytes,
                    queue,
                })
            })
            .collect()
    }

    /// Every user, by name.
    pub(crate) fn users(&self) -> Vec<Arc<User>> {
        let mut all: Vec<Arc<User>> = self.users.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// Compares without leaving the time it took as a hint of where they
/// differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Does `name` match `pattern`, where `*` stands for any run of
/// characters (`fold`: letters in either case)? The two-cursor matcher: at
/// most len(pattern) × len(name) steps, whatever the pattern.
pub(crate) fn glob(pattern: &[u8], name: &[u8], fold: bool) -> bool {
    let same = |a: u8, b: u8| {
        if fold {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && same(pattern[p], name[n]) {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A PHC argon2id hash of `password`, for the ACL file.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    use rand_core::OsRng;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}
