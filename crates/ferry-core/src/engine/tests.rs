//! Unit tests of the engine's rules, one rule a test.

use super::*;

#[derive(Clone, Debug, PartialEq, Eq)]
struct P(u8);

impl Item for P {
    fn priority_cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

fn q(kind: Kind, maxsize: u64) -> Queue<P> {
    Queue::new(Config {
        kind,
        maxsize,
        ..Config::default()
    })
}

fn take() -> GetSpec<P> {
    GetSpec::Take { holder: Some(1) }
}

fn drain(q: &mut Queue<P>) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = q.get(GetSpec::NoAck, 0) {
        out.push(m.item.0);
    }
    out
}

#[test]
fn kinds_serve_in_their_order() {
    for (kind, want) in [
        (Kind::Fifo, vec![3, 1, 2, 1]),
        (Kind::Lifo, vec![1, 2, 1, 3]),
        (Kind::Priority, vec![1, 1, 2, 3]),
    ] {
        let mut q = q(kind, 0);
        for p in [3, 1, 2, 1] {
            q.put(P(p), None, 0).unwrap();
        }
        assert_eq!(drain(&mut q), want, "{kind:?}");
    }
}

#[test]
fn priority_is_fifo_among_equals() {
    let mut q = q(Kind::Priority, 0);
    let a = q.put(P(5), None, 0).unwrap();
    let b = q.put(P(5), None, 0).unwrap();
    assert_eq!(q.get(GetSpec::NoAck, 0).unwrap().unwrap().id, a);
    assert_eq!(q.get(GetSpec::NoAck, 0).unwrap().unwrap().id, b);
}

#[test]
fn counters_follow_python() {
    let mut q = q(Kind::Fifo, 2);
    assert!(q.empty() && !q.full());
    q.put(P(0), None, 0).unwrap();
    q.put(P(0), None, 0).unwrap();
    assert!(q.full());
    assert!(matches!(q.put(P(9), None, 0), Err(PutError::Full(P(9)))));
    let m = q.get(take(), 0).unwrap().unwrap();
    assert_eq!((q.qsize(), q.unfinished()), (1, 2));
    assert_eq!(q.done(&[m.id], Some(1)), 1);
    assert_eq!(
        q.done(&[m.id], Some(1)),
        0,
        "a second done finishes nothing"
    );
    assert_eq!(q.unfinished(), 1);
}

#[test]
fn delayed_messages_wait_and_do_not_count_in_qsize() {
    let mut q = q(Kind::Fifo, 1);
    q.put(P(1), Some(100), 0).unwrap();
    assert_eq!((q.qsize(), q.delayed(), q.unfinished()), (0, 1, 1));
    assert_eq!(q.next_deadline(), Some(100));
    assert_eq!(q.get(take(), 99).unwrap(), None);
    assert_eq!(q.get(take(), 100).unwrap().unwrap().item, P(1));
}

#[test]
fn bound_lease_returns_when_holder_goes_and_only_holder_may_act() {
    let mut q = q(Kind::Fifo, 0);
    let id = q.put(P(1), None, 0).unwrap();
    let m = q.get(GetSpec::lease(Lease::Bound(7)), 0).unwrap().unwrap();
    assert_eq!((m.id, m.attempts), (id, 0));
    assert_eq!(q.done(&[id], Some(8)), 0, "another holder cannot finish it");
    assert!(!q.nack(id, Some(8), None, 0));
    assert_eq!(q.touch(id, Some(8), Some(5), 0), None);
    q.release_holder(7, 0);
    assert_eq!((q.qsize(), q.leased(), q.unfinished()), (1, 0, 1));
    let m = q.get(GetSpec::lease(Lease::Bound(8)), 0).unwrap().unwrap();
    assert_eq!((m.id, m.attempts), (id, 1));
    assert_eq!(q.done(&[id], Some(8)), 1);
    assert_eq!(q.unfinished(), 0);
}

#[test]
fn timed_lease_expires_and_anyone_may_finish_it() {
    let mut q = q(Kind::Fifo, 0);
    let id = q.put(P(1), None, 0).unwrap();
    q.get(GetSpec::lease(Lease::Timed(50)), 0).unwrap().unwrap();
    q.release_holder(1, 10); // no holder: nothing happens
    assert_eq!(q.leased(), 1);
    assert_eq!(q.touch(id, None, None, 40), Some(Some(90)));
    q.tick(89);
    assert_eq!(q.leased(), 1);
    q.tick(90);
    assert_eq!((q.leased(), q.qsize()), (0, 1));
    q.get(GetSpec::lease(Lease::Timed(50)), 90)
        .unwrap()
        .unwrap();
    assert_eq!(q.done(&[id], Some(42)), 1);
    assert_eq!(q.stats().expired, 1);
}

#[test]
fn bound_lease_expires_after_the_queues_lease_timeout() {
    let mut q: Queue<P> = Queue::new(Config {
        lease_timeout: Some(10),
        ..Config::default()
    });
    q.put(P(1), None, 0).unwrap();
    q.get(GetSpec::lease(Lease::Bound(1)), 0).unwrap().unwrap();
    q.tick(10);
    assert_eq!(q.qsize(), 1);
}

#[test]
fn max_attempts_dead_letters_and_counts_finished() {
    let mut q: Queue<P> = Queue::new(Config {
        max_attempts: Some(2),
        dead_letter: Some("dlq".into()),
        ..Config::default()
    });
    let id = q.put(P(1), None, 0).unwrap();
    for _ in 0..2 {
        q.get(GetSpec::lease(Lease::Bound(1)), 0).unwrap().unwrap();
        assert!(q.nack(id, Some(1), None, 0));
    }
    assert_eq!((q.qsize(), q.unfinished()), (0, 0));
    let dead: Vec<_> = q.drain_dead_letters().collect();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].attempts), (id, 2));
    let mut dlq = q2();
    let new_id = dlq.put_moved(dead[0].item.clone(), dead[0].attempts, 0);
    assert_eq!(dlq.get(take(), 0).unwrap().unwrap().attempts, 2);
    assert_eq!(new_id, 1);
}

#[test]
fn an_unstarted_return_counts_no_attempt_and_is_served_next() {
    let mut q: Queue<P> = Queue::new(Config {
        max_attempts: Some(1),
        dead_letter: Some("dlq".into()),
        ..Config::default()
    });
    let a = q.put(P(1), None, 0).unwrap();
    q.put(P(2), None, 0).unwrap();
    for _ in 0..3 {
        let m = q.get(GetSpec::lease(Lease::Bound(1)), 0).unwrap().unwrap();
        assert_eq!((m.id, m.attempts), (a, 0));
        assert!(
            !q.return_unstarted(a, Some(2), 0),
            "only its holder returns it"
        );
        assert!(q.return_unstarted(a, Some(1), 0));
    }
    assert_eq!(q.drain_dead_letters().count(), 0);
    assert_eq!((q.qsize(), q.unfinished()), (2, 2));
    assert_eq!(drain(&mut q), vec![1, 2]);
}

fn q2() -> Queue<P> {
    q(Kind::Fifo, 1)
}

#[test]
fn nack_with_delay_waits_then_serves_at_the_back() {
    let mut q = q(Kind::Fifo, 0);
    let a = q.put(P(1), None, 0).unwrap();
    q.put(P(2), None, 0).unwrap();
    q.get(GetSpec::lease(Lease::Bound(1)), 0).unwrap().unwrap();
    assert!(q.nack(a, Some(1), Some(10), 0));
    assert_eq!(q.delayed(), 1);
    q.tick(10);
    assert_eq!(drain(&mut q), vec![2, 1]);
}

#[test]
fn nack_without_delay_serves_next() {
    let mut q = q(Kind::Fifo, 0);
    let a = q.put(P(1), None, 0).unwrap();
    q.put(P(2), None, 0).unwrap();
    q.get(GetSpec::lease(Lease::Bound(1)), 0).unwrap().unwrap();
    assert!(q.nack(a, Some(1), None, 0));
    assert_eq!(drain(&mut q), vec![1, 2]);
}

#[test]
fn taken_message_of_a_vanished_holder_counts_as_lost_and_finished() {
    let mut q = q(Kind::Fifo, 0);
    q.put(P(1), None, 0).unwrap();
    q.get(take(), 0).unwrap().unwrap();
    let j = q.wait_join().unwrap();
    q.release_holder(1, 0);
    assert_eq!((q.unfinished(), q.stats().lost, q.qsize()), (0, 1, 0));
    assert_eq!(q.drain_woken().collect::<Vec<_>>(), vec![j]);
    assert!(q.poll_join(j));
}

#[test]
fn getters_are_served_first_come_first_served() {
    let mut q = q(Kind::Fifo, 0);
    let g1 = q.wait_get(take(), 1, 0);
    let g2 = q.wait_get(take(), 1, 0);
    assert_eq!(q.poll_get(g1, 0), None);
    q.put(P(1), None, 0).unwrap();
    q.put(P(2), None, 0).unwrap();
    assert_eq!(q.drain_woken().collect::<Vec<_>>(), vec![g1, g2]);
    assert_eq!(q.poll_get(g2, 0).unwrap().unwrap()[0].item, P(2));
    assert_eq!(q.poll_get(g1, 0).unwrap().unwrap()[0].item, P(1));
}

#[test]
fn a_getter_that_leaves_gives_back_what_it_was_handed() {
    let mut q = q(Kind::Fifo, 0);
    let g = q.wait_get(GetSpec::lease(Lease::Bound(1)), 2, 0);
    q.put(P(1), None, 0).unwrap();
    q.put(P(2), None, 0).unwrap();
    q.cancel_get(g);
    assert_eq!((q.qsize(), q.leased(), q.stats().delivered), (2, 0, 0));
    let m = q.get(take(), 0).unwrap().unwrap();
    assert_eq!((m.item, m.attempts), (P(1), 0));
}

#[test]
fn a_waiting_getter_takes_up_to_its_count() {
    let mut q = q(Kind::Fifo, 0);
    let g = q.wait_get(take(), 3, 0);
    q.put_many(vec![P(1), P(2), P(3), P(4)], None, 0).unwrap();
    // The first put hands one message over at once; the batch arrives whole.
    let got = q.poll_get(g, 0).unwrap().unwrap();
    assert_eq!(
        got.iter().map(|m| m.item.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(q.qsize(), 1);
}

#[test]
fn putters_are_admitted_in_order_when_room_frees() {
    let mut q = q(Kind::Fifo, 1);
    q.put(P(0), None, 0).unwrap();
    let p1 = q.wait_put(Batch::One(P(1)), None, 0);
    let p2 = q.wait_put(Batch::One(P(2)), None, 0);
    assert_eq!(q.poll_put(p1), None);
    q.get(take(), 0).unwrap().unwrap();
    assert_eq!(q.drain_woken().collect::<Vec<_>>(), vec![p1]);
    assert_eq!(q.poll_put(p1), Some(Ok(2..3)));
    assert_eq!(q.cancel_put(p2), Some(Batch::One(P(2))));
    assert_eq!(drain(&mut q), vec![1]);
}

#[test]
fn a_big_batch_waits_until_it_fits_whole() {
    let mut q = q(Kind::Fifo, 3);
    q.put_many(vec![P(1), P(2)], None, 0).unwrap();
    assert!(matches!(
        q.put_many(vec![P(0); 4], None, 0),
        Err(PutError::TooMany(_))
    ));
    let p = q.wait_put(Batch::Many(vec![P(3), P(4)]), None, 0);
    q.get(take(), 0).unwrap().unwrap();
    assert_eq!(q.poll_put(p), Some(Ok(3..5)));
    assert_eq!(q.qsize(), 3);
}

#[test]
fn graceful_shutdown_drains_then_fails() {
    let mut q = q(Kind::Fifo, 1);
    q.put(P(2), Some(100), 0).unwrap();
    q.put(P(1), None, 0).unwrap();
    let p = q.wait_put(Batch::One(P(3)), None, 0);
    q.shutdown(false, 0);
    assert!(matches!(
        q.poll_put(p),
        Some(Err(PutError::ShutDown(Batch::One(P(3)))))
    ));
    assert!(matches!(
        q.put(P(4), None, 0),
        Err(PutError::ShutDown(P(4)))
    ));
    assert_eq!(drain(&mut q), vec![1, 2], "delayed messages became ready");
    assert_eq!(q.get(take(), 0), Err(ShutDown));
    let g = q.wait_get(take(), 1, 0);
    assert_eq!(q.poll_get(g, 0), Some(Err(ShutDown)));
}

#[test]
fn immediate_shutdown_drops_ready_and_join_waits_for_leased() {
    let mut q = q(Kind::Fifo, 0);
    let a = q.put(P(1), None, 0).unwrap();
    q.put(P(2), None, 0).unwrap();
    q.put(P(3), None, 0).unwrap();
    q.get(GetSpec::lease(Lease::Bound(1)), 0).unwrap().unwrap();
    let g = q.wait_get(take(), 1, 0);
    q.cancel_get(g);
    let j = q.wait_join().unwrap();
    q.shutdown(true, 0);
    assert_eq!((q.qsize(), q.unfinished(), q.stats().dropped), (0, 1, 2));
    assert!(!q.poll_join(j));
    // A leased message given back after an immediate shutdown is dropped.
    assert!(q.nack(a, Some(1), None, 0));
    assert_eq!(q.unfinished(), 0);
    assert!(q.poll_join(j));
}

#[test]
fn python_counting_with_untracked_takes() {
    let mut q = q(Kind::Fifo, 0);
    assert_eq!(q.task_done_counted(), Err(TooManyTaskDone));
    q.put(P(1), None, 0).unwrap();
    // Python lets task_done run ahead of get.
    q.task_done_counted().unwrap();
    assert_eq!(q.wait_join(), None);
    assert_eq!(
        q.get(GetSpec::Take { holder: None }, 0)
            .unwrap()
            .unwrap()
            .item,
        P(1)
    );
    assert_eq!(q.task_done_counted(), Err(TooManyTaskDone));
}

#[test]
fn noack_finishes_on_delivery() {
    let mut q = q(Kind::Fifo, 0);
    q.put(P(1), None, 0).unwrap();
    let j = q.wait_join().unwrap();
    q.get(GetSpec::NoAck, 0).unwrap().unwrap();
    assert_eq!(q.unfinished(), 0);
    assert!(q.poll_join(j));
}

#[test]
fn purge_drops_ready_and_delayed_and_admits_putters() {
    let mut q = q(Kind::Fifo, 1);
    q.put(P(2), Some(5), 0).unwrap();
    q.put(P(1), None, 0).unwrap();
    let p = q.wait_put(Batch::One(P(3)), None, 0);
    assert_eq!(q.purge(0), 2);
    assert_eq!(q.poll_put(p), Some(Ok(3..4)));
    assert_eq!((q.qsize(), q.unfinished()), (1, 1));
}

#[test]
fn smaller_maxsize_holds_puts_until_drained_below_it() {
    let mut q = q(Kind::Fifo, 0);
    for i in 0..3 {
        q.put(P(i), None, 0).unwrap();
    }
    q.set_maxsize(2);
    assert!(q.full());
    let p = q.wait_put(Batch::One(P(9)), None, 0);
    q.get(take(), 0).unwrap().unwrap();
    assert_eq!(q.poll_put(p), None);
    q.get(take(), 0).unwrap().unwrap();
    assert!(q.poll_put(p).is_some());
}

#[test]
fn peek_shows_delivery_order() {
    for (kind, want) in [
        (Kind::Fifo, vec![3, 1]),
        (Kind::Lifo, vec![2, 1]),
        (Kind::Priority, vec![1, 2]),
    ] {
        let mut q = q(kind, 0);
        for p in [3, 1, 2] {
            q.put(P(p), None, 0).unwrap();
        }
        let got: Vec<u8> = q.peek(2).iter().map(|m| m.item.0).collect();
        assert_eq!(got, want, "{kind:?}");
    }
}

impl Pack for P {
    fn packed_len(&self) -> usize {
        1
    }
    fn pack(&self, out: &mut Vec<u8>) {
        out.push(self.0);
    }
    fn unpack(bytes: &[u8]) -> Self {
        P(bytes.first().copied().unwrap_or(0))
    }
    fn packed_weight(_: &[u8]) -> u64 {
        0
    }
}

#[test]
fn for_each_stored_visits_every_stored_message() {
    let mut q: Queue<P, PackedFifo<P>> = Queue::new(Config::default());
    for id in 1..=2000u64 {
        q.restore(id, 0, P(1), None);
    }
    q.put(P(2), Some(50), 0).unwrap();
    let leased = q.get(GetSpec::lease(Lease::Bound(1)), 0).unwrap().unwrap();
    let g = q.wait_get(take(), 1, 0);
    let _ = g;
    let mut seen = Vec::new();
    q.for_each_stored(|m, due, out| seen.push((m.id, due.is_some(), out)));
    seen.sort_unstable();
    assert_eq!(seen.len(), 2001);
    assert_eq!(seen[0], (leased.id, false, true));
    assert!(seen.iter().any(|&(_, delayed, _)| delayed));
}

/// An item that counts how many of its unpacked copies are alive at once.
#[derive(Debug)]
struct Counted;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MOST_LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Item for Counted {
    fn priority_cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}

impl Pack for Counted {
    fn packed_len(&self) -> usize {
        0
    }
    fn pack(&self, _: &mut Vec<u8>) {}
    fn unpack(_: &[u8]) -> Self {
        Counted::new()
    }
    fn packed_weight(_: &[u8]) -> u64 {
        0
    }
}

impl Counted {
    fn new() -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let live = LIVE.fetch_add(1, SeqCst) + 1;
        MOST_LIVE.fetch_max(live, SeqCst);
        Counted
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted::new()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A checkpoint visits a packed backlog one message at a time: it once
/// unpacked the whole backlog under the queue's lock (5–7× its memory).
#[test]
fn a_snapshot_visit_unpacks_one_message_at_a_time() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut q: Queue<Counted, PackedFifo<Counted>> = Queue::new(Config::default());
    for _ in 0..10_000 {
        q.put(Counted::new(), None, 0).map_err(|_| ()).unwrap();
    }
    MOST_LIVE.store(0, SeqCst);
    let mut seen = 0;
    q.for_each_stored(|_, _, _| seen += 1);
    assert_eq!(seen, 10_000);
    assert!(
        MOST_LIVE.load(SeqCst) <= 1,
        "{} unpacked at once",
        MOST_LIVE.load(SeqCst)
    );
}

#[test]
fn a_paused_queue_admits_puts_and_delivers_nothing_until_resumed() {
    let mut q = q(Kind::Fifo, 0);
    q.put(P(1), None, 0).unwrap();
    q.set_paused(true);
    q.put(P(2), None, 0).unwrap();
    assert_eq!(q.get(take(), 0), Ok(None));
    let mut out = Vec::new();
    assert_eq!(q.get_many(take(), 5, 0, &mut out), Ok(0));
    let g = q.wait_get(take(), 5, 0);
    assert_eq!(q.poll_get(g, 0), None);
    // A graceful shutdown does not end a wait while messages are held
    // back: they are there, only paused.
    q.shutdown(false, 0);
    assert_eq!(q.poll_get(g, 0), None);
    assert_eq!(q.qsize(), 2);
    q.set_paused(false);
    assert_eq!(q.drain_woken().collect::<Vec<_>>(), vec![g]);
    let got = q.poll_get(g, 0).unwrap().unwrap();
    assert_eq!(got.iter().map(|m| m.item.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(q.get(take(), 0), Err(ShutDown));
}

#[test]
fn taking_out_to_move_finishes_here_whatever_the_pause() {
    let mut q = q(Kind::Fifo, 2);
    q.put(P(1), None, 0).unwrap();
    q.put(P(2), None, 0).unwrap();
    q.set_paused(true);
    let putter = q.wait_put(Batch::One(P(3)), None, 0);
    let moved = q.take_out(1, 0);
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].item, P(1));
    // Room made: the waiting put goes in.
    assert!(matches!(q.poll_put(putter), Some(Ok(_))));
    assert_eq!((q.qsize(), q.unfinished(), q.stats().done), (2, 2, 1));
}

/// An item that weighs its number.
#[derive(Debug, PartialEq, Eq)]
struct W(u64);

impl Item for W {
    fn priority_cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
    fn weight(&self) -> u64 {
        self.0
    }
}

#[test]
fn puts_waiting_for_room_are_weighed_until_they_are_in_or_gone() {
    let mut q: Queue<W> = Queue::new(Config {
        maxsize: 1,
        ..Config::default()
    });
    q.put(W(5), None, 0).unwrap();
    let admitted = q.wait_put(Batch::Many(vec![W(7), W(8)]), None, 0);
    let cancelled = q.wait_put(Batch::One(W(100)), None, 0);
    assert_eq!((q.held_weight(), q.waiting_put_weight()), (5, 115));
    assert_eq!(q.cancel_put(cancelled), Some(Batch::One(W(100))));
    assert_eq!(q.waiting_put_weight(), 15);
    q.set_maxsize(10);
    assert!(matches!(q.poll_put(admitted), Some(Ok(_))));
    assert_eq!((q.held_weight(), q.waiting_put_weight()), (20, 0));
    q.set_maxsize(1);
    let shut = q.wait_put(Batch::One(W(9)), None, 0);
    assert_eq!(q.waiting_put_weight(), 9);
    q.shutdown(false, 0);
    assert_eq!(q.waiting_put_weight(), 0);
    assert!(matches!(q.poll_put(shut), Some(Err(PutError::ShutDown(_)))));
}
