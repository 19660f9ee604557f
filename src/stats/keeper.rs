//! The one writer of the statistics store: a thread that takes batches of
//! codings in order, adds each to the store in one transaction, and
//! answers.
//!
//! A batch id already counted (its answer was lost, and the counsellor's
//! client sent it again) is answered STORED without counting it twice.
//! The ids are kept in memory only, the last [`REMEMBERED_BATCHES`]; they
//! are random and say nothing about anyone. A store that fails is answered
//! LATER: the client keeps the batch and sends it again.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::store::{Store, StoreError};
use crate::core::coding::{BatchId, Coding, CodingForm, CodingsOutcome};

/// Batches waiting for the writer; more are answered LATER at once.
pub const QUEUE: usize = 256;
/// Batch ids remembered to answer a repeat.
pub const REMEMBERED_BATCHES: usize = 4096;

/// One batch for the store, and where its answer goes.
pub struct Job {
    pub batch: BatchId,
    pub form: Arc<CodingForm>,
    pub codings: Vec<Coding>,
    pub answer: Box<dyn FnOnce(CodingsOutcome) + Send>,
}

/// The writer's queue.
#[derive(Clone)]
pub struct Keeper {
    jobs: mpsc::Sender<Job>,
}

impl Keeper {
    /// Opens (or creates) the store at `path` and starts the writer. The
    /// store is opened here, so that a relay with an unusable store does
    /// not start.
    pub fn start(path: &Path, cross: Vec<(usize, usize)>) -> Result<Keeper, StoreError> {
        let mut store = Store::open(path)?;
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
        let slow = slow_writes_for_tests();
        std::thread::Builder::new()
            .name("fluister-stats".into())
            .spawn(move || {
                let mut seen: HashSet<BatchId> = HashSet::new();
                let mut order: VecDeque<BatchId> = VecDeque::new();
                while let Some(job) = queue.blocking_recv() {
                    if seen.contains(&job.batch) {
                        (job.answer)(CodingsOutcome::Stored);
                        continue;
                    }
                    let result = match slow {
                        Some(pause) => store.add_slowly(&job.form, &cross, &job.codings, pause),
                        None => store.add(&job.form, &cross, &job.codings),
                    };
                    match result {
                        Ok(()) => {
                            seen.insert(job.batch);
                            order.push_back(job.batch);
                            if order.len() > REMEMBERED_BATCHES
                                && let Some(old) = order.pop_front()
                            {
                                seen.remove(&old);
                            }
                            (job.answer)(CodingsOutcome::Stored);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "a batch of codings was not counted; the console will send it again");
                            (job.answer)(CodingsOutcome::Later);
                        }
                    }
                }
            })
            .map_err(|source| StoreError::Thread {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Keeper { jobs })
    }

    /// Queues a batch; a full queue answers LATER at once.
    pub fn submit(&self, job: Job) {
        if let Err(e) = self.jobs.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            (job.answer)(CodingsOutcome::Later);
        }
    }
}

/// `FLUISTER_STATS_SLOW_WRITES_FOR_TESTS=<ms>`: the writer pauses this long
/// after each coding inside its transaction, so that a test can kill the
/// relay in the middle of a batch. Never set it in production.
fn slow_writes_for_tests() -> Option<std::time::Duration> {
    std::env::var("FLUISTER_STATS_SLOW_WRITES_FOR_TESTS")
        .ok()?
        .parse()
        .ok()
        .map(std::time::Duration::from_millis)
}
