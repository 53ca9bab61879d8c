//! Wall-clock timestamps as the product writes them: RFC 3339 in UTC.
//!
//! Two precisions, kept apart on purpose: records, events and dead-letter headers carry whole
//! seconds (`now_rfc3339`), receipts carry milliseconds (`now_rfc3339_millis`) because their
//! order within a second is part of what an auditor reads.

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Now, RFC 3339 UTC (`2026-12-05T12:00:00Z`; sub-second digits only when the clock has them).
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Now, RFC 3339 UTC with exactly three sub-second digits (`2026-12-05T12:00:00.123Z`).
pub fn now_rfc3339_millis() -> String {
    OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        // A UTC time with a four-digit year always formats.
        .expect("UTC time formats")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_precisions_parse_back_as_rfc3339_utc() {
        for stamp in [now_rfc3339(), now_rfc3339_millis()] {
            let parsed = OffsetDateTime::parse(&stamp, &Rfc3339).expect(&stamp);
            assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{stamp}");
        }
        let millis = now_rfc3339_millis();
        let fraction = millis.rsplit_once('.').expect("has a fraction").1;
        assert_eq!(fraction.len(), 4, "three digits and Z: {millis}");
    }
}
