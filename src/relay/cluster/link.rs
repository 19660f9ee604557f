//! Ordered delivery with nothing lost or doubled, over NATS requests.
//!
//! Core NATS delivers a message at most once, and only to whoever is
//! subscribed at that moment: a chat side whose relay has not yet taken in
//! its half of a pairing, a relay restarting its NATS connection or a
//! leader changing would lose what was sent meanwhile. So every stream
//! between relays (a relay's commands to the leader, the leader's events
//! to a relay, one side's messages to the other) is a [`Sender`]:
//! - what it is given goes out in batches, one at a time, as NATS
//!   requests; the receiver answers once it has taken the batch in;
//! - a batch that is not answered (no responder yet, a timeout, NATS away)
//!   is sent again, with backoff, until it is answered or the sender's
//!   patience ends;
//! - each batch carries the stream's random id and a sequence number, so
//!   that a receiver drops a batch it already took in ([`Dedup`]), whose
//!   answer was lost.
//!
//! One batch in flight per stream keeps the order. Batches carry up to
//! [`MAX_BATCH`] items, so a busy stream pays one round trip for many.
//! Each is sealed with the cluster's secret for its subject (`seal.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Status;
use super::seal::Seal;

/// Most items in one batch: 64 FORWARDs are about 70 KB, far below NATS's
/// smallest `max_payload`.
pub const MAX_BATCH: usize = 64;
/// How long a request waits for its answer before it is sent again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Backoff between attempts, doubling from the first to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const LAST_BACKOFF: Duration = Duration::from_millis(500);

/// One request's payload.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    /// The node that sent it.
    pub from: u16,
    /// The leader's epoch, on the leader's events; 0 elsewhere.
    pub epoch: u64,
    /// The sending stream's random id, and the batch's number in it
    /// (from 1).
    pub stream: u64,
    pub seq: u64,
    pub items: Vec<Vec<u8>>,
}

/// The sending end of one stream. Dropping it lets the stream finish
/// what it was given, and end.
pub struct Sender {
    items: mpsc::UnboundedSender<Vec<u8>>,
}

impl Sender {
    /// A stream to `subject` that tries each batch for up to `patience`
    /// (`None`: until it is answered).
    pub fn spawn(
        client: Client,
        subject: String,
        from: u16,
        epoch: u64,
        patience: Option<Duration>,
        status: Arc<Status>,
        seal: Seal,
    ) -> Sender {
        let (items, rx) = mpsc::unbounded_channel();
        let stream = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let stream = Stream {
            client,
            subject,
            from,
            epoch,
            stream,
            patience,
            status,
            seal,
        };
        tokio::spawn(stream.run(rx));
        Sender { items }
    }

    /// Queues one item; false if the stream has ended.
    pub fn send(&self, item: Vec<u8>) -> bool {
        self.items.send(item).is_ok()
    }
}

struct Stream {
    client: Client,
    subject: String,
    from: u16,
    epoch: u64,
    stream: u64,
    patience: Option<Duration>,
    status: Arc<Status>,
    seal: Seal,
}

impl Stream {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
        let mut seq = 0;
        while let Some(first) = rx.recv().await {
            let mut items = vec![first];
            while items.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) => items.push(item),
                    Err(_) => break,
                }
            }
            seq += 1;
            let batch = Batch {
                from: self.from,
                epoch: self.epoch,
                stream: self.stream,
                seq,
                items,
            };
            let Ok(plain) = postcard::to_stdvec(&batch) else {
                continue;
            };
            let payload = self.seal.seal(&self.subject, &plain);
            if !self.deliver(payload.into()).await {
                self.status.batch_given_up();
            }
        }
    }

    /// Sends one batch until it is answered; false if patience ran out.
    async fn deliver(&self, payload: bytes::Bytes) -> bool {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let request = self.client.request(self.subject.clone(), payload.clone());
            if let Ok(Ok(_answer)) = tokio::time::timeout(ANSWER_TIMEOUT, request).await {
                return true;
            }
            if self.patience.is_some_and(|p| started.elapsed() >= p) {
                return false;
            }
            self.status.batch_resent();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(LAST_BACKOFF);
        }
    }
}

/// What a receiver keeps to drop batches it already took in: the last
/// sequence number of each stream.
#[derive(Default)]
pub struct Dedup {
    last: HashMap<u64, u64>,
}

impl Dedup {
    /// Whether `batch` is new (and notes that it is taken in now).
    pub fn is_new(&mut self, batch: &Batch) -> bool {
        let last = self.last.entry(batch.stream).or_insert(0);
        if batch.seq > *last {
            *last = batch.seq;
            true
        } else {
            false
        }
    }
}

/// Answers a request: its batch is taken in (or was, or is not one).
pub async fn answer(client: &Client, message: &async_nats::Message) {
    if let Some(reply) = &message.reply {
        let _ = client.publish(reply.clone(), bytes::Bytes::new()).await;
    }
}

/// The batch in a request, if it is one, sealed with this cluster's secret
/// for this subject. What is not is answered too, so that a broken sender
/// does not try it forever, and otherwise ignored.
pub fn batch_of(seal: &Seal, message: &async_nats::Message) -> Option<Batch> {
    let plain = seal.open(message.subject.as_str(), &message.payload)?;
    postcard::from_bytes(&plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_taken_in_once_and_a_new_stream_starts_anywhere() {
        let batch = |stream, seq| Batch {
            from: 1,
            epoch: 0,
            stream,
            seq,
            items: Vec::new(),
        };
        let mut dedup = Dedup::default();
        assert!(dedup.is_new(&batch(7, 1)));
        assert!(
            !dedup.is_new(&batch(7, 1)),
            "its answer was lost: sent again"
        );
        assert!(dedup.is_new(&batch(7, 2)));
        assert!(dedup.is_new(&batch(9, 5)), "another stream");
        assert!(!dedup.is_new(&batch(7, 2)));
    }
}
