//! The sandbox's wall clock: when a fake executed or issued something, RFC 3339 in UTC, as
//! the providers stamp their answers (`2020-09-11T15:25:59.411Z` in the BCB API Pix).

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Now, RFC 3339 UTC (`2026-12-05T12:00:00.123456789Z`).
pub(crate) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        // A UTC time with a four-digit year always formats.
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_parse_back_as_utc() {
        let stamp = now_rfc3339();
        let parsed = OffsetDateTime::parse(&stamp, &Rfc3339).expect(&stamp);
        assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{stamp}");
    }
}
