//! The HTTP admin port: `/metrics` (Prometheus, OpenMetrics text) and
//! the JSON API under `/api` (docs/http-api.md), served by axum on the
//! broker's runtime. Every answer is read from the same views QINFO and
//! INFO report (view.rs); with `--requirepass`, every request must carry
//! the password (HTTP Basic, any user name, or a Bearer token).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use ferry_log::histogram::Snapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::clients::ClientView;
use crate::view::{QueueView, ServerView, SyncView};

/// The admin port's routes over `broker`.
pub(crate) fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/api/server", get(server))
        .route("/api/queues", get(queues))
        .route("/api/queues/{name}", get(queue))
        .route("/api/queues/{name}/purge", post(purge))
        .route("/api/queues/{name}/pause", post(pause))
        .route("/api/queues/{name}/resume", post(resume))
        .route("/api/queues/{name}/redrive", post(redrive))
        .route("/api/locks", get(locks))
        .route("/api/semaphores", get(semaphores))
        .route("/api/sync", get(sync))
        .route("/api/clients", get(clients))
        .layer(middleware::from_fn_with_state(Arc::clone(&broker), guard))
        .with_state(broker)
}

/// Refuses a request without the password, when one is set; and a
/// change (POST) sent by a page of another origin — a web page the
/// operator has open must not purge queues through their browser.
async fn guard(State(b): State<Arc<Broker>>, req: Request, next: Next) -> Response {
    let host = request_host(&req);
    if let Some(host) = &host
        && !known_host(host, &b.config.http_hosts)
    {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this port answers only to loopback names, IP addresses and --http-host names, not Host {host:?}\n"
            ),
        )
            .into_response();
    }
    let refused = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Basic realm="ferry""#)],
            "NOAUTH the password is required (HTTP Basic, or Bearer)\n",
        )
            .into_response()
    };
    match (b.acl.get(), &b.config.requirepass) {
        // Under an ACL file, operators only: admin on every queue.
        (Some(acl), _) => {
            let Some((user, pass)) = credentials(req.headers()) else {
                return refused();
            };
            let user = user.unwrap_or_else(|| b"default".to_vec());
            // Checked off the runtime's workers (argon2 is slow by design).
            if !b.check_password(&user, &pass).await {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many password checks are waiting; try again\n",
                )
                    .into_response();
            }
            let Some(user) = acl.authenticate(&user, &pass) else {
                return refused();
            };
            if !user.operator() {
                return (
                    StatusCode::FORBIDDEN,
                    format!(
                        "NOPERM user '{}' is not an operator: the HTTP port needs admin = [\"*\"]\n",
                        user.name
                    ),
                )
                    .into_response();
            }
        }
        (None, Some(pw)) => {
            if !credentials(req.headers())
                .is_some_and(|(_, pass)| crate::acl::constant_time_eq(&pass, pw.as_bytes()))
            {
                return refused();
            }
        }
        (None, None) => {}
    }
    let tls = b.config.tls_cert.is_some();
    if req.method() != axum::http::Method::GET && !same_origin(req.headers(), host.as_deref(), tls)
    {
        return (
            StatusCode::FORBIDDEN,
            "NOPERM a change must come from this server's own pages or a client that sends no Origin\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// Is `host` (a Host header: name or address, maybe a port) one this
/// port answers to? Loopback names, IP addresses (a page cannot rebind
/// those: DNS rebinding needs a name) and the names given with
/// `--http-host`.
fn known_host(host: &str, extra: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || extra
            .iter()
            .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

/// No Origin (not a browser), or the Host's own, in the port's scheme
/// (https under TLS).
fn same_origin(headers: &HeaderMap, host: Option<&str>, tls: bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let scheme = if tls { "https://" } else { "http://" };
    let origin = origin.to_str().ok();
    matches!((origin, host), (Some(o), Some(h)) if o.strip_prefix(scheme) == Some(h))
}

/// The host the request was sent to: its Host header, or (HTTP/2) the
/// authority of its URI. A Host that is not text reads as "" (refused).
fn request_host(req: &Request) -> Option<String> {
    match req.headers().get(header::HOST) {
        Some(h) => Some(h.to_str().unwrap_or("").to_string()),
        None => req.uri().authority().map(|a| a.as_str().to_string()),
    }
}

/// The request's credentials: HTTP Basic's user (none if empty) and
/// password, or a Bearer token as the default user's password.
fn credentials(headers: &HeaderMap) -> Option<(Option<Vec<u8>>, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some((None, token.as_bytes().to_vec()));
    }
    let pair = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Basic ")?.trim())
        .ok()?;
    let at = pair.iter().position(|&c| c == b':')?;
    let user = Some(pair[..at].to_vec()).filter(|u| !u.is_empty());
    Some((user, pair[at + 1..].to_vec()))
}

async fn server(State(b): State<Arc<Broker>>) -> Json<ServerView> {
    Json(b.view())
}

async fn clients(State(b): State<Arc<Broker>>) -> Json<Vec<ClientView>> {
    Json(b.client_views())
}

async fn queues(State(b): State<Arc<Broker>>) -> Json<Vec<QueueView>> {
    Json(b.queue_views())
}

#[derive(Deserialize)]
struct PeekQuery {
    peek: Option<usize>,
}

/// A message as `/api/queues/{name}` shows it.
#[derive(Serialize)]
struct MessageView {
    id: u64,
    attempts: u32,
    bytes: usize,
    /// The payload as text (bytes that are not UTF-8 shown as U+FFFD),
    /// at most 256 bytes of it.
    preview: String,
}

#[derive(Serialize)]
struct QueueDetail {
    #[serde(flatten)]
    queue: QueueView,
    next: Vec<MessageView>,
}

fn no_queue(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("NOQUEUE no such queue {name:?}"),
    )
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn queue(
    State(b): State<Arc<Broker>>,
    Path(name): Path<String>,
    Query(q): Query<PeekQuery>,
) -> Response {
    let Some(cell) = b.queue(name.as_bytes()) else {
        return no_queue(&name);
    };
    let count = q.peek.unwrap_or(10).min(1000);
    let next = cell.with(&b, |st, _| {
        st.q.peek(count)
            .into_iter()
            .map(|m| MessageView {
                id: m.id,
                attempts: m.attempts,
                bytes: m.item.data.len(),
                preview: String::from_utf8_lossy(&m.item.data[..m.item.data.len().min(256)])
                    .into_owned(),
            })
            .collect()
    });
    Json(QueueDetail {
        queue: cell.view(&b),
        next,
    })
    .into_response()
}

async fn purge(State(b): State<Arc<Broker>>, Path(name): Path<String>) -> Response {
    let Some(cell) = b.queue(name.as_bytes()) else {
        return no_queue(&name);
    };
    let purged = cell.with(&b, |st, now| st.q.purge(now));
    Json(serde_json::json!({ "purged": purged })).into_response()
}

async fn pause(State(b): State<Arc<Broker>>, Path(name): Path<String>) -> Response {
    set_paused(&b, &name, true)
}

async fn resume(State(b): State<Arc<Broker>>, Path(name): Path<String>) -> Response {
    set_paused(&b, &name, false)
}

/// Pauses or resumes a queue's deliveries, as `QCONFIG q PAUSED yes|no`
/// (logged: it lasts across a restart).
fn set_paused(b: &Arc<Broker>, name: &str, paused: bool) -> Response {
    let Some(cell) = b.queue(name.as_bytes()) else {
        return no_queue(name);
    };
    cell.with(b, |st, _| {
        st.q.set_paused(paused);
        b.log_settings(&cell, st);
    });
    Json(serde_json::json!({ "paused": paused })).into_response()
}

#[derive(Deserialize)]
struct RedriveQuery {
    to: Option<String>,
    count: Option<usize>,
}

/// Moves a dead-letter queue's ready messages back to `to` — by default
/// the one queue whose dead letters go to it.
async fn redrive(
    State(b): State<Arc<Broker>>,
    Path(name): Path<String>,
    Query(q): Query<RedriveQuery>,
) -> Response {
    let Some(from) = b.queue(name.as_bytes()) else {
        return no_queue(&name);
    };
    let to = match q.to {
        Some(to) => to,
        None => {
            let sources: Vec<String> = b
                .queue_views()
                .into_iter()
                .filter(|v| v.dead_letter.as_deref() == Some(name.as_str()))
                .map(|v| String::from_utf8_lossy(&v.name).into_owned())
                .collect();
            match <[String; 1]>::try_from(sources) {
                Ok([only]) => only,
                Err(sources) => {
                    let msg = format!(
                        "ERR {} queues send their dead letters to {name:?}{}: name one with ?to=",
                        sources.len(),
                        if sources.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", sources.join(", "))
                        }
                    );
                    return error(StatusCode::CONFLICT, msg);
                }
            }
        }
    };
    if to == name {
        return error(
            StatusCode::BAD_REQUEST,
            "ERR a queue cannot be redriven into itself".into(),
        );
    }
    let Some(target) = b.queue(to.as_bytes()) else {
        return no_queue(&to);
    };
    let moved = b.redrive(&from, &target, q.count.unwrap_or(usize::MAX));
    Json(serde_json::json!({ "redriven": moved, "to": to })).into_response()
}

/// The dashboard: one page, its script inside it.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

#[derive(Serialize)]
struct LockView {
    name: String,
    /// The holder's fencing token; none while only waited for.
    token: Option<u64>,
    waiters: usize,
}

async fn locks(State(b): State<Arc<Broker>>) -> Json<Vec<LockView>> {
    Json(
        b.locks
            .list()
            .into_iter()
            .map(|v| LockView {
                name: String::from_utf8_lossy(&v.name).into_owned(),
                token: v.holders.first().copied(),
                waiters: v.waiters,
            })
            .collect(),
    )
}

#[derive(Serialize)]
struct SemaphoreView {
    name: String,
    /// The permits it was made with.
    value: u64,
    free: u64,
    /// The holders' fencing tokens, oldest first.
    holders: Vec<u64>,
    waiters: usize,
}

/// Every lock, semaphore, event, condition and barrier in use: SYNCLIST's
/// rows, for the dashboard.
async fn sync(State(b): State<Arc<Broker>>) -> Json<Vec<SyncView>> {
    Json(b.sync_views())
}

async fn semaphores(State(b): State<Arc<Broker>>) -> Json<Vec<SemaphoreView>> {
    Json(
        b.semaphores
            .list()
            .into_iter()
            .map(|v| SemaphoreView {
                name: String::from_utf8_lossy(&v.name).into_owned(),
                value: v.value,
                free: v.free,
                holders: v.holders,
                waiters: v.waiters,
            })
            .collect(),
    )
}

async fn metrics(State(b): State<Arc<Broker>>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        server: b.view(),
        queues: b.queue_views(),
    }));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// One scrape's values, read before encoding.
#[derive(Debug)]
struct Scrape {
    server: ServerView,
    queues: Vec<QueueView>,
}

type QueueValue = fn(&QueueView) -> u64;

/// Per-queue gauges: name, help, value.
const QUEUE_GAUGES: [(&str, &str, QueueValue); 11] = [
    (
        "ferry_queue_ready_messages",
        "Messages ready to be got.",
        |q| q.qsize,
    ),
    (
        "ferry_queue_leased_messages",
        "Messages leased and not yet done.",
        |q| q.leased,
    ),
    (
        "ferry_queue_taken_messages",
        "Messages got with TAKE and not yet done.",
        |q| q.taken,
    ),
    (
        "ferry_queue_delayed_messages",
        "Messages waiting for their delay to run out.",
        |q| q.delayed,
    ),
    (
        "ferry_queue_unfinished_messages",
        "Messages put and not yet done (what join waits for).",
        |q| q.unfinished,
    ),
    (
        "ferry_queue_holders",
        "Connections (or holder groups) with leased or taken messages in hand.",
        |q| q.holders,
    ),
    (
        "ferry_queue_waiting_getters",
        "Clients blocked in a get.",
        |q| q.waiting_getters,
    ),
    (
        "ferry_queue_waiting_putters",
        "Clients blocked in a put (the queue is full).",
        |q| q.waiting_putters,
    ),
    (
        "ferry_queue_waiting_joiners",
        "Clients blocked in a join.",
        |q| q.waiting_joiners,
    ),
    (
        "ferry_queue_oldest_message_age_seconds",
        "How long ago the oldest message held (ready, delayed or leased) was put, to the second; 0 when none.",
        |q| q.oldest_age_seconds.unwrap_or(0),
    ),
    (
        "ferry_queue_maxsize_messages",
        "The queue's bound (0: none).",
        |q| q.maxsize,
    ),
];

/// Per-queue counters (OpenMetrics adds `_total`).
const QUEUE_COUNTERS: [(&str, &str, QueueValue); 10] = [
    ("ferry_queue_puts", "Messages put.", |q| q.stats.put),
    (
        "ferry_queue_deliveries",
        "Deliveries, redeliveries included.",
        |q| q.stats.delivered,
    ),
    (
        "ferry_queue_redeliveries",
        "Deliveries of a message delivered before (nacked, expired or released).",
        |q| q.stats.redelivered,
    ),
    (
        "ferry_queue_dones",
        "Messages finished (done, or a NOACK delivery).",
        |q| q.stats.done,
    ),
    (
        "ferry_queue_nacks",
        "Leased messages given back by nack.",
        |q| q.stats.nacked,
    ),
    (
        "ferry_queue_expired_leases",
        "Leases that ran out (the message comes back).",
        |q| q.stats.expired,
    ),
    (
        "ferry_queue_released_leases",
        "Leases given back because their holder went away.",
        |q| q.stats.released,
    ),
    (
        "ferry_queue_dead_letters",
        "Messages moved out after max_attempts.",
        |q| q.stats.dead_lettered,
    ),
    (
        "ferry_queue_lost_messages",
        "Taken messages whose holder went away before done.",
        |q| q.stats.lost,
    ),
    (
        "ferry_queue_dropped_messages",
        "Messages dropped by a purge or an immediate shutdown.",
        |q| q.stats.dropped,
    ),
];

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in QUEUE_GAUGES {
            let mut family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for q in &self.queues {
                let labels = [("queue", String::from_utf8_lossy(&q.name).into_owned())];
                let v = i64::try_from(value(q)).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in QUEUE_COUNTERS {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for q in &self.queues {
                let labels = [("queue", String::from_utf8_lossy(&q.name).into_owned())];
                ConstCounter::new(value(q)).encode(family.encode_family(&labels)?)?;
            }
        }
        let s = &self.server;
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let gauges: [(&str, &str, i64); 12] = [
            (
                "ferry_connected_clients",
                "Client connections open.",
                s.connected_clients as i64,
            ),
            (
                "ferry_max_clients",
                "The most client connections served at once.",
                s.max_clients as i64,
            ),
            (
                "ferry_queued_memory_bytes",
                "Bytes held by queued messages (payloads and overhead).",
                as_i64(s.queued_memory),
            ),
            (
                "ferry_max_memory_bytes",
                "Puts are refused over this (0: no limit).",
                as_i64(s.max_memory),
            ),
            (
                "ferry_log_bytes",
                "Bytes in the log's segments.",
                as_i64(s.log_bytes),
            ),
            (
                "ferry_log_segments",
                "Segment files of the log.",
                s.log_segments as i64,
            ),
            ("ferry_queues", "Queues.", s.queues as i64),
            ("ferry_locks", "Locks held or waited for.", s.locks as i64),
            (
                "ferry_lock_waiters",
                "Clients waiting for a lock.",
                s.lock_waiters as i64,
            ),
            (
                "ferry_semaphores",
                "Semaphores held, waited for, or released above their value.",
                s.semaphores as i64,
            ),
            (
                "ferry_semaphore_waiters",
                "Clients waiting for a semaphore's permit.",
                s.semaphore_waiters as i64,
            ),
            (
                "ferry_uptime_seconds",
                "Seconds since the broker started.",
                as_i64(s.uptime_seconds),
            ),
        ];
        for (name, help, v) in gauges {
            let family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            ConstGauge::new(v).encode(family)?;
        }
        let counters: [(&str, &str, u64); 8] = [
            (
                "ferry_commands",
                "Commands processed.",
                s.commands_processed,
            ),
            (
                "ferry_log_records",
                "Records appended to the log.",
                s.log_records,
            ),
            ("ferry_log_fsyncs", "fsyncs of the log.", s.log_syncs),
            (
                "ferry_refused_requests",
                "Connections closed for a request over the limits.",
                s.refused_requests,
            ),
            (
                "ferry_idle_closed",
                "Connections closed idle past --idle-timeout.",
                s.idle_closed,
            ),
            (
                "ferry_slow_closed",
                "Connections closed for not reading their replies within --write-timeout.",
                s.slow_closed,
            ),
            (
                "ferry_unauthenticated_closed",
                "Connections closed before they authenticated: past --auth-timeout, or to make room in a full broker.",
                s.unauthenticated_closed,
            ),
            (
                "ferry_log_compactions",
                "Compactions (checkpoints) of the log.",
                s.log_compactions,
            ),
        ];
        for (name, help, v) in counters {
            let family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            ConstCounter::new(v).encode(family)?;
        }
        if let Some((fsync, batches)) = &s.log_histograms {
            histogram(
                &mut encoder,
                "ferry_log_fsync_seconds",
                "How long each fsync of the log took.",
                fsync,
                1e6,
            )?;
            histogram(
                &mut encoder,
                "ferry_log_write_batch_records",
                "Records per write of the log (in sync mode, per fsync: the group commit).",
                batches,
                1.0,
            )?;
        }
        Ok(())
    }
}

/// A histogram of the log's, its values and bounds divided by `unit`
/// (1e6: microseconds to seconds).
fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &Snapshot,
    unit: f64,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|&(bound, n)| {
            let bound = if bound == u64::MAX {
                f64::MAX
            } else {
                bound as f64 / unit
            };
            (bound, n)
        })
        .collect();
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum as f64 / unit, h.count, &buckets, None)
}
