//! Case statistics without case records (THREAT-MODEL.md §16).
//!
//! ```text
//! counsellor ─CODINGS→ core (checks the form, the months) ─StoreCodings→ keeper ─→ store (SQLite)
//!                                                                                     │
//! fluister stats report / admin /stats/report ←─ render ←─ report (protect, noise) ←─┘
//! ```
//!
//! [`keeper`] is the one writer: a thread that adds each batch to the
//! [`store`] in one transaction and answers the core. [`report`] turns the
//! counts of a range of months into tables, [`protect`] decides which
//! counts may be shown, and [`render`] writes text, CSV, JSON, SVG or HTML.

pub mod keeper;
pub mod protect;
pub mod render;
pub mod report;
pub mod store;

pub use render::{Format, render};
pub use report::Report;
pub use store::{Store, StoreError};
