//! The Redis engine when Redis misbehaves: a primary without replicas
//! under `?wait=N`, waiters that die, holders that stop. Each test starts
//! its own redis-server (or cluster) on loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::RedisServer;
use ferry_client::{Client, Error};

/// `?wait=1` on a server with no replica (a promoted replica whose own
/// replica is gone): puts fail with NOREPLICAS — their loss in a failover
/// is what the caller asked to be told of — but every other command
/// serves, so consumers drain what is already stored.
#[test]
fn with_wait_a_primary_without_replicas_still_serves_gets_and_dones() {
    let r = RedisServer::start();
    let plain = format!("redis://127.0.0.1:{}?lease=5000", r.port);
    let mut p = Client::connect(&plain).unwrap();
    for i in 0..3 {
        p.put("stored", format!("m{i}").as_bytes()).unwrap();
    }
    let mut c = Client::connect(&format!("{plain}&wait=1")).unwrap();
    // Python's Queue() opens with QCREATE.
    c.call(&[b"QCREATE", b"stored"]).unwrap();
    let m = c.get("stored").unwrap();
    assert_eq!(m.payload, b"m0");
    c.task_done("stored", m.id).unwrap();
    let m = c.get("stored").unwrap();
    c.nack("stored", m.id).unwrap();
    let m = c.get("stored").unwrap();
    assert_eq!((m.payload.as_slice(), m.attempts), (&b"m1"[..], 1));
    c.task_done("stored", m.id).unwrap();
    assert_eq!(c.qsize("stored").unwrap(), 1);
    match c.put("stored", b"unconfirmed") {
        Err(Error::Server { code, .. }) => assert_eq!(code, "NOREPLICAS"),
        other => panic!("a put no replica confirmed: {other:?}"),
    }
}
