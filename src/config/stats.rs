//! `[stats]`: case statistics. Counsellors code each chat with a short
//! form; the relay adds each batch of codings to monthly counters in one
//! file, and `fluister stats report` draws the report with small numbers
//! hidden (THREAT-MODEL.md §16).

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::ConfigError;
use crate::core::coding::{CodingField, CodingForm};
use crate::core::frame::Label;

/// `[stats]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// The SQLite file with the monthly counters, the only data Fluister
    /// writes. Created if missing. In a cluster exactly one relay, the
    /// designated keeper, names it; the others send codings to it through
    /// NATS. Required outside a cluster.
    pub store: Option<PathBuf>,
    /// Cells of the report below `k` are shown as "<k", and more cells are
    /// hidden so that none of those can be worked out. 2..=1000, default 10.
    #[serde(default = "default_k")]
    pub k: u64,
    /// Laplace noise on each published count, with this epsilon per count
    /// (smaller: more noise). 0, the default, is off.
    #[serde(default)]
    pub noise_epsilon: f64,
    /// Codings for this many months before the current one are accepted
    /// too (a chat coded late). 0..=24, default 2.
    #[serde(default = "default_months_back")]
    pub months_back: u16,
    /// The form: fields and their values, in order. Default: contact made
    /// by, age band, type, situation, more than one perpetrator, language,
    /// outcome.
    pub fields: Option<Vec<FieldConfig>>,
    /// Cross-tables, each `[row field, column field]` by name. Default
    /// `[["Age band", "Type"]]` with the default form, none otherwise.
    pub cross: Option<Vec<[String; 2]>>,
}

/// `[[stats.fields]]`: one field of the form.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// What the counsellor reads; also its name in the store and the report.
    pub name: String,
    /// The values to choose from, 1 to 14.
    pub values: Vec<String>,
}

fn default_k() -> u64 {
    10
}

fn default_months_back() -> u16 {
    2
}

/// What `[stats]` makes: the form, its cross-tables, and how to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub store: Option<PathBuf>,
    pub form: Arc<CodingForm>,
    /// Pairs of field positions in the form.
    pub cross: Vec<(usize, usize)>,
    pub k: u64,
    pub noise_epsilon: Option<f64>,
}

impl StatsConfig {
    /// Checks `[stats]` and builds the form.
    pub fn stats(&self) -> Result<Stats, ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        if !(2..=1000).contains(&self.k) {
            return Err(invalid(
                "stats.k",
                format!("{} is out of range 2..=1000", self.k),
            ));
        }
        if !(self.noise_epsilon.is_finite() && (0.0..=100.0).contains(&self.noise_epsilon)) {
            return Err(invalid(
                "stats.noise_epsilon",
                "0 (off) or a positive number up to 100".into(),
            ));
        }
        if self.months_back > 24 {
            return Err(invalid(
                "stats.months_back",
                format!("{} is out of range 0..=24", self.months_back),
            ));
        }
        let label =
            |key, text: &str| Label::new(text).map_err(|e| invalid(key, format!("{text:?}: {e}")));
        let fields = match &self.fields {
            None => CodingForm::default_fields(),
            Some(list) => list
                .iter()
                .map(|f| {
                    Ok(CodingField {
                        name: label("stats.fields.name", &f.name)?,
                        values: f
                            .values
                            .iter()
                            .map(|v| label("stats.fields.values", v))
                            .collect::<Result<_, ConfigError>>()?,
                    })
                })
                .collect::<Result<_, ConfigError>>()?,
        };
        let form = CodingForm::new(fields, self.months_back)
            .map_err(|e| invalid("stats.fields", e.to_string()))?;
        let position = |name: &str| {
            form.fields()
                .iter()
                .position(|f| f.name == *name)
                .ok_or_else(|| invalid("stats.cross", format!("no field is named {name:?}")))
        };
        let cross = match &self.cross {
            Some(pairs) => pairs
                .iter()
                .map(|[row, column]| {
                    let pair = (position(row)?, position(column)?);
                    if pair.0 == pair.1 {
                        return Err(invalid(
                            "stats.cross",
                            format!("{row:?} against itself says nothing"),
                        ));
                    }
                    Ok(pair)
                })
                .collect::<Result<_, ConfigError>>()?,
            None if self.fields.is_none() => vec![(1, 2)],
            None => Vec::new(),
        };
        Ok(Stats {
            store: self.store.clone(),
            form: Arc::new(form),
            cross,
            k: self.k,
            noise_epsilon: (self.noise_epsilon > 0.0).then_some(self.noise_epsilon),
        })
    }
}
