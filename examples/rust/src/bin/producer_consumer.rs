//! The producer–consumer model: 2 producers, 2 consumers that never
//! return (Python's daemon processes), and `join` as the only way to know
//! every task is done — `multiprocessing.JoinableQueue` with `task_done`.
//!
//!     FERRY_URL=ferry://127.0.0.1:7878 cargo run -p ferry-examples --bin producer_consumer

use ferry_client::Client;
use ferry_examples::{Result, number, private, spawn, wait_ok};

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Client::from_env()?;
    match args.as_slice() {
        ["producer", q, start] => {
            let start: i64 = start.parse()?;
            for i in start..start + 50 {
                c.put(q, i.to_string().as_bytes())?;
            }
            Ok(())
        }
        ["consumer", q, out] => loop {
            // Leased: if this process dies before task_done, the task is
            // delivered to the other consumer and join still returns.
            let m = c.get(q)?;
            let x = number(&m.payload)?;
            c.put(out, (x * x).to_string().as_bytes())?;
            c.task_done(q, m.id)?;
        },
        [] => {
            let (jobs, results) = (private("jobs"), private("squares"));
            let mut consumers = Vec::new();
            for _ in 0..2 {
                consumers.push(spawn(&["consumer", &jobs, &results])?);
            }
            let producers = [
                spawn(&["producer", &jobs, "0"])?,
                spawn(&["producer", &jobs, "50"])?,
            ];
            for p in producers {
                wait_ok(p)?;
            }
            c.join(&jobs)?;
            let mut total = 0;
            for _ in 0..100 {
                total += number(&c.get_nowait(&results)?.payload)?;
            }
            println!("join returned; the sum of 100 squares is {total}");
            // The daemons die with the main process.
            for mut consumer in consumers {
                consumer.kill()?;
                consumer.wait()?;
            }
            let want: i64 = (0..100).map(|i: i64| i * i).sum();
            if total != want {
                return Err(format!("expected {want}, got {total}").into());
            }
            Ok(())
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}
