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
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::serve::SettingsError;

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
}

impl User {
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
        line
    }
}

/// Every user, and the passwords already checked (an argon2 check costs
/// tens of milliseconds by design: once per user and password, not once
/// per connection).
pub(crate) struct Acl {
    users: HashMap<String, Arc<User>>,
    checked: Mutex<HashMap<String, Vec<u8>>>,
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
            users.insert(
                name.clone(),
                Arc::new(User {
                    name,
                    hash: u.password_hash,
                    put: u.put,
                    get: u.get,
                    admin: u.admin,
                    locks: u.locks,
                }),
            );
        }
        Ok(Acl {
            users,
            checked: Mutex::new(HashMap::new()),
        })
    }

    /// The user these credentials name, if the password is theirs.
    pub(crate) fn authenticate(&self, user: &[u8], password: &[u8]) -> Option<Arc<User>> {
        let name = std::str::from_utf8(user).ok()?;
        let u = self.users.get(name)?;
        if let Some(known) = self.checked.lock().get(name)
            && constant_time_eq(known, password)
        {
            return Some(Arc::clone(u));
        }
        let hash = PasswordHash::new(&u.hash).ok()?;
        Argon2::default().verify_password(password, &hash).ok()?;
        self.checked
            .lock()
            .insert(name.to_string(), password.to_vec());
        Some(Arc::clone(u))
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
