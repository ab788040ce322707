//! The report for machines: the [`Report`] value serialised by serde, as one document
//! (`--json`) or as JSON lines (`--jsonl`: interval records, then the summary). Field names
//! are a promise: they are documented in the README, described by `schema/report.schema.json`
//! and checked against it by the tests; renaming or removing one bumps
//! [`super::SCHEMA_VERSION`].

use serde::Serialize;

use super::Report;

/// The whole report as one pretty-printed document.
pub fn document(report: &Report) -> String {
    let mut text = serde_json::to_string_pretty(report).expect("a report always serialises");
    text.push('\n');
    text
}

/// One compact JSON line (an interval record).
pub fn line<T: Serialize>(record: &T) -> String {
    let mut text = serde_json::to_string(record).expect("a record always serialises");
    text.push('\n');
    text
}

/// The last JSON line of a continuous run: the whole report, tagged `"type": "summary"`.
pub fn summary_line(report: &Report) -> String {
    #[derive(Serialize)]
    struct Summary<'a> {
        #[serde(rename = "type")]
        record: &'static str,
        #[serde(flatten)]
        report: &'a Report,
    }
    line(&Summary { record: "summary", report })
}
