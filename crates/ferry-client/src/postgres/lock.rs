//! Locks and events on PostgreSQL: LOCK, UNLOCK, LOCKED; EVSET, EVCLEAR,
//! EVISSET, EVWAIT (lock.sql), read as the broker reads them. A lock
//! without a TTL lives with its holder (the client's, or its process's:
//! CLIENT HOLDER); a waiting LOCK or EVWAIT listens on the lock's (the
//! event's) channel and tries again.

use ferry_proto::Value;

use super::queue::Want;
use super::{PgLink, db_error};
use crate::Error;
use crate::request::{Args, check_name, is, unknown, wait_option};

impl PgLink {
    /// Answers LOCK, UNLOCK, LOCKED and the events' commands.
    pub(super) async fn lock_command(
        &mut self,
        cmd: &str,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        match cmd {
            "LOCK" => self.lock(a, cancel).await,
            "UNLOCK" | "LOCKED" => self.unlock_or_held(cmd, a).await.map(|v| (v, false)),
            _ => self.event(cmd, a, cancel).await,
        }
    }

    async fn event(
        &mut self,
        cmd: &str,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let name = check_name(a.require("event name")?)?.to_string();
        let mut wait = None;
        while let Some(opt) = a.next() {
            if cmd != "EVWAIT" || !wait_option(opt, a, &mut wait)? {
                return Err(unknown(opt, cmd));
            }
        }
        let sql = match cmd {
            "EVSET" => "SELECT ferry.event_set($1)",
            "EVCLEAR" => "SELECT ferry.event_clear($1)",
            "EVISSET" => {
                let row = self
                    .db
                    .query_one("SELECT is_set FROM ferry.event_state($1, NULL)", &[&name])
                    .await
                    .map_err(db_error)?;
                return Ok((Value::Int(i64::from(row.get::<_, bool>(0))), false));
            }
            _ => {
                let channel = [format!("ev:{name}")];
                let (set, cancelled) = self
                    .wait_for(&channel, wait, cancel, Want::Event(&name, None))
                    .await?;
                return Ok((set.unwrap_or(Value::Int(0)), cancelled));
            }
        };
        self.db.execute(sql, &[&name]).await.map_err(db_error)?;
        Ok((Value::Int(1), false))
    }

    async fn lock(
        &mut self,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let name = check_name(a.require("lock name")?)?.to_string();
        let (mut ttl, mut wait) = (0i64, None);
        while let Some(opt) = a.next() {
            if is(opt, "TTL") {
                ttl = i64::try_from(a.number("TTL")?).unwrap_or(i64::MAX);
            } else if !wait_option(opt, a, &mut wait)? {
                return Err(unknown(opt, "LOCK"));
            }
        }
        let channel = [format!("lock:{name}")];
        let (token, cancelled) = self
            .wait_for(&channel, wait, cancel, Want::Lock(&name, ttl))
            .await?;
        Ok((token.unwrap_or(Value::Nil), cancelled))
    }

    async fn unlock_or_held(&mut self, cmd: &str, a: &mut Args<'_>) -> Result<Value, Error> {
        let name = check_name(a.require("lock name")?)?.to_string();
        let token = i64::try_from(a.number("token")?).unwrap_or(i64::MAX);
        let sql = if cmd == "UNLOCK" {
            "SELECT ferry.unlock($1, $2)"
        } else {
            "SELECT ferry.locked($1, $2)"
        };
        let row = self
            .db
            .query_one(sql, &[&name, &token])
            .await
            .map_err(db_error)?;
        Ok(Value::Int(i64::from(row.get::<_, i32>(0))))
    }
}
