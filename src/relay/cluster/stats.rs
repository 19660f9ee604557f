//! Case statistics in a cluster: one designated relay keeps the store.
//!
//! The relay whose `[stats]` names a store is the keeper: it answers
//! requests on `<prefix>.stats` (as the NATS queue group `keepers`, so that
//! a second keeper by mistake shares the work instead of counting twice).
//! Every other relay sends its counsellors' batches there and passes the
//! answer back. A batch travels sealed with the cluster's secret, like
//! everything relays say to each other; NATS sees its size only.
//!
//! ```text
//! relay B core ─StoreCodings→ StatsLink::submit ─request <prefix>.stats→ keeper A ─→ A's store
//!            ←──────────── CodingsOutcome (sealed reply) ←──────────────────┘
//! ```
//!
//! No answer within [`ANSWER_WITHIN`] (no keeper, NATS away) is LATER: the
//! counsellor's client keeps the batch and sends it again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Names;
use crate::core::coding::{
    BatchId, Coding, CodingForm, CodingsOutcome, FormId, MAX_FORM_FIELDS, Month,
};
use crate::stats::keeper::{Job, Keeper};

/// How long a relay waits for the keeper's answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A batch as it crosses NATS (postcard, then sealed).
#[derive(Serialize, Deserialize)]
struct Batch {
    batch: [u8; 16],
    form: [u8; 8],
    codings: Vec<(u16, u8, [u8; MAX_FORM_FIELDS])>,
}

/// A relay's way to the keeper.
#[derive(Clone)]
pub struct StatsLink {
    client: async_nats::Client,
    names: Names,
}

impl StatsLink {
    pub(super) fn new(client: async_nats::Client, names: Names) -> StatsLink {
        StatsLink { client, names }
    }

    /// Sends a batch to the keeper; its answer (or LATER) goes to `job.answer`.
    pub fn submit(&self, job: Job) {
        let subject = self.names.stats();
        let batch = Batch {
            batch: job.batch.0,
            form: job.form.id().0,
            codings: job
                .codings
                .iter()
                .map(|c| (c.month.year(), c.month.month(), c.values))
                .collect(),
        };
        let Ok(plain) = postcard::to_stdvec(&batch) else {
            return (job.answer)(CodingsOutcome::Later);
        };
        let sealed = self.names.seal.seal(&subject, &plain);
        let client = self.client.clone();
        let seal = self.names.seal.clone();
        tokio::spawn(async move {
            let request = client.request(subject.clone(), sealed.into());
            let outcome = match tokio::time::timeout(ANSWER_WITHIN, request).await {
                Ok(Ok(reply)) => seal
                    .open(&reply_subject(&subject), &reply.payload)
                    .and_then(|b| b.first().copied())
                    .and_then(|b| CodingsOutcome::from_byte(b).ok())
                    .unwrap_or(CodingsOutcome::Later),
                _ => CodingsOutcome::Later,
            };
            (job.answer)(outcome);
        });
    }

    /// On the keeper: answers `<prefix>.stats` with `keeper` until the
    /// subscription ends. Batches made with another form are STALE_FORM.
    pub async fn serve(
        self,
        keeper: Keeper,
        form: Arc<CodingForm>,
    ) -> Result<(), super::ClusterError> {
        let subject = self.names.stats();
        let mut requests = self
            .client
            .queue_subscribe(subject.clone(), "keepers".into())
            .await
            .map_err(|e| super::ClusterError::Stats {
                subject: subject.clone(),
                reason: e.to_string(),
            })?;
        let client = self.client.clone();
        let seal = self.names.seal.clone();
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some(reply) = message.reply.clone() else {
                    continue;
                };
                let batch = seal
                    .open(&subject, &message.payload)
                    .and_then(|plain| postcard::from_bytes::<Batch>(&plain).ok());
                let Some(batch) = batch else {
                    // Not from this cluster, or damaged: no answer.
                    continue;
                };
                let codings: Option<Vec<Coding>> = batch
                    .codings
                    .iter()
                    .map(|&(year, month, values)| {
                        let coding = Coding {
                            month: Month::new(year, month)?,
                            values,
                        };
                        form.check(&coding).ok().map(|()| coding)
                    })
                    .collect();
                let (tx, rx) = tokio::sync::oneshot::channel();
                match codings.filter(|_| FormId(batch.form) == form.id()) {
                    Some(codings) => keeper.submit(Job {
                        batch: BatchId(batch.batch),
                        form: Arc::clone(&form),
                        codings,
                        answer: Box::new(move |outcome| {
                            let _ = tx.send(outcome);
                        }),
                    }),
                    // Made with another form: this relay's config differs.
                    None => {
                        let _ = tx.send(CodingsOutcome::StaleForm);
                    }
                }
                let (client, seal, answer_subject) =
                    (client.clone(), seal.clone(), reply_subject(&subject));
                tokio::spawn(async move {
                    let outcome = rx.await.unwrap_or(CodingsOutcome::Later);
                    let sealed = seal.seal(&answer_subject, &[outcome.to_byte()]);
                    let _ = client.publish(reply, sealed.into()).await;
                });
            }
        });
        Ok(())
    }
}

/// The subject a reply is sealed under, so that a request cannot be
/// passed off as an answer.
fn reply_subject(subject: &str) -> String {
    format!("{subject}.reply")
}
