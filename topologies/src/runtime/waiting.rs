//! The works a pool's waiting deliveries wait on (see `HandlerError::work`): one
//! delivery per work waits in a pool, and a copy of the same command (another stored
//! message) that comes to wait on it is acked — the one waiting answers for both. Re-sent
//! copies waiting beside their originals filled a consumer's max-ack-pending during a
//! long provider outage and stopped its other commands (review, eleventh session).
//!
//! A delivery of the *same* stored message is never such a copy: JetStream redelivers a
//! message whose progress acks were lost past the ack wait while its first delivery
//! still waits here, and acking the second would ack the message the first waits with
//! (second review).

use std::{collections::HashMap, sync::Mutex};

use super::ledger::Key;

/// The claims of one pool.
#[derive(Debug, Default)]
pub(super) struct WaitingWork {
    works: Mutex<HashMap<String, Key>>,
}

/// Who holds a work.
pub(super) enum Claimed<'a> {
    /// The asking delivery, now (until the claim drops).
    Now(WorkClaim<'a>),
    /// Another delivery of the same stored message.
    BySameMessage,
    /// A delivery of another message: a copy of the same command.
    ByAnother,
}

/// A delivery's claim of a work, given up when that delivery ends here (handled,
/// handed back, dead-lettered).
pub(super) struct WorkClaim<'a> {
    of: &'a WaitingWork,
    work: String,
    message: Key,
}

impl WaitingWork {
    /// Claim `work` for a delivery of the stored `message`.
    pub(super) fn take(&self, work: &str, message: Key) -> Claimed<'_> {
        let mut works = self.works.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match works.get(work) {
            Some(holder) if *holder == message => Claimed::BySameMessage,
            Some(_) => Claimed::ByAnother,
            None => {
                works.insert(work.to_owned(), message);
                Claimed::Now(WorkClaim { of: self, work: work.to_owned(), message })
            }
        }
    }
}

impl Drop for WorkClaim<'_> {
    fn drop(&mut self) {
        let mut works = self.of.works.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if works.get(&self.work) == Some(&self.message) {
            works.remove(&self.work);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_work_waits_and_its_own_redelivery_is_not_a_copy() {
        let pool = WaitingWork::default();
        let (m1, m2) = ((1, 10), (2, 20));
        let claim = match pool.take("key-a", m1) {
            Claimed::Now(c) => c,
            _ => panic!("the first delivery claims the work"),
        };
        assert!(matches!(pool.take("key-a", m2), Claimed::ByAnother), "a copy is acked");
        assert!(matches!(pool.take("key-a", m1), Claimed::BySameMessage), "a redelivery is not");
        assert!(matches!(pool.take("key-b", m2), Claimed::Now(_)), "another work is free");
        drop(claim);
        assert!(matches!(pool.take("key-a", m2), Claimed::Now(_)), "free once its holder ends");
    }
}
