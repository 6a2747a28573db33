//! A counter in a file, updated by 4 processes under a ferry lock —
//! `multiprocessing.Lock` around shared state — with no lost update.
//!
//!     FERRY_URL=ferry://127.0.0.1:7878 cargo run -p ferry-examples --bin lock_counter

use std::fs;

use ferry_client::Client;
use ferry_examples::{Result, private, spawn, wait_ok};

const PROCESSES: u64 = 4;
const INCREMENTS: u64 = 50;

fn read(path: &str) -> Result<u64> {
    Ok(fs::read_to_string(path)?.trim().parse()?)
}

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Client::from_env()?;
    match args.as_slice() {
        ["worker", lock, path] => {
            for _ in 0..INCREMENTS {
                let token = c
                    .lock(lock, None, None)?
                    .ok_or("a lock without a timeout was not granted")?;
                // Read, then write: without the lock two processes would
                // read the same value and one update would be lost.
                let n = read(path)?;
                std::thread::yield_now();
                fs::write(path, (n + 1).to_string())?;
                c.unlock(lock, token)?;
            }
            Ok(())
        }
        [] => {
            let path = std::env::temp_dir().join(private("ferry-counter"));
            let path = path.to_str().ok_or("temp dir is not UTF-8")?.to_string();
            fs::write(&path, "0")?;
            let lock = private("counter-lock");
            let workers: Vec<_> = (0..PROCESSES)
                .map(|_| spawn(&["worker", &lock, &path]))
                .collect::<Result<_>>()?;
            for w in workers {
                wait_ok(w)?;
            }
            let n = read(&path)?;
            fs::remove_file(&path)?;
            println!("{PROCESSES} processes × {INCREMENTS} increments: counter = {n}");
            if n != PROCESSES * INCREMENTS {
                return Err(format!("lost updates: {n}").into());
            }
            Ok(())
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}
