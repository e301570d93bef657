//! Formula neutralisation: which cells a spreadsheet would run as a formula (OWASP "CSV
//! injection"). The rule is in the docs of [`super`].

/// True for a cell a spreadsheet could run as a formula (see the CSV module's docs).
pub fn needs_neutralizing(cell: &[u8]) -> bool {
    matches!(
        cell.first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    ) && !is_plain_number(cell)
}

/// `[+-]?digits(.digits)?([eE][+-]?digits)?`, without a regex engine.
pub fn is_plain_number(s: &[u8]) -> bool {
    fn digits(s: &[u8], mut i: usize) -> Option<usize> {
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    }
    let mut i = usize::from(matches!(s.first(), Some(b'+' | b'-')));
    let Some(end) = digits(s, i) else {
        return false;
    };
    i = end;
    if s.get(i) == Some(&b'.') {
        let Some(end) = digits(s, i + 1) else {
            return false;
        };
        i = end;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let Some(end) = digits(s, i) else {
            return false;
        };
        i = end;
    }
    i == s.len()
}
