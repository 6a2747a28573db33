//! Shared by the example programs: each program runs its own child
//! processes by starting itself again with a role, as
//! `multiprocessing.Process` does with the spawn start method.

use std::process::{Child, Command, Stdio};

/// What an example replies: its errors are printed by `main`.
pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Starts this program again as a child with `args` (its role first). The
/// child finds the broker the same way, through `FERRY_URL`.
pub fn spawn(args: &[&str]) -> Result<Child> {
    Ok(Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::inherit())
        .spawn()?)
}

/// Waits for a child and fails unless it exited with status 0.
pub fn wait_ok(mut child: Child) -> Result {
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("child {} failed: {status}", child.id()).into());
    }
    Ok(())
}

/// A queue name private to this run (queues are shared by name).
pub fn private(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A payload as a decimal number.
pub fn number(payload: &[u8]) -> Result<i64> {
    Ok(std::str::from_utf8(payload)?.parse()?)
}
