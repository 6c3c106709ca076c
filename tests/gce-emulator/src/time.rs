//! Timestamps in GCE's RFC 3339 style (`2026-11-29T15:04:05.123-07:00`), on `jiff`.

use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;

/// The fixed offset the emulator writes, like GCE's Pacific-time timestamps.
const OFFSET_HOURS: i8 = -7;

/// `at` as `YYYY-MM-DDTHH:MM:SS.mmm-07:00`.
pub(crate) fn format(at: Timestamp) -> String {
    at.to_zoned(TimeZone::fixed(Offset::constant(OFFSET_HOURS)))
        .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string()
}

/// `now` as [`format`] writes it.
pub(crate) fn now() -> String {
    format(Timestamp::now())
}

/// Reads an RFC 3339 timestamp (`Z` or a numeric offset, any fraction).
pub(crate) fn parse(text: &str) -> Option<Timestamp> {
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_other_offsets() {
        let t = Timestamp::from_millisecond(1_795_000_000_123).unwrap();
        let text = format(t);
        assert_eq!(text, "2026-11-18T04:06:40.123-07:00");
        assert_eq!(parse(&text), Some(t));
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(Timestamp::UNIX_EPOCH));
        assert_eq!(
            parse("1970-01-01T01:00:00+01:00"),
            Some(Timestamp::UNIX_EPOCH)
        );
        assert_eq!(
            parse("2024-02-29T12:00:00.5Z"),
            Some(Timestamp::from_millisecond(1_709_208_000_500).unwrap())
        );
        assert_eq!(parse("yesterday"), None);
    }
}
