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
}

impl Default for Coder {
    fn default() -> Self {
        Coder {
            form: Form::Unknown,
            held: Vec::new(),
            in_flight: None,
            retry_at: None,
            resend_due: false,
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
        if self.in_flight.is_some() || !link.is_open() {
            return;
        }
        if self.retry_at.is_some_and(|at| now < at) && !force {
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
