//! The pairing seam: who is waiting, who is free, and who goes with whom.
//!
//! [`Relay`](super::relay::Relay) asks a [`PairingBackend`] to queue clients,
//! to note counsellors that are free, and for the next pair; it never looks at
//! the queue's representation. [`LocalQueue`] is the single-relay backend: a
//! FIFO of waiting clients and a FIFO of free counsellors (the one free
//! longest is asked first). A backend that shares state between relays
//! implements the same trait.

use std::collections::VecDeque;

/// The relay core's handle for one connection. It is a local counter, never
/// sent on the wire and never logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl std::fmt::Debug for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnId(..)")
    }
}

/// The queue is at its configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Pairing and routing decisions, behind one seam.
pub trait PairingBackend {
    /// Puts a client at the back of the queue.
    fn enqueue_client(&mut self, client: ConnId) -> Result<(), QueueFull>;
    /// Takes a client out of the queue; false if it was not waiting.
    fn remove_client(&mut self, client: ConnId) -> bool;
    /// Notes that a counsellor can take one more chat.
    fn counsellor_free(&mut self, counsellor: ConnId);
    /// Forgets a counsellor entirely (disconnected, or now at capacity).
    fn remove_counsellor(&mut self, counsellor: ConnId);
    /// The next (client, counsellor) pair, removed from both lists.
    fn next_pair(&mut self) -> Option<(ConnId, ConnId)>;
    /// Waiting clients in queue order, first = position 1.
    fn waiting(&self) -> Vec<ConnId>;
}

/// One relay's in-memory FIFO queue.
#[derive(Debug)]
pub struct LocalQueue {
    max_queue: usize,
    clients: VecDeque<ConnId>,
    free_counsellors: VecDeque<ConnId>,
}

impl LocalQueue {
    pub fn new(max_queue: usize) -> Self {
        LocalQueue {
            max_queue,
            clients: VecDeque::new(),
            free_counsellors: VecDeque::new(),
        }
    }
}

impl PairingBackend for LocalQueue {
    fn enqueue_client(&mut self, client: ConnId) -> Result<(), QueueFull> {
        if self.clients.len() >= self.max_queue {
            return Err(QueueFull);
        }
        self.clients.push_back(client);
        Ok(())
    }

    fn remove_client(&mut self, client: ConnId) -> bool {
        let before = self.clients.len();
        self.clients.retain(|c| *c != client);
        self.clients.len() != before
    }

    fn counsellor_free(&mut self, counsellor: ConnId) {
        if !self.free_counsellors.contains(&counsellor) {
            self.free_counsellors.push_back(counsellor);
        }
    }

    fn remove_counsellor(&mut self, counsellor: ConnId) {
        self.free_counsellors.retain(|c| *c != counsellor);
    }

    fn next_pair(&mut self) -> Option<(ConnId, ConnId)> {
        if self.clients.is_empty() || self.free_counsellors.is_empty() {
            return None;
        }
        let client = self.clients.pop_front()?;
        let counsellor = self.free_counsellors.pop_front()?;
        Some((client, counsellor))
    }

    fn waiting(&self) -> Vec<ConnId> {
        self.clients.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_paired_first_come_first_served() {
        let mut q = LocalQueue::new(3);
        for i in 1..=3 {
            q.enqueue_client(ConnId(i)).unwrap();
        }
        assert_eq!(q.enqueue_client(ConnId(4)), Err(QueueFull));
        q.counsellor_free(ConnId(10));
        q.counsellor_free(ConnId(11));
        assert_eq!(q.next_pair(), Some((ConnId(1), ConnId(10))));
        assert_eq!(q.next_pair(), Some((ConnId(2), ConnId(11))));
        assert_eq!(q.next_pair(), None);
        assert!(q.remove_client(ConnId(3)));
        assert!(!q.remove_client(ConnId(3)));
        assert_eq!(q.waiting(), vec![]);
    }
}
