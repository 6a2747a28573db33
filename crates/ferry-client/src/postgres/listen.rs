//! A client's connection for LISTEN: its notifications wake the client's
//! waits. One per client that waits, opened at its first wait.

use std::collections::HashSet;

use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{Target, db_error};
use crate::Error;

pub(super) struct Listener {
    db: tokio_postgres::Client,
    /// The queues' channels it listens on.
    channels: HashSet<String>,
    /// Counts notifications: a waiter that saw one count wakes at the next.
    wake: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    pub(super) async fn open(target: &Target) -> Result<Listener, Error> {
        let (db, mut conn) = target.config()?.connect(NoTls).await.map_err(db_error)?;
        let (tx, wake) = watch::channel(0u64);
        // Polling the connection's messages also drives its queries; the
        // task ends with the connection (and the sender with it, which
        // wakes every waiter to find it gone).
        let task = super::background::handle()?.spawn(async move {
            while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let AsyncMessage::Notification(_) = m {
                    tx.send_modify(|n| *n += 1);
                }
            }
        });
        Ok(Listener {
            db,
            channels: HashSet::new(),
            wake,
            task,
        })
    }

    /// Whether its connection still stands.
    pub(super) fn alive(&self) -> bool {
        !self.task.is_finished() && !self.db.is_closed()
    }

    /// Listens on the queues' channels (those it did not already);
    /// replies a receiver that changes at the next notification on any of
    /// its channels from now on.
    pub(super) async fn listen(
        &mut self,
        queues: &[String],
    ) -> Result<watch::Receiver<u64>, Error> {
        let mut woken = self.wake.clone();
        woken.borrow_and_update();
        for q in queues {
            if self.channels.contains(q) {
                continue;
            }
            let channel: String = self
                .db
                .query_one("SELECT ferry.channel($1)", &[q])
                .await
                .map_err(db_error)?
                .get(0);
            // A channel is an md5 in hex behind a fixed prefix: nothing to
            // quote.
            self.db
                .batch_execute(&format!("LISTEN {channel}"))
                .await
                .map_err(db_error)?;
            self.channels.insert(q.clone());
        }
        Ok(woken)
    }
}
