//! Limits declared once, as a table: each row names a limit's field and
//! type, its key in the operator's config file, its default, its range and
//! its documentation (PROTOCOL.md §8; house rule 6: every limit has a
//! name, a documented value and a test).
//!
//! [`limits_table!`](crate::limits_table) turns a table into the struct
//! (documented fields), its `Default`, the list of rows (`TABLE`) that
//! documentation and tests read, the reading from config numbers with
//! unknown keys refused (`from_numbers`, which `Deserialize` uses), and
//! the range checks (`check_ranges`). The core's [`Limits`](super::limits::Limits)
//! is one such table; the relay's transport limits are another. A config
//! file holds whole numbers; [`LimitValue`] says how a field's type reads
//! one: a count as itself, a duration in seconds, an optional duration
//! with 0 for "off".

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

/// How a limit's type reads the whole number a config file holds.
pub trait LimitValue: Sized {
    /// `None` when the number does not fit the type.
    fn from_number(n: u64) -> Option<Self>;
    fn to_number(&self) -> u64;
}

macro_rules! integer_limit_value {
    ($($t:ty),+) => {
        $(impl LimitValue for $t {
            fn from_number(n: u64) -> Option<Self> {
                <$t>::try_from(n).ok()
            }
            fn to_number(&self) -> u64 {
                *self as u64
            }
        })+
    };
}
integer_limit_value!(u8, u16, u32, u64, usize);

/// Seconds.
impl LimitValue for Duration {
    fn from_number(n: u64) -> Option<Self> {
        Some(Duration::from_secs(n))
    }
    fn to_number(&self) -> u64 {
        self.as_secs()
    }
}

/// Seconds; 0 turns it off.
impl LimitValue for Option<Duration> {
    fn from_number(n: u64) -> Option<Self> {
        Some((n != 0).then(|| Duration::from_secs(n)))
    }
    fn to_number(&self) -> u64 {
        self.map_or(0, |d| d.as_secs())
    }
}

/// One row of a limits table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRow {
    /// The key in its config section, e.g. `max_queue`.
    pub key: &'static str,
    /// The section and key, e.g. `limits.max_queue`.
    pub path: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
    /// 0 is allowed outside the range, and turns the limit off.
    pub zero_is_off: bool,
    pub doc: &'static str,
}

impl LimitRow {
    /// Whether `n` is allowed.
    pub fn allows(&self, n: u64) -> bool {
        (self.zero_is_off && n == 0) || (self.min..=self.max).contains(&n)
    }

    /// The allowed values, as the docs write them: `1..=120`, or
    /// `0, or 60..=86400`.
    pub fn range_text(&self) -> String {
        match self.zero_is_off {
            true => format!("0, or {}..={}", self.min, self.max),
            false => format!("{}..={}", self.min, self.max),
        }
    }
}

/// Why a limit's value was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// A key no row of the table has.
    #[error("unknown key `{key}`; the keys are: {known}")]
    Unknown { key: String, known: String },
    /// A number outside the row's range, or one its type cannot hold.
    #[error("{value} is out of range {range}")]
    OutOfRange {
        path: &'static str,
        value: u64,
        range: String,
    },
    /// Two limits that must agree do not.
    #[error("`{path}`: {reason}")]
    Relation { path: &'static str, reason: String },
}

impl LimitError {
    /// The `section.key` the error is about, when it is about one.
    pub fn path(&self) -> Option<&'static str> {
        match self {
            LimitError::OutOfRange { path, .. } | LimitError::Relation { path, .. } => Some(path),
            LimitError::Unknown { .. } => None,
        }
    }
}

/// Reads a config section as whole numbers by key; an error names the key.
pub fn deserialize_numbers<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, u64>, D::Error> {
    struct Numbers;
    impl<'de> serde::de::Visitor<'de> for Numbers {
        type Value = BTreeMap<String, u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a table of whole numbers")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            use serde::de::Error;
            let mut numbers = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = map
                    .next_value::<u64>()
                    .map_err(|e| A::Error::custom(format!("`{key}`: {e}")))?;
                numbers.insert(key, value);
            }
            Ok(numbers)
        }
    }
    d.deserialize_map(Numbers)
}

/// Declares a limits struct from one table; see the module doc. Each row:
///
/// ```text
/// /// Doc lines.
/// field: Type = "config_key", default D, range MIN..=MAX;
/// field: Option<Duration> = "config_key", default D, range MIN..=MAX, or 0 off;
/// ```
#[macro_export]
macro_rules! limits_table {
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty = $key:literal, default $default:expr,
                    range $min:literal ..= $max:literal $(, or $zero:literal $off:ident)?;
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )+
        }

        impl $name {
            /// Every limit of this table, in order.
            pub const TABLE: &'static [$crate::core::limit_table::LimitRow] = &[
                $( $crate::core::limit_table::LimitRow {
                    key: $key,
                    path: concat!($section, ".", $key),
                    default: ($default) as u64,
                    min: $min,
                    max: $max,
                    zero_is_off: $crate::limits_table!(@off $($off)?),
                    doc: concat!($($doc, "\n"),*),
                }, )+
            ];

            /// The limits from config numbers by key; a key left out takes
            /// its default. An unknown key, or a number the field's type
            /// cannot hold, is refused; ranges are [`Self::check_ranges`]'s.
            pub fn from_numbers(
                numbers: &std::collections::BTreeMap<String, u64>,
            ) -> Result<Self, $crate::core::limit_table::LimitError> {
                use $crate::core::limit_table::{LimitError, LimitValue};
                if let Some(key) = numbers.keys().find(|k| !Self::TABLE.iter().any(|r| r.key == *k)) {
                    let known: Vec<&str> = Self::TABLE.iter().map(|r| r.key).collect();
                    return Err(LimitError::Unknown { key: key.clone(), known: known.join(", ") });
                }
                Ok($name {
                    $( $field: {
                        let n = numbers.get($key).copied().unwrap_or(($default) as u64);
                        <$ty as LimitValue>::from_number(n).ok_or_else(|| LimitError::OutOfRange {
                            path: concat!($section, ".", $key),
                            value: n,
                            range: format!("{}..={}", $min, $max),
                        })?
                    }, )+
                })
            }

            /// The limits as config numbers, in table order.
            pub fn to_numbers(&self) -> Vec<(&'static str, u64)> {
                use $crate::core::limit_table::LimitValue;
                vec![ $( ($key, self.$field.to_number()), )+ ]
            }

            /// Every value within its row's range.
            pub fn check_ranges(&self) -> Result<(), $crate::core::limit_table::LimitError> {
                for ((_, value), row) in self.to_numbers().into_iter().zip(Self::TABLE) {
                    if !row.allows(value) {
                        return Err($crate::core::limit_table::LimitError::OutOfRange {
                            path: row.path,
                            value,
                            range: row.range_text(),
                        });
                    }
                }
                Ok(())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                use $crate::core::limit_table::LimitValue;
                // Every default is in range and fits its type: a test of
                // each table checks it.
                $name {
                    $( $field: <$ty as LimitValue>::from_number(($default) as u64).unwrap_or_default(), )+
                }
            }
        }

        impl<'de> $crate::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let numbers = $crate::core::limit_table::deserialize_numbers(d)?;
                $name::from_numbers(&numbers).map_err($crate::__serde::de::Error::custom)
            }
        }
    };
    (@off off) => { true };
    (@off) => { false };
}
