//! Case coding at the relay (PROTOCOL.md §4.2, FORM_ASK to CODINGS_RESULT):
//! the form goes out field by field, and a batch of codings is checked and
//! handed to the shell's store as a whole.
//!
//! FORM_ASK → one FORM_FIELD per field of the [`Service`](super::Service)'s
//! form (or one that says there is none). CODINGS → checked against the
//! form's id, its value lists and the months it accepts → on success
//! [`Output::StoreCodings`], whose answer comes back through
//! [`Relay::handle_codings_stored`] and goes out as CODINGS_RESULT. The
//! core keeps nothing of a batch: not who sent it, not when, not what it
//! held; it counts only how many of a connection's batches are with the
//! store, so that one console cannot queue up work without bound.

use std::sync::Arc;

use super::*;
use crate::core::coding::{BatchId, Coding, CodingsOutcome, FormId};

/// Batches of one connection that may be with the store at once; more are
/// answered LATER at once.
pub const MAX_BATCHES_IN_STORE: u8 = 4;

impl Relay {
    pub(super) fn send_form(&mut self, conn: ConnId) {
        let Some(form) = self.service.coding.clone() else {
            self.send(
                conn,
                FromRelay::FormField {
                    form: FormId::default(),
                    fields: 0,
                    index: 0,
                    field: None,
                },
            );
            return;
        };
        let fields = form.fields().len() as u8;
        for (index, field) in form.fields().iter().enumerate() {
            self.send(
                conn,
                FromRelay::FormField {
                    form: form.id(),
                    fields,
                    index: index as u8,
                    field: Some(field.clone()),
                },
            );
        }
    }

    pub(super) fn handle_codings(
        &mut self,
        now: Now,
        conn: ConnId,
        batch: BatchId,
        form_id: FormId,
        codings: Vec<Coding>,
    ) -> Result<(), CloseCode> {
        let answer = |relay: &mut Relay, outcome| {
            relay.send(conn, FromRelay::CodingsResult { batch, outcome });
            Ok(())
        };
        let Some(form) = self.service.coding.clone() else {
            return answer(self, CodingsOutcome::NotCollecting);
        };
        if form.id() != form_id {
            return answer(self, CodingsOutcome::StaleForm);
        }
        for coding in &codings {
            form.check(coding).map_err(|e| e.close_code())?;
        }
        if !codings.iter().all(|c| form.accepts(c.month, now.unix)) {
            return answer(self, CodingsOutcome::MonthRefused);
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if c.codings_in_store >= MAX_BATCHES_IN_STORE {
            return answer(self, CodingsOutcome::Later);
        }
        c.codings_in_store += 1;
        self.out.push_back(Output::StoreCodings {
            conn,
            batch,
            form: Arc::clone(&form),
            codings,
        });
        Ok(())
    }

    /// The store's answer to [`Output::StoreCodings`]: CODINGS_RESULT to the
    /// connection, if it is still here.
    pub fn handle_codings_stored(&mut self, conn: ConnId, batch: BatchId, outcome: CodingsOutcome) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.codings_in_store = c.codings_in_store.saturating_sub(1);
            self.send(conn, FromRelay::CodingsResult { batch, outcome });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Bench, Did};
    use super::*;
    use crate::core::coding::{CodingForm, MAX_FORM_FIELDS, Month};
    use crate::core::frame::Frame;

    fn collecting() -> (Bench, ConnId, Arc<CodingForm>) {
        let mut bench = Bench::new();
        // 2020-03-15, noon.
        bench.now.unix = 1_584_273_600;
        let form = Arc::new(CodingForm::new(CodingForm::default_fields(), 2).unwrap());
        bench.relay.service.coding = Some(Arc::clone(&form));
        let conn = bench.counsellor("Sam", 1);
        (bench, conn, form)
    }

    fn coding(month: &str, values: &[u8]) -> Coding {
        let mut v = [0; MAX_FORM_FIELDS];
        v[..values.len()].copy_from_slice(values);
        Coding {
            month: Month::parse(month).unwrap(),
            values: v,
        }
    }

    fn results(did: &[Did]) -> Vec<CodingsOutcome> {
        did.iter()
            .filter_map(|d| match d {
                Did::Sent(_, Frame::CodingsResult { outcome, .. }) => Some(*outcome),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_counsellor_gets_the_form_field_by_field() {
        let (mut bench, conn, form) = collecting();
        let did = bench.send(conn, Frame::FormAsk);
        let fields: Vec<_> = did
            .iter()
            .filter_map(|d| match d {
                Did::Sent(
                    c,
                    Frame::FormField {
                        form: id,
                        fields,
                        index,
                        field,
                    },
                ) if *c == conn => {
                    assert_eq!(*id, form.id());
                    assert_eq!(usize::from(*fields), form.fields().len());
                    Some((*index, field.clone().unwrap()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(fields.len(), 7);
        assert_eq!(fields[2].0, 2);
        assert_eq!(fields[2].1, form.fields()[2]);
    }

    #[test]
    fn a_relay_without_a_form_says_so_and_counts_nothing() {
        let mut bench = Bench::new();
        let conn = bench.counsellor("Sam", 1);
        let did = bench.send(conn, Frame::FormAsk);
        assert!(did.contains(&Did::Sent(
            conn,
            Frame::FormField {
                form: FormId::default(),
                fields: 0,
                index: 0,
                field: None
            }
        )));
        let did = bench.send(
            conn,
            Frame::Codings {
                batch: BatchId([1; 16]),
                form: FormId::default(),
                codings: vec![coding("2020-03", &[1])],
            },
        );
        assert_eq!(results(&did), [CodingsOutcome::NotCollecting]);
    }

    #[test]
    fn a_batch_goes_to_the_store_whole_and_its_answer_comes_back() {
        let (mut bench, conn, form) = collecting();
        let batch = Frame::Codings {
            batch: BatchId([7; 16]),
            form: form.id(),
            codings: vec![coding("2020-03", &[1, 2, 2]), coding("2020-01", &[])],
        };
        let did = bench.send(conn, batch);
        assert!(did.contains(&Did::Stored(conn, 2)));
        assert_eq!(results(&did), [CodingsOutcome::Stored]);
    }

    #[test]
    fn a_stale_form_or_a_month_out_of_range_counts_nothing() {
        let (mut bench, conn, form) = collecting();
        let stale = Frame::Codings {
            batch: BatchId([1; 16]),
            form: FormId([9; 8]),
            codings: vec![coding("2020-03", &[1])],
        };
        let did = bench.send(conn, stale);
        assert_eq!(results(&did), [CodingsOutcome::StaleForm]);
        let old = Frame::Codings {
            batch: BatchId([2; 16]),
            form: form.id(),
            codings: vec![coding("2020-03", &[1]), coding("2019-12", &[1])],
        };
        let did = bench.send(conn, old);
        assert_eq!(results(&did), [CodingsOutcome::MonthRefused]);
        assert!(!did.iter().any(|d| matches!(d, Did::Stored(..))));
    }

    #[test]
    fn a_value_the_form_does_not_have_closes_only_that_connection() {
        let (mut bench, conn, form) = collecting();
        let other = bench.counsellor("Noor", 1);
        let bad = Frame::Codings {
            batch: BatchId([1; 16]),
            form: form.id(),
            codings: vec![coding("2020-03", &[1, 7])],
        };
        let did = bench.send(conn, bad);
        assert!(did.contains(&Did::Closed(conn, CloseCode::MalformedFrame)));
        assert!(!did.iter().any(|d| matches!(d, Did::Stored(..))));
        let did = bench.send(other, Frame::FormAsk);
        assert!(
            did.iter()
                .any(|d| matches!(d, Did::Sent(c, _) if *c == other))
        );
    }

    #[test]
    fn a_young_person_cannot_code() {
        let mut bench = Bench::new();
        let (client, _) = bench.client();
        let did = bench.send(client, Frame::FormAsk);
        assert!(did.contains(&Did::Closed(client, CloseCode::UnexpectedFrame)));
    }

    #[test]
    fn a_console_cannot_queue_more_batches_than_the_limit() {
        let (mut bench, conn, form) = collecting();
        for i in 0..MAX_BATCHES_IN_STORE + 1 {
            let frame = Frame::Codings {
                batch: BatchId([i; 16]),
                form: form.id(),
                codings: vec![coding("2020-03", &[1])],
            };
            bench.relay.handle_data(bench.now, conn, &frame.encode());
        }
        let mut stored = 0;
        let mut later = 0;
        while let Some(out) = bench.relay.poll_output() {
            match out {
                Output::StoreCodings { .. } => stored += 1,
                Output::Send { bytes, .. } => {
                    if let Ok(Frame::CodingsResult { outcome, .. }) = Frame::decode(&bytes) {
                        assert_eq!(outcome, CodingsOutcome::Later);
                        later += 1;
                    }
                }
                _ => {}
            }
        }
        assert_eq!((stored, later), (MAX_BATCHES_IN_STORE, 1));
    }
}
