//! The counsellor's case coding (PROTOCOL.md §4.2, FORM_ASK to
//! CODINGS_RESULT): the form, the codings held, and their batches.
//!
//! After signing in the machine asks for the form (FORM_ASK) and collects
//! its fields (FORM_FIELD). A coding (`/code`, or the console's form) is
//! kept by field and value *names*, with the month it was made in, and
//! never with a chat: nothing ties it to one. Codings are held, in memory
//! only, until [`BATCH`] of one month have gathered, or the counsellor
//! signs out or says `/code send`; then one month's codings go out as one
//! CODINGS frame in random order, under a fresh random batch id. One batch
//! is in flight at a time. Its answer:
//! - STORED: counted; gone from here;
//! - STALE_FORM: the form changed; ask for it again and resend with it
//!   (codings whose field or value it no longer has lose that field);
//! - MONTH_REFUSED: the relay no longer takes that month; dropped, and the
//!   counsellor is told how many;
//! - NOT_COLLECTING: dropped, and coding is off;
//! - LATER: kept, and sent again after [`RETRY`].
//!
//! A batch whose answer was lost with the connection is sent again under
//! the same id; the relay counts a repeated id once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand_core::RngCore;

use super::link::Link;
use crate::client::chat::{ChatEvent, FormFieldInfo};
use crate::core::coding::{
    BatchId, Coding, CodingField, CodingsOutcome, FormId, MAX_CODINGS, MAX_FORM_FIELDS, Month,
};
use crate::core::frame::ToRelay;

/// Codings of one month that make a batch on their own.
pub const BATCH: usize = 5;
/// How long to wait before sending a batch again after LATER.
pub const RETRY: Duration = Duration::from_secs(30);

/// One held coding: its month and `(field, value)` names of what was coded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    month: Month,
    values: Vec<(String, String)>,
}

enum Form {
    /// Not asked for yet on this connection.
    Unknown,
    /// Asked; fields arrive by index.
    Arriving {
        id: FormId,
        fields: Vec<Option<CodingField>>,
    },
    Ready {
        id: FormId,
        fields: Vec<CodingField>,
    },
    /// The relay collects no codings.
    Off,
}

/// What a counsellor chose in one coding: by number (1-based) or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub field: String,
    pub value: String,
}

pub struct Coder {
    form: Form,
    held: Vec<Held>,
    in_flight: Option<(BatchId, Vec<Held>)>,
    retry_at: Option<Instant>,
    /// The batch in flight went out on a connection that was lost.
    resend_due: bool,
    /// `/code send`: every held coding goes, batch after batch.
    flushing: bool,
}

impl Default for Coder {
    fn default() -> Self {
        Coder {
            form: Form::Unknown,
            held: Vec::new(),
            in_flight: None,
            retry_at: None,
            resend_due: false,
            flushing: false,
        }
    }
}

impl Coder {
    /// A connection is up and signed in: ask for the form (again: a relay
    /// may have restarted with another). A batch whose answer was lost
    /// goes again once the form is here.
    pub fn signed_in(&mut self, link: &mut Link) {
        self.form = Form::Unknown;
        link.send(ToRelay::FormAsk);
    }

    /// The connection dropped: the form is asked for again on the next.
    pub fn lost(&mut self) {
        self.resend_due = self.in_flight.is_some();
    }

    pub fn form_field(
        &mut self,
        now: Instant,
        link: &mut Link,
        id: FormId,
        count: u8,
        index: u8,
        field: Option<CodingField>,
    ) {
        let Some(field) = field else {
            self.form = Form::Off;
            self.in_flight = None;
            if !self.held.is_empty() {
                link.error(format!(
                    "this relay collects no case statistics; {} coding(s) were not counted",
                    self.held.len()
                ));
                self.held.clear();
            }
            return;
        };
        if !matches!(&self.form, Form::Arriving { id: current, .. } if *current == id) {
            self.form = Form::Arriving {
                id,
                fields: vec![None; usize::from(count)],
            };
        }
        if let Form::Arriving { fields, .. } = &mut self.form {
            if let Some(slot) = fields.get_mut(usize::from(index)) {
                *slot = Some(field);
            }
            if fields.iter().all(Option::is_some) {
                let fields: Vec<CodingField> = fields.drain(..).flatten().collect();
                link.emit(form_event(&fields));
                self.form = Form::Ready { id, fields };
                if std::mem::take(&mut self.resend_due) {
                    self.resend(link);
                }
                self.pump(now, link, false);
            }
        }
    }

    /// Shows the form (`/code` alone).
    pub fn show(&mut self, link: &mut Link) {
        match &self.form {
            Form::Ready { fields, .. } => link.emit(form_event(fields)),
            Form::Off => link.error("this relay collects no case statistics"),
            _ => link.error("the coding form has not arrived yet; try again in a moment"),
        }
    }

    /// Adds one coding for `month` (the current month if `None`).
    pub fn code(
        &mut self,
        now: Instant,
        link: &mut Link,
        choices: &[Choice],
        month: Option<Month>,
    ) {
        let fields = match &self.form {
            Form::Ready { fields, .. } => fields,
            Form::Off => return link.error("this relay collects no case statistics"),
            _ => {
                return link.error("the coding form has not arrived yet; the coding was not kept");
            }
        };
        let mut values: Vec<(String, String)> = Vec::new();
        for choice in choices {
            let Some(field) = pick(fields.iter().map(|f| f.name.as_str()), &choice.field) else {
                return link.error(format!(
                    "the form has no field {:?}; \"/code\" shows it; the coding was not kept",
                    choice.field
                ));
            };
            let f = &fields[field];
            let Some(value) = pick(f.values.iter().map(|v| v.as_str()), &choice.value) else {
                return link.error(format!(
                    "{:?} has no value {:?}; the coding was not kept",
                    f.name.as_str(),
                    choice.value
                ));
            };
            let name = f.name.to_string();
            if values.iter().any(|(n, _)| *n == name) {
                return link.error(format!("{name:?} was given twice; the coding was not kept"));
            }
            values.push((name, f.values[value].to_string()));
        }
        let month = match month.or_else(|| Month::of_unix(link.clock.unix(now) as i64)) {
            Some(m) => m,
            None => return link.error("the clock is wrong; the coding was not kept"),
        };
        self.held.push(Held { month, values });
        link.emit(ChatEvent::Coded {
            held: self.waiting(),
            counted: None,
        });
        self.pump(now, link, false);
    }

    /// Codings held or in flight.
    pub fn waiting(&self) -> usize {
        self.held.len() + self.in_flight.as_ref().map_or(0, |(_, b)| b.len())
    }

    /// Whether signing out must wait for codings still to be counted.
    pub fn busy(&self) -> bool {
        matches!(
            self.form,
            Form::Ready { .. } | Form::Unknown | Form::Arriving { .. }
        ) && self.waiting() > 0
    }

    /// Sends the next batch if one is due (`force`: any held coding makes
    /// one, as at sign-out or `/code send`).
    pub fn pump(&mut self, now: Instant, link: &mut Link, force: bool) {
        self.flushing = (self.flushing || force) && !self.held.is_empty();
        let force = self.flushing;
        if self.in_flight.is_some() || !link.is_open() {
            return;
        }
        // After LATER, not before the retry time, even at sign-out: the
        // store is busy or away.
        if self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        let Form::Ready { id, fields } = &self.form else {
            return;
        };
        let mut per_month: BTreeMap<Month, usize> = BTreeMap::new();
        for h in &self.held {
            *per_month.entry(h.month).or_default() += 1;
        }
        let Some(month) = per_month
            .iter()
            .find(|(_, n)| force || **n >= BATCH)
            .map(|(m, _)| *m)
        else {
            return;
        };
        self.retry_at = None;
        // This month's codings, shuffled, up to one frame's worth.
        let (mut batch, rest): (Vec<Held>, Vec<Held>) =
            self.held.drain(..).partition(|h| h.month == month);
        self.held = rest;
        for i in (1..batch.len()).rev() {
            let j = (link.rng.next_u64() % (i as u64 + 1)) as usize;
            batch.swap(i, j);
        }
        if batch.len() > MAX_CODINGS {
            self.held.extend(batch.drain(MAX_CODINGS..));
        }
        let mut id_bytes = [0u8; 16];
        link.rng.fill_bytes(&mut id_bytes);
        let batch_id = BatchId(id_bytes);
        let codings = encode(fields, &batch);
        link.send(ToRelay::Codings {
            batch: batch_id,
            form: *id,
            codings,
        });
        self.in_flight = Some((batch_id, batch));
    }

    pub fn result(
        &mut self,
        now: Instant,
        link: &mut Link,
        batch: BatchId,
        outcome: CodingsOutcome,
    ) {
        let Some((id, codings)) = self.in_flight.take() else {
            return;
        };
        if id != batch {
            self.in_flight = Some((id, codings));
            return;
        }
        match outcome {
            CodingsOutcome::Stored => link.emit(ChatEvent::Coded {
                held: self.waiting(),
                counted: Some(codings.len()),
            }),
            CodingsOutcome::StaleForm => {
                self.held.extend(codings);
                self.form = Form::Unknown;
                link.send(ToRelay::FormAsk);
            }
            CodingsOutcome::MonthRefused => link.error(format!(
                "{} coding(s) for {} were not counted: the relay no longer takes that month",
                codings.len(),
                codings[0].month
            )),
            CodingsOutcome::NotCollecting => {
                let lost = codings.len() + self.held.len();
                self.held.clear();
                self.form = Form::Off;
                link.error(format!(
                    "this relay collects no case statistics; {lost} coding(s) were not counted"
                ));
            }
            CodingsOutcome::Later => {
                self.held.extend(codings);
                self.retry_at = Some(now + RETRY);
            }
        }
        self.pump(now, link, false);
    }

    /// Sends again, on a new connection, the batch whose answer was lost.
    pub fn resend(&mut self, link: &mut Link) {
        if let (Some((id, batch)), Form::Ready { id: form, fields }) = (&self.in_flight, &self.form)
        {
            link.send(ToRelay::Codings {
                batch: *id,
                form: *form,
                codings: encode(fields, batch),
            });
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at.filter(|_| !self.held.is_empty())
    }

    /// Gives up what was not counted, saying how much.
    pub fn give_up(&mut self, link: &mut Link) {
        let lost = self.waiting();
        self.held.clear();
        self.in_flight = None;
        if lost > 0 {
            link.error(format!("{lost} coding(s) were not counted"));
        }
    }
}

/// The form as the counsellor's frontend shows it.
fn form_event(fields: &[CodingField]) -> ChatEvent {
    ChatEvent::Form {
        fields: fields
            .iter()
            .map(|f| FormFieldInfo {
                name: f.name.to_string(),
                values: f.values.iter().map(|v| v.to_string()).collect(),
            })
            .collect(),
    }
}

/// A field or value by number (from 1) or by name, ignoring case.
fn pick<'a>(names: impl Iterator<Item = &'a str>, wanted: &str) -> Option<usize> {
    let names: Vec<&str> = names.collect();
    if let Ok(n) = wanted.parse::<usize>() {
        return (1..=names.len()).contains(&n).then(|| n - 1);
    }
    names.iter().position(|n| n.eq_ignore_ascii_case(wanted))
}

/// Codings by position in `fields`; a name the form lacks is not coded.
fn encode(fields: &[CodingField], batch: &[Held]) -> Vec<Coding> {
    batch
        .iter()
        .map(|h| {
            let mut values = [0u8; MAX_FORM_FIELDS];
            for (name, value) in &h.values {
                if let Some(i) = fields.iter().position(|f| f.name.as_str() == name)
                    && let Some(j) = fields[i].values.iter().position(|v| v.as_str() == value)
                    && i < MAX_FORM_FIELDS
                {
                    values[i] = j as u8 + 1;
                }
            }
            Coding {
                month: h.month,
                values,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::super::Transmit;
    use super::super::link::Clock;
    use super::*;
    use crate::core::coding::CodingForm;

    /// A coder with the default form arrived, on a link opened in March 2020.
    fn ready() -> (Coder, Link, Instant, CodingForm) {
        let now = Instant::now();
        let mut link = Link::new(
            Clock::new(now, 1_584_273_600),
            ChaCha20Rng::seed_from_u64(7),
            None,
        );
        let form = CodingForm::new(CodingForm::default_fields(), 2).unwrap();
        let mut coder = Coder::default();
        coder.signed_in(&mut link);
        let count = form.fields().len() as u8;
        for (i, field) in form.fields().iter().enumerate() {
            coder.form_field(
                now,
                &mut link,
                form.id(),
                count,
                i as u8,
                Some(field.clone()),
            );
        }
        sent(&mut link);
        (coder, link, now, form)
    }

    /// The CODINGS frames sent since the last call.
    fn sent(link: &mut Link) -> Vec<(BatchId, Vec<Coding>)> {
        let mut out = Vec::new();
        while let Some(t) = link.poll_transmit() {
            if let Transmit::Frame(ToRelay::Codings { batch, codings, .. }) = t {
                out.push((batch, codings));
            }
        }
        out
    }

    fn choice(field: &str, value: &str) -> Choice {
        Choice {
            field: field.into(),
            value: value.into(),
        }
    }

    #[test]
    fn codings_wait_for_five_of_a_month_and_go_shuffled() {
        let (mut coder, mut link, now, _) = ready();
        for age in ["1", "2", "3", "4"] {
            coder.code(now, &mut link, &[choice("Age band", age)], None);
        }
        assert!(sent(&mut link).is_empty(), "four codings are not a batch");
        coder.code(now, &mut link, &[choice("2", "5")], None);
        let batches = sent(&mut link);
        assert_eq!(batches.len(), 1);
        let ages: Vec<u8> = batches[0].1.iter().map(|c| c.values[1]).collect();
        let mut sorted = ages.clone();
        sorted.sort();
        assert_eq!(sorted, [1, 2, 3, 4, 5]);
        assert_ne!(ages, [1, 2, 3, 4, 5], "not in the order they were coded");
        assert!(
            batches[0]
                .1
                .iter()
                .all(|c| c.month.to_string() == "2020-03")
        );
    }

    #[test]
    fn send_now_empties_the_hold_batch_after_batch_and_later_waits() {
        let (mut coder, mut link, now, _) = ready();
        let jan = Month::parse("2020-01");
        for _ in 0..6 {
            coder.code(now, &mut link, &[choice("Type", "Other")], None);
        }
        coder.code(now, &mut link, &[], jan);
        coder.pump(now, &mut link, true);
        let first = sent(&mut link);
        assert_eq!(first.len(), 1, "one batch in flight at a time");
        coder.result(now, &mut link, first[0].0, CodingsOutcome::Stored);
        let second = sent(&mut link);
        assert_eq!(second.len(), 1, "send now goes on after an answer");
        coder.result(now, &mut link, second[0].0, CodingsOutcome::Later);
        assert!(sent(&mut link).is_empty(), "LATER waits");
        assert_eq!(coder.waiting(), 2, "January's coding and March's sixth");
        coder.pump(now + RETRY, &mut link, false);
        let again = sent(&mut link);
        assert_eq!(again[0].1.len(), second[0].1.len());
        assert_ne!(again[0].0, second[0].0, "a new batch id after LATER");
        coder.result(now + RETRY, &mut link, again[0].0, CodingsOutcome::Stored);
        let last = sent(&mut link);
        assert_eq!(last.len(), 1, "send now still empties the hold");
        coder.result(now + RETRY, &mut link, last[0].0, CodingsOutcome::Stored);
        assert_eq!(coder.waiting(), 0);
        assert!(!coder.busy());
    }

    #[test]
    fn a_stale_form_is_asked_again_and_the_codings_go_by_name() {
        let (mut coder, mut link, now, form) = ready();
        for _ in 0..5 {
            coder.code(now, &mut link, &[choice("Outcome", "Referral")], None);
        }
        let batch = sent(&mut link);
        coder.result(now, &mut link, batch[0].0, CodingsOutcome::StaleForm);
        let asked = std::iter::from_fn(|| link.poll_transmit())
            .any(|t| matches!(t, Transmit::Frame(ToRelay::FormAsk)));
        assert!(asked);
        // The new form has Outcome first.
        let mut fields = form.fields().to_vec();
        fields.rotate_right(1);
        let new = CodingForm::new(fields, 2).unwrap();
        for (i, field) in new.fields().iter().enumerate() {
            coder.form_field(now, &mut link, new.id(), 7, i as u8, Some(field.clone()));
        }
        let batch = sent(&mut link);
        assert_eq!(batch[0].1.len(), 5);
        assert!(
            batch[0]
                .1
                .iter()
                .all(|c| c.values[0] == 2 && c.values[1..].iter().all(|v| *v == 0))
        );
    }

    #[test]
    fn a_value_the_form_lacks_is_refused_and_nothing_is_kept() {
        let (mut coder, mut link, now, _) = ready();
        coder.code(now, &mut link, &[choice("Age band", "7")], None);
        coder.code(now, &mut link, &[choice("Mood", "good")], None);
        assert_eq!(coder.waiting(), 0);
        let errors = std::iter::from_fn(|| link.poll_event())
            .filter(|e| matches!(e, ChatEvent::Error { .. }))
            .count();
        assert_eq!(errors, 2);
    }
}
