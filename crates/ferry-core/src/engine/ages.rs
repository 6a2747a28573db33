//! When the messages a queue holds were put, to the second: enough to say
//! how old its oldest message is without a timestamp per message.

use std::collections::VecDeque;

use super::Millis;

/// Messages held (ready, delayed, leased, or handed to a waiter), counted
/// by the second they were put in: one entry per second in which puts
/// happened, not one per message. Ids grow with time, so an entry covers
/// the ids from its `first` up to the next entry's.
#[derive(Debug, Default)]
pub(super) struct Ages {
    seconds: VecDeque<Second>,
}

#[derive(Debug)]
struct Second {
    /// The first id put in this second.
    first: u64,
    /// The second's start, broker time.
    at: Millis,
    /// Its messages still held.
    held: u64,
}

impl Ages {
    /// Message `id` is held from `now` on.
    pub(super) fn hold(&mut self, id: u64, now: Millis) {
        let at = now - now % 1000;
        match self.seconds.back_mut() {
            Some(last) if id >= last.first && at <= last.at => last.held += 1,
            Some(last) if id >= last.first => self.seconds.push_back(Second {
                first: id,
                at,
                held: 1,
            }),
            Some(_) => {
                // An older id (restored from the log out of order): counted
                // with the second that holds its ids, or before the first.
                let i = self.seconds.partition_point(|s| s.first <= id);
                if i == 0 {
                    let at = self.seconds.front().map_or(at, |s| s.at.min(at));
                    self.seconds.push_front(Second {
                        first: id,
                        at,
                        held: 1,
                    });
                } else {
                    self.seconds[i - 1].held += 1;
                }
            }
            None => self.seconds.push_back(Second {
                first: id,
                at,
                held: 1,
            }),
        }
    }

    /// Message `id` is no longer held.
    pub(super) fn release(&mut self, id: u64) {
        let i = self.seconds.partition_point(|s| s.first <= id);
        if i == 0 {
            return;
        }
        let s = &mut self.seconds[i - 1];
        s.held = s.held.saturating_sub(1);
        while self.seconds.front().is_some_and(|s| s.held == 0) {
            self.seconds.pop_front();
        }
    }

    /// The second the oldest held message was put in.
    pub(super) fn oldest(&self) -> Option<Millis> {
        self.seconds.front().map(|s| s.at)
    }

    /// How many messages are held.
    pub(super) fn held(&self) -> u64 {
        self.seconds.iter().map(|s| s.held).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_the_first_second_with_a_message_still_held() {
        let mut a = Ages::default();
        assert_eq!(a.oldest(), None);
        a.hold(1, 1_500);
        a.hold(2, 1_900);
        a.hold(3, 2_100);
        a.hold(4, 5_000);
        assert_eq!((a.oldest(), a.held()), (Some(1_000), 4));
        a.release(2);
        assert_eq!(a.oldest(), Some(1_000));
        a.release(1);
        assert_eq!(a.oldest(), Some(2_000));
        a.release(4);
        assert_eq!(a.oldest(), Some(2_000));
        a.release(3);
        assert_eq!((a.oldest(), a.held()), (None, 0));
        // Restored out of order: never younger than what came after.
        a.hold(10, 9_000);
        a.hold(7, 9_000);
        a.hold(8, 9_500);
        assert_eq!((a.oldest(), a.held()), (Some(9_000), 3));
        a.release(10);
        a.release(7);
        assert_eq!(a.oldest(), Some(9_000));
        a.release(8);
        assert_eq!(a.oldest(), None);
    }
}
