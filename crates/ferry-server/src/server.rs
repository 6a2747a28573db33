//! Listeners: accept connections on TCP and, if asked, a Unix socket, and
//! give each its own task.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::config::SettingsError;
use crate::conn::{Conn, Stream};
use crate::tls::HANDSHAKE_TIMEOUT;

/// A broker bound to its addresses, ready to serve.
pub struct Server {
    broker: Arc<Broker>,
    tcp: TcpListener,
    unix: Option<(UnixListener, PathBuf)>,
    http: Option<TcpListener>,
    /// TLS on the TCP and HTTP ports, if asked.
    tls: Option<TlsAcceptor>,
    bound: Bound,
}

/// How [`Server::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop.
    Clean,
    /// The log failed; the process should exit with an error.
    LogFailed,
}

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings cannot be served.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The data directory could not be opened: in use by another broker,
    /// damaged, or unreadable.
    #[error(transparent)]
    Store(#[from] ferry_log::LogError),
    /// A listener could not be set up.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address or socket path.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Where a bound server listens.
#[derive(Clone, Debug)]
pub struct Bound {
    /// The TCP address, with the real port when 0 was asked for.
    pub tcp: std::net::SocketAddr,
    /// The Unix socket, if any.
    pub unix: Option<PathBuf>,
    /// The HTTP admin port, if any, with the real port.
    pub http: Option<std::net::SocketAddr>,
}

impl Server {
    /// Validates the settings, opens the store (taking the data
    /// directory's lock, then replaying the log), and only then binds the
    /// listeners — so that a broker refused for a directory in use touches
    /// no path of the one running there. A Unix socket file left by an
    /// earlier run is replaced; one a live broker answers on is not.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        config.validate()?;
        // Its files read before the store is touched: a bad one stops
        // the start with its name.
        let tls = crate::tls::acceptor(&config)?;
        let acl = match &config.acl_file {
            Some(path) => Some(crate::acl::Acl::load(path)?),
            None => None,
        };
        let listen_err = |address: String| move |source| StartError::Listen { address, source };
        let (broker, recovery) = Broker::open(config, acl)?;
        if let Some(r) = recovery {
            info!(
                records = r.records,
                segments = r.segments,
                "store recovered"
            );
            if r.salvaged() {
                // The damaged segments leave the log (they are kept aside),
                // so that the next start needs no --salvage.
                let freed = broker.checkpoint().await?;
                if broker
                    .store
                    .as_ref()
                    .is_some_and(|s| s.log().started_segment() > 0)
                {
                    warn!(
                        freed,
                        "salvage: wrote a checkpoint; the log no longer holds the damaged segments"
                    );
                } else {
                    warn!(
                        "salvage: the disk has no room for a checkpoint; the damaged segments stay in the log, and the next start needs --salvage too"
                    );
                }
            }
        }
        let config = &broker.config;
        let tcp_addr = format!("{}:{}", config.bind, config.port);
        let tcp = TcpListener::bind((config.bind, config.port))
            .await
            .map_err(listen_err(tcp_addr.clone()))?;
        let unix = match &config.unix {
            Some(path) => {
                let address = format!("unix:{}", path.display());
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(listen_err(address)(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "the socket is in use by a running broker",
                    )));
                }
                if path.exists() {
                    std::fs::remove_file(path).map_err(listen_err(address.clone()))?;
                }
                Some((
                    UnixListener::bind(path).map_err(listen_err(address))?,
                    path.clone(),
                ))
            }
            None => None,
        };
        let http = match config.http_addr() {
            Some(addr) => {
                let address = format!("http://{addr}");
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(listen_err(address.clone()))?;
                broker.set_http_addr(l.local_addr().map_err(listen_err(address))?);
                Some(l)
            }
            None => None,
        };
        let bound = Bound {
            tcp: tcp.local_addr().map_err(listen_err(tcp_addr))?,
            unix: unix.as_ref().map(|(_, p)| p.clone()),
            http: broker.http_addr(),
        };
        Ok(Server {
            broker,
            tcp,
            unix,
            http,
            tls,
            bound,
        })
    }

    /// Where it listens.
    pub fn bound(&self) -> Bound {
        self.bound.clone()
    }

    /// Serves until `shutdown` resolves: then stops accepting, lets every
    /// connection finish the batch it is answering, syncs the log, and
    /// returns. If the log fails (a write or fsync error), it stops at once
    /// and replies [`Stopped::LogFailed`]: nothing more is acknowledged.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Stopped {
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks = tokio_util_tracker();
        let tcp = accept_tcp(
            self.tcp,
            self.tls.clone(),
            Arc::clone(&self.broker),
            stop_rx.clone(),
            tasks.clone(),
        );
        let unix = async {
            match self.unix {
                Some((listener, _)) => {
                    accept_unix(
                        listener,
                        Arc::clone(&self.broker),
                        stop_rx.clone(),
                        tasks.clone(),
                    )
                    .await
                }
                None => std::future::pending().await,
            }
        };
        if let Some(listener) = self.http {
            let mut stop = stop_rx.clone();
            let app = crate::http::router(Arc::clone(&self.broker));
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|&s| s).await;
                };
                let served = match tls {
                    None => {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .await
                    }
                    Some(acceptor) => {
                        let listener = crate::tls::HttpsListener::new(listener, acceptor);
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .await
                    }
                };
                if let Err(e) = served {
                    warn!(error = %e, "the HTTP admin port stopped");
                }
            });
        }
        let failure = self.broker.store.as_ref().map(|s| Arc::clone(&s.failure));
        let failed = async {
            match failure {
                Some(f) => f.notified().await,
                None => std::future::pending().await,
            }
        };
        let stopped = tokio::select! {
            _ = tcp => Stopped::Clean,
            _ = unix => Stopped::Clean,
            _ = shutdown => {
                info!("shutting down");
                Stopped::Clean
            }
            _ = failed => Stopped::LogFailed,
        };
        let _ = stop_tx.send(true);
        // Connections end at their next read; give them a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tasks.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(path) = self.broker.config.unix.as_ref() {
            let _ = std::fs::remove_file(path);
        }
        // Everything in flight is written and fsynced before exit.
        if let Some(store) = &self.broker.store {
            store.close();
        }
        stopped
    }
}

type Tracker = Arc<std::sync::atomic::AtomicUsize>;

fn tokio_util_tracker() -> Tracker {
    Arc::new(std::sync::atomic::AtomicUsize::new(0))
}

/// Starts a connection's task (which first completes a TLS handshake, if
/// `tls`), or refuses it when the server is full.
fn spawn_conn(
    stream: Stream,
    tls: Option<TlsAcceptor>,
    broker: &Arc<Broker>,
    stop: &watch::Receiver<bool>,
    tasks: &Tracker,
) {
    tasks.fetch_add(1, Ordering::AcqRel);
    let (broker, stop, tasks) = (Arc::clone(broker), stop.clone(), Arc::clone(tasks));
    match (stream, tls) {
        (Stream::Tcp(tcp), Some(acceptor)) => {
            // A handshake is not a client yet: it is counted among the
            // handshakes, whose oldest a newcomer cuts short when there
            // are as many as clients may be (one that never speaks holds
            // nobody out), and within HANDSHAKE_TIMEOUT in any case.
            let (id, cut) = broker.handshakes.begin(broker.config.max_clients);
            tokio::spawn(async move {
                let stream = tokio::select! {
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match r {
                        Ok(Ok(tls)) => Some(Stream::Tls(Box::new(tls))),
                        Ok(Err(e)) => {
                            debug!(error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            debug!("TLS handshake took too long");
                            None
                        }
                    },
                    () = cut.notified() => {
                        debug!("TLS handshake cut short for a newcomer");
                        None
                    }
                };
                broker.handshakes.end(id);
                if let Some(stream) = stream {
                    serve_conn(stream, broker, stop).await;
                }
                tasks.fetch_sub(1, Ordering::AcqRel);
            });
        }
        (stream, _) => {
            tokio::spawn(async move {
                serve_conn(stream, broker, stop).await;
                tasks.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

/// Serves a connection, or refuses it when the server is full. A full
/// broker makes room by closing the oldest connection that has not
/// authenticated: strangers never keep a client out, and never take an
/// authenticated one's place.
async fn serve_conn(mut stream: Stream, broker: Arc<Broker>, stop: watch::Receiver<bool>) {
    let clients = broker.clients.fetch_add(1, Ordering::AcqRel) + 1;
    if clients > broker.config.max_clients && !broker.connections.evict_oldest_stranger() {
        broker.clients.fetch_sub(1, Ordering::AcqRel);
        let _ = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            stream.write_all(b"-ERR max number of clients reached\r\n"),
        )
        .await;
        return;
    }
    Conn::new(stream, broker, stop).run().await;
}

async fn accept_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
    tasks: Tracker,
) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                // A client whose host vanished is noticed within about a
                // minute (30 s idle + 3 probes 10 s apart), and its leases
                // come back.
                if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                    warn!(error = %e, "could not set TCP keepalive");
                }
                spawn_conn(Stream::Tcp(stream), tls.clone(), &broker, &stop, &tasks);
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_unix(
    listener: UnixListener,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
    tasks: Tracker,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_conn(Stream::Unix(stream), None, &broker, &stop, &tasks),
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
