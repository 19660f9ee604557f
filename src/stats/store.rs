//! The counters on disk: one SQLite file with three tables of monthly
//! counts, and nothing else (THREAT-MODEL.md §16).
//!
//! `months(month, codings)`: chats coded per month. `field_counts(month,
//! field, value, n)`: per month, how many codings chose each value (not
//! coded is the month's codings minus the rest). `cross_counts(month,
//! row_field, row_value, column_field, column_value, n)`: per month, the
//! configured cross-tables' cells where both fields were coded. Months are
//! `YYYY-MM`; fields and values are the names in the config's form. No
//! row has an id, a day, a time, a counsellor or a chat.
//!
//! [`Store::add`] adds one batch in one transaction: after a crash the
//! counters hold the whole batch or none of it (SQLite's rollback journal,
//! `synchronous = FULL`). `secure_delete` overwrites freed pages, so the
//! file holds no old versions of a row either.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use crate::core::coding::{Coding, CodingForm, Month};

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused: the file is missing, locked, not a Fluister store
    /// or the disk is full.
    #[error("statistics store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// The writer's thread could not be started.
    #[error("statistics store {path}: cannot start its writer: {source}")]
    Thread {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A month in the file that is not `YYYY-MM`: not a file this wrote.
    #[error("statistics store {path}: a month {0:?} that is not YYYY-MM", .month)]
    BadMonth { path: String, month: String },
}

/// Counts read back for a range of months.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Codings per month, for every month of the range (0 if none).
    pub months: Vec<(Month, u64)>,
    /// `(month, field, value) → n`.
    pub fields: std::collections::BTreeMap<(Month, String, String), u64>,
    /// `(month, row field, row value, column field, column value) → n`.
    pub cross: std::collections::BTreeMap<(Month, String, String, String, String), u64>,
}

/// An open store.
pub struct Store {
    db: Connection,
    path: String,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS months (
        month TEXT NOT NULL PRIMARY KEY,
        codings INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS field_counts (
        month TEXT NOT NULL,
        field TEXT NOT NULL,
        value TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (month, field, value)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS cross_counts (
        month TEXT NOT NULL,
        row_field TEXT NOT NULL,
        row_value TEXT NOT NULL,
        column_field TEXT NOT NULL,
        column_value TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (month, row_field, row_value, column_field, column_value)
    ) WITHOUT ROWID;
";

impl Store {
    /// Opens the store for writing, creating the file and its tables.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let fail = |source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        };
        let db = Connection::open(path).map_err(fail)?;
        db.execute_batch(
            "PRAGMA journal_mode = DELETE;
             PRAGMA synchronous = FULL;
             PRAGMA secure_delete = ON;",
        )
        .map_err(fail)?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        db.execute_batch(SCHEMA).map_err(fail)?;
        Ok(Store { db, path: shown })
    }

    /// Opens an existing store to read, for reports.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let db = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|db| {
            db.busy_timeout(std::time::Duration::from_secs(5))?;
            // Fails here, not later, for a file that is not a store.
            db.query_row("SELECT count(*) FROM months", [], |_| Ok(()))?;
            Ok(db)
        })
        .map_err(|source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        })?;
        Ok(Store { db, path: shown })
    }

    fn fail(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Adds a batch of codings, checked against `form`, to the counters:
    /// all of it in one transaction, or nothing.
    pub fn add(
        &mut self,
        form: &CodingForm,
        cross: &[(usize, usize)],
        codings: &[Coding],
    ) -> Result<(), StoreError> {
        self.add_slowly(form, cross, codings, std::time::Duration::ZERO)
    }

    /// [`Store::add`], pausing `pause` after each coding inside the
    /// transaction (for the test that kills a relay mid-batch).
    pub fn add_slowly(
        &mut self,
        form: &CodingForm,
        cross: &[(usize, usize)],
        codings: &[Coding],
        pause: std::time::Duration,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let fail = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.db.transaction().map_err(fail)?;
        {
            let mut month_row = tx
                .prepare_cached(
                    "INSERT INTO months (month, codings) VALUES (?1, 1)
                     ON CONFLICT (month) DO UPDATE SET codings = codings + 1",
                )
                .map_err(fail)?;
            let mut field_row = tx
                .prepare_cached(
                    "INSERT INTO field_counts (month, field, value, n) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (month, field, value) DO UPDATE SET n = n + 1",
                )
                .map_err(fail)?;
            let mut cross_row = tx
                .prepare_cached(
                    "INSERT INTO cross_counts
                        (month, row_field, row_value, column_field, column_value, n)
                     VALUES (?1, ?2, ?3, ?4, ?5, 1)
                     ON CONFLICT (month, row_field, row_value, column_field, column_value)
                     DO UPDATE SET n = n + 1",
                )
                .map_err(fail)?;
            for coding in codings {
                let month = coding.month.to_string();
                month_row.execute(params![month]).map_err(fail)?;
                let named = form.named(coding);
                for (field, value) in &named {
                    if let Some(value) = value {
                        field_row
                            .execute(params![month, field.as_str(), value.as_str()])
                            .map_err(fail)?;
                    }
                }
                for &(r, c) in cross {
                    if let (Some((rf, Some(rv))), Some((cf, Some(cv)))) =
                        (named.get(r), named.get(c))
                    {
                        cross_row
                            .execute(params![
                                month,
                                rf.as_str(),
                                rv.as_str(),
                                cf.as_str(),
                                cv.as_str()
                            ])
                            .map_err(fail)?;
                    }
                }
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
        }
        tx.commit().map_err(fail)
    }

    /// The counts of the months from `first` to `last`.
    pub fn counts(&self, first: Month, last: Month) -> Result<Counts, StoreError> {
        let mut per_month = std::collections::BTreeMap::new();
        for (month, _, n) in self.rows("SELECT month, codings FROM months", 0, first, last)? {
            per_month.insert(month, n);
        }
        let mut counts = Counts {
            months: first
                .through(last)
                .map(|m| (m, per_month.get(&m).copied().unwrap_or(0)))
                .collect(),
            ..Counts::default()
        };
        let fields = "SELECT month, field, value, n FROM field_counts";
        for (month, names, n) in self.rows(fields, 2, first, last)? {
            if let Ok([f, v]) = <[String; 2]>::try_from(names) {
                counts.fields.insert((month, f, v), n);
            }
        }
        let cross = "SELECT month, row_field, row_value, column_field, column_value, n
                     FROM cross_counts";
        for (month, names, n) in self.rows(cross, 4, first, last)? {
            if let Ok([rf, rv, cf, cv]) = <[String; 4]>::try_from(names) {
                counts.cross.insert((month, rf, rv, cf, cv), n);
            }
        }
        Ok(counts)
    }

    /// The rows of `select` (month, `names` text columns, a count) for the
    /// months from `first` to `last`.
    fn rows(
        &self,
        select: &str,
        names: usize,
        first: Month,
        last: Month,
    ) -> Result<Vec<(Month, Vec<String>, u64)>, StoreError> {
        let sql = format!("{select} WHERE month BETWEEN ?1 AND ?2");
        let mut q = self.db.prepare(&sql).map_err(|e| self.fail(e))?;
        let rows = q
            .query_map(params![first.to_string(), last.to_string()], |r| {
                let text: Vec<String> = (1..=names).map(|i| r.get(i)).collect::<Result<_, _>>()?;
                Ok((r.get::<_, String>(0)?, text, r.get::<_, i64>(names + 1)?))
            })
            .map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (month, text, n) = row.map_err(|e| self.fail(e))?;
            let month = Month::parse(&month).ok_or_else(|| StoreError::BadMonth {
                path: self.path.clone(),
                month,
            })?;
            out.push((month, text, n.max(0) as u64));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::coding::MAX_FORM_FIELDS;

    fn coding(month: &str, values: &[u8]) -> Coding {
        let mut v = [0; MAX_FORM_FIELDS];
        v[..values.len()].copy_from_slice(values);
        Coding {
            month: Month::parse(month).unwrap(),
            values: v,
        }
    }

    #[test]
    fn batches_add_up_per_month_field_value_and_cross_cell() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.sqlite3");
        let form = CodingForm::new(CodingForm::default_fields(), 2).unwrap();
        let mut store = Store::open(&path).unwrap();
        store
            .add(
                &form,
                &[(1, 2)],
                &[coding("2020-01", &[1, 2, 2]), coding("2020-01", &[1, 2])],
            )
            .unwrap();
        store
            .add(&form, &[(1, 2)], &[coding("2020-02", &[0, 2, 2])])
            .unwrap();
        drop(store);
        let store = Store::open_read_only(&path).unwrap();
        let jan = Month::parse("2020-01").unwrap();
        let counts = store.counts(jan, jan.plus(2).unwrap()).unwrap();
        assert_eq!(
            counts.months,
            [
                (jan, 2),
                (jan.plus(1).unwrap(), 1),
                (jan.plus(2).unwrap(), 0)
            ]
        );
        assert_eq!(
            counts.fields[&(jan, "Age band".into(), "13–15".into())],
            2,
            "both January codings"
        );
        assert_eq!(
            counts.fields.get(&(jan, "Type".into(), "Other".into())),
            None
        );
        assert_eq!(
            counts.cross[&(
                jan,
                "Age band".into(),
                "13–15".into(),
                "Type".into(),
                "Criminal exploitation (drugs)".into()
            )],
            1,
            "only the coding with both fields counts in the cross-table"
        );
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "not sqlite at all, just text that is long enough").unwrap();
        let err = Store::open_read_only(&path).err().unwrap().to_string();
        assert!(err.contains("notes.txt"), "{err}");
        assert!(Store::open_read_only(&dir.path().join("missing")).is_err());
    }
}
