//! The blocking [`Client`]: the async client run on a small runtime of
//! its own, one method per operation.

use std::time::Duration;

use crate::{
    AsyncClient, DEFAULT_URL, Error, Message, Reconnect, Value, leave_signals_to_the_program,
};

/// A blocking client: [`AsyncClient`] run on a small runtime of its own,
/// so every operation exists once.
///
/// It holds one connection and, when that connection is lost, opens
/// another (see [`Reconnect`]) and retries only what is safe to retry:
///
/// - reads (`qsize`, `join`, ...), settings and shutdowns, which change
///   nothing twice;
/// - `put`, which carries a DEDUP key made by the client, so a put whose
///   reply was lost returns the first put's id instead of adding a copy
///   (keys are durable: this holds across a broker crash);
/// - gets, which are leased: a get whose reply was lost left its messages
///   leased to the dead connection, and the broker gives them back.
///
/// Not retried: `put_many` (no DEDUP for batches), raw [`Client::call`]s,
/// and `task_done` / `nack` of a message got on a connection that was lost
/// — its lease went with that connection, so they fail with
/// [`Error::LeaseLost`] and the message is delivered again.
///
/// A [`Message`] dropped without `task_done` stays leased until this
/// client's connection closes; then the broker delivers it again (with
/// one more attempt). That is the safe thing: work is never lost, only
/// repeated.
pub struct Client {
    rt: tokio::runtime::Runtime,
    inner: AsyncClient,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Client {
    /// Connects to a URL (see [`Url`](crate::Url)) and authenticates if it has a
    /// password.
    ///
    /// ```no_run
    /// let c = ferry_client::Client::connect("unix:///run/ferry.sock?password=s3cret")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn connect(url: &str) -> Result<Client, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_start(leave_signals_to_the_program)
            .build()?;
        let inner = rt.block_on(AsyncClient::connect(url))?;
        Ok(Client { rt, inner })
    }

    /// Connects to `FERRY_URL`, or [`DEFAULT_URL`].
    ///
    /// ```no_run
    /// let c = ferry_client::Client::from_env()?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn from_env() -> Result<Client, Error> {
        let url = std::env::var("FERRY_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        Client::connect(&url)
    }

    /// Sets how hard to try to reconnect (`within: 0` never reconnects).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.set_reconnect(ferry_client::Reconnect { within: std::time::Duration::from_secs(60), ..Default::default() });
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn set_reconnect(&mut self, reconnect: Reconnect) {
        self.inner.set_reconnect(reconnect);
    }

    /// Sends any command and returns its reply; an error reply becomes the
    /// matching [`Error`]. Never retried: after a lost connection it
    /// reconnects for the next call and returns the I/O error.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let reply = c.call(&[b"PING"])?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Value, Error> {
        self.rt.block_on(self.inner.call(args))
    }

    /// Sends several commands in one write and reads their replies, in
    /// order: one round trip for all. Each reply is its own result; a lost
    /// connection fails the whole pipeline (not retried).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let replies = c.pipeline(&[vec![&b"QLEN"[..], b"a"], vec![&b"QLEN"[..], b"b"]])?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn pipeline(
        &mut self,
        commands: &[Vec<&[u8]>],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        self.rt.block_on(self.inner.pipeline(commands))
    }

    /// [`pipeline`](Self::pipeline), given up after `within`
    /// ([`Error::Io`], `TimedOut`: the commands may or may not have run).
    pub fn pipeline_within(
        &mut self,
        commands: &[Vec<&[u8]>],
        within: Duration,
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        self.rt
            .block_on(self.inner.pipeline_within(commands, within))
    }

    /// Puts a message, waiting as long as the queue is full; replies its id.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let id = c.put("jobs", b"payload")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn put(&mut self, queue: &str, payload: &[u8]) -> Result<u64, Error> {
        self.rt.block_on(self.inner.put(queue, payload))
    }

    /// Puts a message if there is room now, else [`Error::Full`].
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// match c.put_nowait("jobs", b"payload") {
    ///     Err(ferry_client::Error::Full) => println!("try later"),
    ///     other => { other?; }
    /// }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn put_nowait(&mut self, queue: &str, payload: &[u8]) -> Result<u64, Error> {
        self.rt.block_on(self.inner.put_nowait(queue, payload))
    }

    /// Puts a message, waiting at most `timeout` for room.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.put_timeout("jobs", b"payload", std::time::Duration::from_secs(1))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn put_timeout(
        &mut self,
        queue: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<u64, Error> {
        self.rt
            .block_on(self.inner.put_timeout(queue, payload, timeout))
    }

    /// Puts several messages, all or nothing, waiting for room for all of
    /// them; replies their ids.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let ids = c.put_many("jobs", &[&b"a"[..], b"b"])?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn put_many(&mut self, queue: &str, payloads: &[&[u8]]) -> Result<Vec<u64>, Error> {
        self.rt.block_on(self.inner.put_many(queue, payloads))
    }

    /// Gets a message, waiting as long as the queue is empty. It is leased
    /// to this connection until [`Client::task_done`].
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get("jobs")?;
    /// c.task_done("jobs", m.id)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get(&mut self, queue: &str) -> Result<Message, Error> {
        self.rt.block_on(self.inner.get(queue))
    }

    /// Gets a message if one is ready now, else [`Error::Empty`].
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if let Ok(m) = c.get_nowait("jobs") { c.task_done("jobs", m.id)?; }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get_nowait(&mut self, queue: &str) -> Result<Message, Error> {
        self.rt.block_on(self.inner.get_nowait(queue))
    }

    /// Gets a message, waiting at most `timeout`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get_timeout("jobs", std::time::Duration::from_secs(5))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get_timeout(&mut self, queue: &str, timeout: Duration) -> Result<Message, Error> {
        self.rt.block_on(self.inner.get_timeout(queue, timeout))
    }

    /// Gets up to `n` messages, waiting at most `timeout` (`None`: as long
    /// as it takes) for the first.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let batch = c.get_many("jobs", 100, Some(std::time::Duration::from_secs(1)))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get_many(
        &mut self,
        queue: &str,
        n: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Message>, Error> {
        self.rt.block_on(self.inner.get_many(queue, n, timeout))
    }

    /// Python's `task_done`: finishes a message this connection got.
    /// [`Error::NotLeased`] if it holds no such message (done already);
    /// [`Error::LeaseLost`] if the connection that got it was lost.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get("jobs")?;
    /// c.task_done("jobs", m.id)?;
    /// assert!(matches!(c.task_done("jobs", m.id), Err(ferry_client::Error::NotLeased)));
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn task_done(&mut self, queue: &str, id: u64) -> Result<(), Error> {
        self.rt.block_on(self.inner.task_done(queue, id))
    }

    /// Gives a message back for another try (attempt + 1).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get("jobs")?;
    /// c.nack("jobs", m.id)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn nack(&mut self, queue: &str, id: u64) -> Result<(), Error> {
        self.rt.block_on(self.inner.nack(queue, id))
    }

    /// Extends the lease of a message this connection got, to `lease` from
    /// now (or its own length again); replies the time left, `None` for a
    /// lease that lasts as long as the connection.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get("jobs")?;
    /// c.touch("jobs", m.id, Some(std::time::Duration::from_secs(30)))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn touch(
        &mut self,
        queue: &str,
        id: u64,
        lease: Option<Duration>,
    ) -> Result<Option<Duration>, Error> {
        self.rt.block_on(self.inner.touch(queue, id, lease))
    }

    /// Ready messages (Python's `qsize()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// println!("{} waiting", c.qsize("jobs")?);
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn qsize(&mut self, queue: &str) -> Result<u64, Error> {
        self.rt.block_on(self.inner.qsize(queue))
    }

    /// True when no message is ready (Python's `empty()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if c.empty("jobs")? { println!("idle"); }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn empty(&mut self, queue: &str) -> Result<bool, Error> {
        self.rt.block_on(self.inner.empty(queue))
    }

    /// True when the queue is at its maxsize (Python's `full()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if c.full("jobs")? { println!("back off"); }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn full(&mut self, queue: &str) -> Result<bool, Error> {
        self.rt.block_on(self.inner.full(queue))
    }

    /// [`AsyncClient::call_cancellable`]: a command that may block, given
    /// up when `cancel` resolves (it runs on this client's runtime), with
    /// nothing the broker delivered meanwhile lost.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let give_up = tokio::time::sleep(std::time::Duration::from_secs(1));
    /// let (reply, cancelled) = c.call_cancellable(&[b"QGET", b"jobs"], give_up)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn call_cancellable(
        &mut self,
        args: &[&[u8]],
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        self.rt.block_on(self.inner.call_cancellable(args, cancel))
    }

    /// [`AsyncClient::set_holder`]: this client's connections join the
    /// holder group `token`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.set_holder("a-random-token-of-this-process")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn set_holder(&mut self, token: &str) -> Result<(), Error> {
        self.rt.block_on(self.inner.set_holder(token))
    }

    /// The largest payload the broker takes, as it said at connect
    /// (`None`: it did not say).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let limit = c.max_payload()?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn max_payload(&mut self) -> Result<Option<usize>, Error> {
        self.rt.block_on(self.inner.max_payload())
    }

    /// One of QINFO's counters (`qsize`, `leased`, `waiting_getters`, ...
    /// — docs/protocol.md lists them); 0 for a queue that does not exist.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// println!("{} consumers waiting", c.counter("jobs", "waiting_getters")?);
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn counter(&mut self, queue: &str, field: &str) -> Result<u64, Error> {
        self.rt.block_on(self.inner.counter(queue, field))
    }

    /// Messages put and not yet done.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// println!("{} to go", c.unfinished("jobs")?);
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn unfinished(&mut self, queue: &str) -> Result<u64, Error> {
        self.rt.block_on(self.inner.unfinished(queue))
    }

    /// Waits until every message put has been done (Python's `join()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.join("jobs")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn join(&mut self, queue: &str) -> Result<(), Error> {
        self.rt.block_on(self.inner.join(queue))
    }

    /// Waits at most `timeout` for every message to be done; false if some
    /// were not.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let finished = c.join_timeout("jobs", std::time::Duration::from_secs(60))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn join_timeout(&mut self, queue: &str, timeout: Duration) -> Result<bool, Error> {
        self.rt.block_on(self.inner.join_timeout(queue, timeout))
    }

    /// Python 3.13's `shutdown(immediate)`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.shutdown("jobs", false)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn shutdown(&mut self, queue: &str, immediate: bool) -> Result<(), Error> {
        self.rt.block_on(self.inner.shutdown(queue, immediate))
    }

    /// Takes the mutex `name` (`multiprocessing.Lock.acquire`): waits up to
    /// `timeout` (`None`: forever; zero: not at all). Replies its fencing
    /// token, or `None` if it was not acquired in time. Released by
    /// [`unlock`](Self::unlock), when `ttl` passes, or when this
    /// connection closes (see [`AsyncClient::lock`]).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if let Some(token) = c.lock("ledger", None, None)? {
    ///     // ... the critical section ...
    ///     c.unlock("ledger", token)?;
    /// }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn lock(
        &mut self,
        name: &str,
        timeout: Option<Duration>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, Error> {
        self.rt.block_on(self.inner.lock(name, timeout, ttl))
    }

    /// Releases the mutex `name` if `token` is its current grant. Replies
    /// whether it was.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let released = c.unlock("ledger", 1)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn unlock(&mut self, name: &str, token: u64) -> Result<bool, Error> {
        self.rt.block_on(self.inner.unlock(name, token))
    }

    /// Whether `token` still holds the mutex `name`: false once it was
    /// released, its TTL ran out, or its holder's connection (on Redis,
    /// its process's heartbeat) was lost.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let still_mine = c.lock_held("ledger", 1)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn lock_held(&mut self, name: &str, token: u64) -> Result<bool, Error> {
        self.rt.block_on(self.inner.lock_held(name, token))
    }

    /// Takes a permit of the semaphore `name` made with `value` permits;
    /// see [`AsyncClient::sem_acquire`](crate::AsyncClient::sem_acquire).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if let Some(token) = c.sem_acquire("api", 4, None, None)? {
    ///     c.sem_release("api", 4, Some(token), false)?;
    /// }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn sem_acquire(
        &mut self,
        name: &str,
        value: u64,
        timeout: Option<Duration>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, Error> {
        self.rt
            .block_on(self.inner.sem_acquire(name, value, timeout, ttl))
    }

    /// Gives back the permit `token` holds, or adds one; see
    /// [`AsyncClient::sem_release`](crate::AsyncClient::sem_release).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.sem_release("ready", 0, None, false)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn sem_release(
        &mut self,
        name: &str,
        value: u64,
        token: Option<u64>,
        bounded: bool,
    ) -> Result<bool, Error> {
        self.rt
            .block_on(self.inner.sem_release(name, value, token, bounded))
    }

    /// Whether `token` still holds a permit of the semaphore `name`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let still_mine = c.sem_held("api", 1)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn sem_held(&mut self, name: &str, token: u64) -> Result<bool, Error> {
        self.rt.block_on(self.inner.sem_held(name, token))
    }

    /// The free permits of the semaphore `name` made with `value`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let free = c.sem_value("api", 4)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn sem_value(&mut self, name: &str, value: u64) -> Result<u64, Error> {
        self.rt.block_on(self.inner.sem_value(name, value))
    }

    /// Sets the event `name`: every waiter wakes (`Event.set`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.event_set("go")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn event_set(&mut self, name: &str) -> Result<(), Error> {
        self.rt.block_on(self.inner.event_set(name))
    }

    /// Clears the event `name` (`Event.clear`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.event_clear("go")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn event_clear(&mut self, name: &str) -> Result<(), Error> {
        self.rt.block_on(self.inner.event_clear(name))
    }

    /// Whether the event `name` is set (`Event.is_set`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let started = c.event_is_set("go")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn event_is_set(&mut self, name: &str) -> Result<bool, Error> {
        self.rt.block_on(self.inner.event_is_set(name))
    }

    /// Waits up to `timeout` (`None`: forever) until the event `name` is
    /// set; see [`AsyncClient::event_wait`](crate::AsyncClient::event_wait).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let set = c.event_wait("go", Some(std::time::Duration::from_secs(5)))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn event_wait(&mut self, name: &str, timeout: Option<Duration>) -> Result<bool, Error> {
        self.rt.block_on(self.inner.event_wait(name, timeout))
    }
}
