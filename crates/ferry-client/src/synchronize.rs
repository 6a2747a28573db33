//! Locks, semaphores and events on [`AsyncClient`]: LOCK/UNLOCK/LOCKED,
//! SEMACQUIRE/SEMRELEASE/SEMVALUE and EVSET/EVCLEAR/EVISSET/EVWAIT
//! (docs/protocol.md).

use std::time::Duration;

use ferry_proto::Value;

use crate::aio::millis;
use crate::{AsyncClient, Error};

/// The options of an acquisition: how long to wait (`None`: forever;
/// zero: NOWAIT) and a TTL.
fn acquire_args<'a>(
    args: &mut Vec<&'a [u8]>,
    timeout: Option<Duration>,
    wait: &'a str,
    ttl: &'a Option<String>,
) {
    if let Some(ttl) = ttl {
        args.extend_from_slice(&[b"TTL", ttl.as_bytes()]);
    }
    wait_args(args, timeout, wait);
}

/// How long to wait: `None` forever (TIMEOUT 0), zero NOWAIT, else
/// TIMEOUT `wait` (the timeout in milliseconds).
fn wait_args<'a>(args: &mut Vec<&'a [u8]>, timeout: Option<Duration>, wait: &'a str) {
    if timeout == Some(Duration::ZERO) {
        args.push(b"NOWAIT");
    } else {
        args.extend_from_slice(&[b"TIMEOUT", wait.as_bytes()]);
    }
}

impl AsyncClient {
    /// Takes the mutex `name` (`multiprocessing.Lock.acquire`): waits up to
    /// `timeout` (`None`: forever; zero: not at all). Replies its fencing
    /// token, larger than any granted before, or `None` if it was not
    /// acquired in time. The lock is released by [`unlock`](Self::unlock),
    /// when `ttl` passes, or when this connection closes — including a
    /// lost connection this client then reopens, so a holder that must
    /// know sets `set_reconnect(false)`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// if let Some(token) = c.lock("ledger", None, None).await? {
    ///     // ... the critical section ...
    ///     c.unlock("ledger", token).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lock(
        &mut self,
        name: &str,
        timeout: Option<Duration>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, Error> {
        let wait = timeout.map_or_else(|| "0".to_string(), millis);
        let ttl = ttl.map(millis);
        let mut args: Vec<&[u8]> = vec![b"LOCK", name.as_bytes()];
        acquire_args(&mut args, timeout, &wait, &ttl);
        match self.call_retrying(&args, false).await? {
            Value::Int(token) => Ok(Some(token as u64)),
            Value::Nil => Ok(None),
            other => Err(Error::Protocol(format!("LOCK replied {other:?}"))),
        }
    }

    /// Releases the mutex `name` if `token` is its current grant (from any
    /// connection). Replies whether it was.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// # let token = 1;
    /// let released = c.unlock("ledger", token).await?;
    /// # Ok(()) }
    /// ```
    pub async fn unlock(&mut self, name: &str, token: u64) -> Result<bool, Error> {
        let token = token.to_string();
        match self
            .call_retrying(&[b"UNLOCK", name.as_bytes(), token.as_bytes()], true)
            .await?
        {
            Value::Int(n) => Ok(n == 1),
            other => Err(Error::Protocol(format!("UNLOCK replied {other:?}"))),
        }
    }

    /// Whether `token` still holds the mutex `name` (LOCKED): false once
    /// it was released, its TTL ran out, or its holder's connection (on
    /// Redis, its process's heartbeat) was lost — how a holder learns it
    /// lost the lock.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// # let token = 1;
    /// if !c.lock_held("ledger", token).await? {
    ///     // stop writing: another holder may have it now
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lock_held(&mut self, name: &str, token: u64) -> Result<bool, Error> {
        let token = token.to_string();
        match self
            .call_retrying(&[b"LOCKED", name.as_bytes(), token.as_bytes()], true)
            .await?
        {
            Value::Int(n) => Ok(n == 1),
            other => Err(Error::Protocol(format!("LOCKED replied {other:?}"))),
        }
    }

    /// Takes a permit of the semaphore `name`, made with `value` permits
    /// if nobody uses it (`multiprocessing.Semaphore(value).acquire`):
    /// waits up to `timeout` (`None`: forever; zero: only if one is free
    /// now), first come first served. Replies the grant's fencing token,
    /// or `None`. The permit goes back by [`sem_release`](Self::sem_release)
    /// with the token, when this connection closes, or when `ttl` runs out
    /// — a lost holder's only as far as `value`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// if let Some(token) = c.sem_acquire("api", 4, None, None).await? {
    ///     // at most 4 holders at once, on every machine
    ///     c.sem_release("api", 4, Some(token), false).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn sem_acquire(
        &mut self,
        name: &str,
        value: u64,
        timeout: Option<Duration>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, Error> {
        let wait = timeout.map_or_else(|| "0".to_string(), millis);
        let ttl = ttl.map(millis);
        let value = value.to_string();
        let mut args: Vec<&[u8]> = vec![b"SEMACQUIRE", name.as_bytes(), b"VALUE", value.as_bytes()];
        acquire_args(&mut args, timeout, &wait, &ttl);
        match self.call_retrying(&args, false).await? {
            Value::Int(token) => Ok(Some(token as u64)),
            Value::Nil => Ok(None),
            other => Err(Error::Protocol(format!("SEMACQUIRE replied {other:?}"))),
        }
    }

    /// Gives back the permit `token` holds (whether it held one is the
    /// reply), or, without a token, adds one (`Semaphore.release()` from
    /// any process: always true). A `bounded` semaphore refuses to exceed
    /// its value: the broker's -OVERRELEASED error.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// c.sem_release("ready", 0, None, false).await?; // a signal: one more permit
    /// # Ok(()) }
    /// ```
    pub async fn sem_release(
        &mut self,
        name: &str,
        value: u64,
        token: Option<u64>,
        bounded: bool,
    ) -> Result<bool, Error> {
        let value = value.to_string();
        let token = token.map(|t| t.to_string());
        let mut args: Vec<&[u8]> = vec![b"SEMRELEASE", name.as_bytes(), b"VALUE", value.as_bytes()];
        if let Some(t) = &token {
            args.extend_from_slice(&[b"TOKEN", t.as_bytes()]);
        }
        if bounded {
            args.push(b"BOUNDED");
        }
        // A release without a token is not idempotent: sent once.
        match self.call_retrying(&args, token.is_some()).await? {
            Value::Int(n) => Ok(n == 1),
            other => Err(Error::Protocol(format!("SEMRELEASE replied {other:?}"))),
        }
    }

    /// Whether `token` still holds a permit of the semaphore `name`
    /// (SEMHELD): false once it was given back, its TTL ran out, or its
    /// holder's connection was lost.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let still_mine = c.sem_held("api", 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn sem_held(&mut self, name: &str, token: u64) -> Result<bool, Error> {
        let token = token.to_string();
        match self
            .call_retrying(&[b"SEMHELD", name.as_bytes(), token.as_bytes()], true)
            .await?
        {
            Value::Int(n) => Ok(n == 1),
            other => Err(Error::Protocol(format!("SEMHELD replied {other:?}"))),
        }
    }

    /// The free permits of the semaphore `name` made with `value`
    /// (`Semaphore.get_value()`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let free = c.sem_value("api", 4).await?;
    /// # Ok(()) }
    /// ```
    pub async fn sem_value(&mut self, name: &str, value: u64) -> Result<u64, Error> {
        let value = value.to_string();
        match self
            .call_retrying(
                &[b"SEMVALUE", name.as_bytes(), b"VALUE", value.as_bytes()],
                true,
            )
            .await?
        {
            Value::Int(n) => Ok(n as u64),
            other => Err(Error::Protocol(format!("SEMVALUE replied {other:?}"))),
        }
    }

    /// Sets the event `name` (`multiprocessing.Event.set`): every waiter
    /// wakes, and waits return at once until it is cleared.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// c.event_set("go").await?;
    /// # Ok(()) }
    /// ```
    pub async fn event_set(&mut self, name: &str) -> Result<(), Error> {
        self.event_op(b"EVSET", name).await.map(drop)
    }

    /// Clears the event `name` (`Event.clear`): waits wait again.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// c.event_clear("go").await?;
    /// # Ok(()) }
    /// ```
    pub async fn event_clear(&mut self, name: &str) -> Result<(), Error> {
        self.event_op(b"EVCLEAR", name).await.map(drop)
    }

    /// Whether the event `name` is set (`Event.is_set`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let started = c.event_is_set("go").await?;
    /// # Ok(()) }
    /// ```
    pub async fn event_is_set(&mut self, name: &str) -> Result<bool, Error> {
        self.event_op(b"EVISSET", name).await
    }

    /// Waits until the event `name` is set (`Event.wait(timeout)`): up to
    /// `timeout` (`None`: forever; zero: not at all). Replies true once it
    /// is set — also when a set woke this wait and a clear came before it
    /// returned, as Python's does — and false if the time ran out.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// if c.event_wait("go", None).await? {
    ///     // everyone starts together
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn event_wait(
        &mut self,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<bool, Error> {
        let wait = timeout.map_or_else(|| "0".to_string(), millis);
        let mut args: Vec<&[u8]> = vec![b"EVWAIT", name.as_bytes()];
        wait_args(&mut args, timeout, &wait);
        // Waiting changes nothing: sent again after a lost connection.
        match self.call_retrying(&args, true).await? {
            Value::Int(n) => Ok(n == 1),
            other => Err(Error::Protocol(format!("EVWAIT replied {other:?}"))),
        }
    }

    /// EVSET, EVCLEAR or EVISSET (each safe to send again).
    async fn event_op(&mut self, command: &[u8], name: &str) -> Result<bool, Error> {
        match self
            .call_retrying(&[command, name.as_bytes()], true)
            .await?
        {
            Value::Int(n) => Ok(n == 1),
            other => Err(Error::Protocol(format!(
                "{} replied {other:?}",
                String::from_utf8_lossy(command)
            ))),
        }
    }
}
