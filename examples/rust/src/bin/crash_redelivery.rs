//! A consumer killed with SIGKILL in the middle of its task: the broker
//! delivers the task again, so `join` returns instead of hanging forever
//! as it would with `multiprocessing.JoinableQueue`.
//!
//!     FERRY_URL=ferry://127.0.0.1:7878 cargo run -p ferry-examples --bin crash_redelivery

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_client::Client;
use ferry_examples::{Result, private, spawn, wait_ok};

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Client::from_env()?;
    match args.as_slice() {
        ["doomed", q] => {
            let m = c.get(q)?;
            println!("started {}", String::from_utf8_lossy(&m.payload));
            std::thread::sleep(Duration::from_secs(60)); // killed before task_done
            Ok(())
        }
        ["survivor", q] => {
            let m = c.get(q)?;
            println!(
                "survivor got {:?}, delivered {} time(s) before",
                String::from_utf8_lossy(&m.payload),
                m.attempts
            );
            c.task_done(q, m.id)?;
            if m.attempts < 1 {
                return Err("the task was not counted as redelivered".into());
            }
            Ok(())
        }
        [] => {
            let q = private("crash");
            c.put(&q, b"resize photo 17")?;
            let mut doomed = Command::new(std::env::current_exe()?)
                .args(["doomed", &q])
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            if let Some(out) = doomed.stdout.take() {
                BufReader::new(out).read_line(&mut line)?;
            }
            print!("doomed consumer: {line}");
            doomed.kill()?; // SIGKILL, mid-task
            doomed.wait()?;
            let survivor = spawn(&["survivor", &q])?;
            if !c.join_timeout(&q, Duration::from_secs(30))? {
                return Err("join did not return".into());
            }
            wait_ok(survivor)?;
            println!("join returned after the consumer was killed");
            Ok(())
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}
