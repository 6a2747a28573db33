//! IPC through a queue: main → child, then child → child.
//!
//! The classic lesson passes messages to a `multiprocessing.Process`
//! through a `Queue`, and between two children through one they both
//! got from the parent. Here the queue lives in the broker, so the
//! processes could as well be on different machines.
//!
//!     FERRY_URL=ferry://127.0.0.1:7878 cargo run -p ferry-examples --bin ipc

use ferry_client::Client;
use ferry_examples::{Result, number, private, spawn, wait_ok};

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Client::from_env()?;
    match args.as_slice() {
        ["reader", q] => {
            // main → child: print what the parent sent, until the sentinel.
            loop {
                let m = c.get(q)?;
                c.task_done(q, m.id)?;
                if m.payload.is_empty() {
                    return Ok(());
                }
                println!("child got {:?}", String::from_utf8_lossy(&m.payload));
            }
        }
        ["producer", q] => {
            for i in 0..10 {
                c.put(q, i.to_string().as_bytes())?;
            }
            c.put(q, b"")?; // the sentinel
            Ok(())
        }
        ["consumer", q, out] => {
            let mut total = 0;
            loop {
                let m = c.get(q)?;
                c.task_done(q, m.id)?;
                if m.payload.is_empty() {
                    break;
                }
                total += number(&m.payload)?;
            }
            c.put(out, total.to_string().as_bytes())?;
            Ok(())
        }
        [] => {
            let q = private("ipc");
            let reader = spawn(&["reader", &q])?;
            for word in ["hello", "from", "main"] {
                c.put(&q, word.as_bytes())?;
            }
            c.put(&q, b"")?;
            wait_ok(reader)?;

            let (between, out) = (private("between"), private("total"));
            let consumer = spawn(&["consumer", &between, &out])?;
            let producer = spawn(&["producer", &between])?;
            wait_ok(producer)?;
            wait_ok(consumer)?;
            let total = number(&c.get(&out)?.payload)?;
            println!("child → child: the consumer summed {total}");
            if total != 45 {
                return Err(format!("expected 45, got {total}").into());
            }
            Ok(())
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}
