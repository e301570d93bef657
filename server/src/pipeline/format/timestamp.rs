//! `timestamptz` values as text: RFC 3339 in UTC with exactly six fractional digits and `Z`
//! (`2024-05-01T12:00:00.123456Z`), written straight into the output without chrono's
//! formatter (it is in every row of every text format).

use bytes::BufMut;

use super::row::{PG_EPOCH_UNIX_MICROS, PgTimestamp};

/// RFC 3339 in UTC with six fractional digits and `Z` (chrono's
/// `to_rfc3339_opts(SecondsFormat::Micros, true)`): four-digit years, or a sign and at least
/// four digits outside 0–9999, as ISO 8601's expanded form has it. PostgreSQL's `infinity`
/// and `-infinity` are written as PostgreSQL writes them.
pub fn write_timestamp(out: &mut impl BufMut, ts: PgTimestamp) {
    match ts.0 {
        i64::MAX => return out.put_slice(b"infinity"),
        i64::MIN => return out.put_slice(b"-infinity"),
        _ => {}
    }
    let micros = i128::from(ts.0) + i128::from(PG_EPOCH_UNIX_MICROS);
    const DAY: i128 = 86_400_000_000;
    let (days, in_day) = (micros.div_euclid(DAY), micros.rem_euclid(DAY));
    let (year, month, day) = civil_from_days(days);
    let (seconds, fraction) = (in_day / 1_000_000, in_day % 1_000_000);
    if (0..=9999).contains(&year) {
        put_digits(out, year as u64, 4);
    } else {
        out.put_u8(if year < 0 { b'-' } else { b'+' });
        let magnitude = year.unsigned_abs() as u64;
        let width = magnitude.checked_ilog10().unwrap_or(0) as usize + 1;
        put_digits(out, magnitude, width.max(4));
    }
    out.put_u8(b'-');
    put_digits(out, month as u64, 2);
    out.put_u8(b'-');
    put_digits(out, day as u64, 2);
    out.put_u8(b'T');
    put_digits(out, (seconds / 3600) as u64, 2);
    out.put_u8(b':');
    put_digits(out, (seconds / 60 % 60) as u64, 2);
    out.put_u8(b':');
    put_digits(out, (seconds % 60) as u64, 2);
    out.put_u8(b'.');
    put_digits(out, fraction as u64, 6);
    out.put_u8(b'Z');
}

/// `n` in exactly `width` decimal digits (zero-padded; `n` must fit).
fn put_digits(out: &mut impl BufMut, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.put_slice(&digits[..width]);
}

/// Year, month and day of the proleptic Gregorian calendar for days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, which counts in 400-year eras).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    (year, month, day)
}
