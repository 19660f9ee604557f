//! Opening hours: when young people can be queued (PROTOCOL.md §7.3).
//!
//! Hours are time ranges per weekday in a named time zone, with dated
//! exceptions (holidays, special days) that replace a weekday's ranges. The
//! core asks [`OpeningHours::is_open`] with the wall-clock time it was handed
//! and, when closed, [`OpeningHours::next_open`] for what to tell the client.
//! No clock is read here.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;
use thiserror::Error;

/// How far ahead [`OpeningHours::next_open`] looks.
pub const LOOKAHEAD_DAYS: u32 = 31;

/// Opening hours that cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HoursError {
    /// Not an IANA time zone name.
    #[error("unknown time zone {0:?} (expected a name like \"Europe/Amsterdam\")")]
    TimeZone(String),
    /// A range is not "HH:MM-HH:MM" with start before end.
    #[error(
        "bad time range {0:?} (expected \"HH:MM-HH:MM\", start before end; \"24:00\" may end a day)"
    )]
    Range(String),
    /// An exception date is not YYYY-MM-DD.
    #[error("bad date {0:?} (expected YYYY-MM-DD)")]
    Date(String),
}

/// One open period within a day, in minutes after local midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    start: u32,
    end: u32,
}

impl Range {
    /// Parses "HH:MM-HH:MM"; the end may be "24:00".
    pub fn parse(s: &str) -> Result<Range, HoursError> {
        let bad = || HoursError::Range(s.to_owned());
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start >= end {
            return Err(bad());
        }
        Ok(Range { start, end })
    }
}

/// The service's opening hours. `always()` when none are configured.
#[derive(Debug, Clone, PartialEq)]
pub struct OpeningHours {
    schedule: Option<Schedule>,
}

#[derive(Debug, Clone, PartialEq)]
struct Schedule {
    tz: Tz,
    /// Monday first.
    week: [Vec<Range>; 7],
    exceptions: BTreeMap<NaiveDate, Vec<Range>>,
}

impl OpeningHours {
    /// Open all the time.
    pub fn always() -> Self {
        OpeningHours { schedule: None }
    }

    /// `week` is Monday first; an empty day is closed. `exceptions` replace
    /// the weekday's ranges on their date.
    pub fn new(
        time_zone: &str,
        week: [Vec<Range>; 7],
        exceptions: BTreeMap<NaiveDate, Vec<Range>>,
    ) -> Result<Self, HoursError> {
        let tz: Tz = time_zone
            .parse()
            .map_err(|_| HoursError::TimeZone(time_zone.to_owned()))?;
        Ok(OpeningHours {
            schedule: Some(Schedule {
                tz,
                week,
                exceptions,
            }),
        })
    }

    /// Parses an exception date.
    pub fn parse_date(s: &str) -> Result<NaiveDate, HoursError> {
        NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| HoursError::Date(s.to_owned()))
    }

    fn ranges(s: &Schedule, date: NaiveDate) -> &[Range] {
        s.exceptions
            .get(&date)
            .unwrap_or(&s.week[date.weekday().num_days_from_monday() as usize])
    }

    /// Whether the service is open at `unix` seconds.
    pub fn is_open(&self, unix: i64) -> bool {
        let Some(s) = &self.schedule else { return true };
        let Some(local) = s.tz.timestamp_opt(unix, 0).single() else {
            return false;
        };
        let minute = local.hour() * 60 + local.minute();
        Self::ranges(s, local.date_naive())
            .iter()
            .any(|r| r.start <= minute && minute < r.end)
    }

    /// The next moment (unix seconds) at or after `unix` when the service
    /// opens, within [`LOOKAHEAD_DAYS`]; `None` if it never does.
    pub fn next_open(&self, unix: i64) -> Option<i64> {
        let Some(s) = &self.schedule else {
            return Some(unix);
        };
        if self.is_open(unix) {
            return Some(unix);
        }
        let local = s.tz.timestamp_opt(unix, 0).single()?;
        let today = local.date_naive();
        for offset in 0..=LOOKAHEAD_DAYS {
            let date = today + chrono::Days::new(u64::from(offset));
            for r in Self::ranges(s, date) {
                let (h, m) = (r.start / 60, r.start % 60);
                let naive = date.and_time(NaiveTime::from_hms_opt(h, m, 0)?);
                // A start inside a daylight-saving gap opens at the first valid minute after.
                let at = (0..=120).find_map(|skip| {
                    s.tz.from_local_datetime(&(naive + chrono::Duration::minutes(skip)))
                        .earliest()
                })?;
                if at.timestamp() > unix {
                    return Some(at.timestamp());
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weekdays(r: &str) -> [Vec<Range>; 7] {
        let day = vec![Range::parse(r).unwrap()];
        [
            day.clone(),
            day.clone(),
            day.clone(),
            day.clone(),
            day,
            vec![],
            vec![],
        ]
    }

    fn unix(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .unwrap()
            .timestamp()
    }

    #[test]
    fn weekday_hours_in_amsterdam_time() {
        let hours = OpeningHours::new("Europe/Amsterdam", weekdays("09:00-21:00"), BTreeMap::new())
            .unwrap();
        let ams = chrono_tz::Europe::Amsterdam;
        // Tuesday 2026-12-01.
        assert!(!hours.is_open(unix(ams, 2026, 12, 1, 8, 59)));
        assert!(hours.is_open(unix(ams, 2026, 12, 1, 9, 0)));
        assert!(hours.is_open(unix(ams, 2026, 12, 1, 20, 59)));
        assert!(!hours.is_open(unix(ams, 2026, 12, 1, 21, 0)));
        assert_eq!(
            hours.next_open(unix(ams, 2026, 12, 1, 22, 0)),
            Some(unix(ams, 2026, 12, 2, 9, 0))
        );
        // Friday night → Monday morning.
        assert_eq!(
            hours.next_open(unix(ams, 2026, 12, 4, 21, 30)),
            Some(unix(ams, 2026, 12, 7, 9, 0))
        );
    }

    #[test]
    fn a_holiday_exception_closes_a_weekday_and_a_special_day_opens_a_sunday() {
        let mut exceptions = BTreeMap::new();
        exceptions.insert(OpeningHours::parse_date("2026-12-25").unwrap(), vec![]);
        exceptions.insert(
            OpeningHours::parse_date("2026-12-27").unwrap(),
            vec![Range::parse("12:00-16:00").unwrap()],
        );
        let hours =
            OpeningHours::new("Europe/Amsterdam", weekdays("09:00-21:00"), exceptions).unwrap();
        let ams = chrono_tz::Europe::Amsterdam;
        assert!(
            !hours.is_open(unix(ams, 2026, 12, 25, 12, 0)),
            "Christmas (a Friday) is closed"
        );
        assert_eq!(
            hours.next_open(unix(ams, 2026, 12, 25, 12, 0)),
            Some(unix(ams, 2026, 12, 27, 12, 0))
        );
        assert!(
            hours.is_open(unix(ams, 2026, 12, 27, 13, 0)),
            "special Sunday"
        );
    }

    #[test]
    fn bad_hours_are_refused() {
        assert!(Range::parse("21:00-09:00").is_err());
        assert!(Range::parse("9-17").is_err());
        assert!(Range::parse("09:00-24:00").is_ok());
        assert!(OpeningHours::new("Mars/Base", weekdays("09:00-17:00"), BTreeMap::new()).is_err());
        assert!(OpeningHours::parse_date("25-12-2026").is_err());
        let closed = OpeningHours::new("UTC", Default::default(), BTreeMap::new()).unwrap();
        assert_eq!(closed.next_open(0), None);
        assert!(OpeningHours::always().is_open(0));
    }
}
