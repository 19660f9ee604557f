//! Case coding: the short form a counsellor fills in after a chat, and the
//! codings that become the helpline's monthly counts (PROTOCOL.md §4.2,
//! FORM_ASK to CODINGS_RESULT; THREAT-MODEL.md §16).
//!
//! The operator's config gives the [`CodingForm`]: fields, each with the
//! values a counsellor may choose. A counsellor asks for it (FORM_ASK) and
//! gets it field by field (FORM_FIELD) under a [`FormId`], a hash of the
//! form, so that a form changed by a reload is noticed. A [`Coding`] is one
//! chat's answers: the calendar [`Month`] and, per field, the number of the
//! chosen value or 0 for "not coded". It names no chat, pairing, counsellor
//! or day. Codings travel in batches (CODINGS) that the counsellor's client
//! holds and shuffles; the relay checks a batch against the form and the
//! months it accepts, hands it to the shell's store as a whole, and answers
//! with a [`CodingsOutcome`].

use sha2::{Digest, Sha256};

use super::frame::{FrameError, Label};

/// Most fields a coding form has.
pub const MAX_FORM_FIELDS: usize = 12;
/// Most values one field offers.
pub const MAX_FIELD_VALUES: usize = 14;
/// Most codings in one CODINGS frame.
pub const MAX_CODINGS: usize = 64;

/// A calendar month (UTC), the finest time a coding carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    year: u16,
    month: u8,
}

impl Month {
    /// A month from 2000-01 to 9999-12.
    pub fn new(year: u16, month: u8) -> Option<Month> {
        ((2000..=9999).contains(&year) && (1..=12).contains(&month))
            .then_some(Month { year, month })
    }

    /// Reads `YYYY-MM`.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        Month::new(y.parse().ok()?, m.parse().ok()?)
    }

    /// The month (UTC) of a unix time in seconds.
    pub fn of_unix(unix: i64) -> Option<Month> {
        use chrono::Datelike;
        let date = chrono::DateTime::from_timestamp(unix, 0)?.date_naive();
        Month::new(u16::try_from(date.year()).ok()?, date.month() as u8)
    }

    pub fn year(self) -> u16 {
        self.year
    }
    pub fn month(self) -> u8 {
        self.month
    }

    /// Months since 2000-01, for arithmetic.
    fn index(self) -> i32 {
        i32::from(self.year - 2000) * 12 + i32::from(self.month) - 1
    }

    fn from_index(i: i32) -> Option<Month> {
        if i < 0 {
            return None;
        }
        Month::new(2000 + u16::try_from(i / 12).ok()?, (i % 12) as u8 + 1)
    }

    /// The month `n` months later (earlier for negative `n`).
    pub fn plus(self, n: i32) -> Option<Month> {
        Month::from_index(self.index() + n)
    }

    /// Months from `self` to `later` (negative if `later` is earlier).
    pub fn until(self, later: Month) -> i32 {
        later.index() - self.index()
    }

    /// Every month from `self` to `last`, both included.
    pub fn through(self, last: Month) -> impl Iterator<Item = Month> {
        (self.index()..=last.index()).filter_map(Month::from_index)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// One chat's coding: its month and, per field of the form in order, the
/// chosen value's number (1 = the first value) or 0 for not coded. Slots
/// past the form's fields are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Coding {
    pub month: Month,
    pub values: [u8; MAX_FORM_FIELDS],
}

/// The first 8 bytes of SHA-256 over the form's canonical bytes: a coding
/// made with another form (before a reload) is refused, not miscounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FormId(pub [u8; 8]);

/// A random batch id. The relay answers a batch it already stored with
/// STORED again instead of counting it twice (a client sends a batch again
/// when its answer was lost with the connection).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId(pub [u8; 16]);

impl std::fmt::Debug for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchId(<redacted>)")
    }
}

/// One field of the form: its name and the values to choose from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodingField {
    pub name: Label,
    pub values: Vec<Label>,
}

/// Why a form from the config cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("a coding form has 1 to {MAX_FORM_FIELDS} fields")]
    FieldCount,
    #[error("field {0:?} must have 1 to {MAX_FIELD_VALUES} values")]
    ValueCount(String),
    #[error("two fields are named {0:?}")]
    DuplicateField(String),
    #[error("field {0:?} offers the value {1:?} twice")]
    DuplicateValue(String, String),
}

/// The coding form and the months the relay accepts codings for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodingForm {
    fields: Vec<CodingField>,
    id: FormId,
    /// Codings for this many months before the current one are accepted
    /// too, so that a chat coded late still counts.
    pub months_back: u16,
}

impl CodingForm {
    pub fn new(fields: Vec<CodingField>, months_back: u16) -> Result<CodingForm, FormError> {
        if fields.is_empty() || fields.len() > MAX_FORM_FIELDS {
            return Err(FormError::FieldCount);
        }
        let mut hash = Sha256::new();
        hash.update(b"fluister coding form v1");
        for (i, field) in fields.iter().enumerate() {
            let name = field.name.as_str();
            if field.values.is_empty() || field.values.len() > MAX_FIELD_VALUES {
                return Err(FormError::ValueCount(name.into()));
            }
            if fields[..i].iter().any(|f| f.name == field.name) {
                return Err(FormError::DuplicateField(name.into()));
            }
            for (j, value) in field.values.iter().enumerate() {
                if field.values[..j].contains(value) {
                    return Err(FormError::DuplicateValue(name.into(), value.to_string()));
                }
            }
            hash.update([name.len() as u8]);
            hash.update(name.as_bytes());
            hash.update([field.values.len() as u8]);
            for value in &field.values {
                hash.update([value.as_str().len() as u8]);
                hash.update(value.as_str().as_bytes());
            }
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash.finalize()[..8]);
        Ok(CodingForm {
            fields,
            id: FormId(id),
            months_back,
        })
    }

    /// The form of the issue that asked for it: who made contact, age band,
    /// type, situation, perpetrators, language and outcome.
    pub fn default_fields() -> Vec<CodingField> {
        // Fixed labels, all valid (the tests see seven fields).
        let field = |name: &str, values: &[&str]| {
            Some(CodingField {
                name: Label::new(name).ok()?,
                values: values
                    .iter()
                    .map(|v| Label::new(*v).ok())
                    .collect::<Option<_>>()?,
            })
        };
        [
            field(
                "Contact made by",
                &[
                    "The young person",
                    "Someone on their behalf",
                    "A professional",
                ],
            ),
            field(
                "Age band",
                &[
                    "12 or younger",
                    "13–15",
                    "16–17",
                    "18–23",
                    "24 or older",
                    "Unknown",
                ],
            ),
            field(
                "Type",
                &[
                    "Sexual exploitation",
                    "Criminal exploitation (drugs)",
                    "Labour exploitation",
                    "Sextortion (threats with images)",
                    "Sexual violence",
                    "Home and family",
                    "Other",
                ],
            ),
            field("Situation", &["Ongoing", "Past", "Unknown"]),
            field("More than one perpetrator", &["Yes", "No", "Unknown"]),
            field("Language", &["Dutch", "English", "Other"]),
            field("Outcome", &["Advice", "Referral", "Follow-up planned"]),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    pub fn fields(&self) -> &[CodingField] {
        &self.fields
    }

    pub fn id(&self) -> FormId {
        self.id
    }

    /// Checks a coding's values against the form: a value past its field's
    /// list, or one in a slot the form does not have, is a malformed frame
    /// (the client had this form's id, so it knew better).
    pub fn check(&self, coding: &Coding) -> Result<(), FrameError> {
        for (i, value) in coding.values.iter().enumerate() {
            let allowed = self.fields.get(i).map_or(0, |f| f.values.len());
            if usize::from(*value) > allowed {
                return Err(FrameError::BadField("coding value"));
            }
        }
        Ok(())
    }

    /// Whether a coding for `month` is accepted at `now`: from
    /// `months_back` months before the current month (UTC) to one month
    /// after it (a counsellor's clock in another time zone may be past
    /// midnight of the first already).
    pub fn accepts(&self, month: Month, unix_now: i64) -> bool {
        let Some(current) = Month::of_unix(unix_now) else {
            return false;
        };
        let ahead = current.until(month);
        (-i32::from(self.months_back)..=1).contains(&ahead)
    }

    /// The chosen `(field, value)` names of a checked coding.
    pub fn named<'a>(&'a self, coding: &Coding) -> Vec<(&'a Label, Option<&'a Label>)> {
        self.fields
            .iter()
            .zip(coding.values)
            .map(|(field, v)| {
                let value = usize::from(v)
                    .checked_sub(1)
                    .and_then(|i| field.values.get(i));
                (&field.name, value)
            })
            .collect()
    }
}

/// How the relay answered a batch (CODINGS_RESULT).
pub use super::frame::CodingsOutcome;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_print_and_count() {
        let m = Month::parse("2020-01").unwrap();
        assert_eq!(m.to_string(), "2020-01");
        assert_eq!(m.plus(13).unwrap().to_string(), "2021-02");
        assert_eq!(m.plus(-1).unwrap().to_string(), "2019-12");
        assert_eq!(m.until(Month::parse("2020-04").unwrap()), 3);
        assert_eq!(m.through(m.plus(3).unwrap()).count(), 4);
        for bad in [
            "2020-1", "2020-13", "1999-12", "20200-01", "2020-00", "2020-+1", "",
        ] {
            assert_eq!(Month::parse(bad), None, "{bad}");
        }
        // 2020-03-01T00:00:00Z and one second before.
        assert_eq!(
            Month::of_unix(1_583_020_800).unwrap().to_string(),
            "2020-03"
        );
        assert_eq!(
            Month::of_unix(1_583_020_799).unwrap().to_string(),
            "2020-02"
        );
    }

    #[test]
    fn the_default_form_fits_the_frames_and_its_id_follows_its_contents() {
        let form = CodingForm::new(CodingForm::default_fields(), 2).unwrap();
        assert_eq!(form.fields().len(), 7);
        let mut other = CodingForm::default_fields();
        other[6].values.pop();
        assert_ne!(CodingForm::new(other, 2).unwrap().id(), form.id());
        assert_eq!(
            CodingForm::new(CodingForm::default_fields(), 5)
                .unwrap()
                .id(),
            form.id(),
            "the window of months is not part of what a client codes with"
        );
    }

    #[test]
    fn bad_forms_are_refused_with_the_field_named() {
        let mut twice = CodingForm::default_fields();
        twice.push(twice[0].clone());
        assert_eq!(
            CodingForm::new(twice, 0),
            Err(FormError::DuplicateField("Contact made by".into()))
        );
        let mut empty = CodingForm::default_fields();
        empty[1].values.clear();
        assert_eq!(
            CodingForm::new(empty, 0),
            Err(FormError::ValueCount("Age band".into()))
        );
        assert_eq!(CodingForm::new(vec![], 0), Err(FormError::FieldCount));
    }

    #[test]
    fn codings_are_checked_against_the_form_and_the_months() {
        let form = CodingForm::new(CodingForm::default_fields(), 2).unwrap();
        let march = Month::parse("2020-03").unwrap();
        let mut coding = Coding {
            month: march,
            values: [0; MAX_FORM_FIELDS],
        };
        assert!(form.check(&coding).is_ok(), "nothing coded is a coding too");
        coding.values[1] = 6;
        assert!(form.check(&coding).is_ok());
        coding.values[1] = 7;
        assert!(form.check(&coding).is_err(), "past the age bands");
        coding.values[1] = 2;
        coding.values[7] = 1;
        assert!(
            form.check(&coding).is_err(),
            "a field the form does not have"
        );

        let mid_march = 1_584_230_400; // 2020-03-15
        assert!(form.accepts(march, mid_march));
        assert!(form.accepts(Month::parse("2020-01").unwrap(), mid_march));
        assert!(!form.accepts(Month::parse("2019-12").unwrap(), mid_march));
        assert!(form.accepts(Month::parse("2020-04").unwrap(), mid_march));
        assert!(!form.accepts(Month::parse("2020-05").unwrap(), mid_march));

        coding.values = [0; MAX_FORM_FIELDS];
        coding.values[2] = 2;
        let named = form.named(&coding);
        assert_eq!(
            named[2].1.unwrap().as_str(),
            "Criminal exploitation (drugs)"
        );
        assert_eq!(named[0].1, None);
    }
}
