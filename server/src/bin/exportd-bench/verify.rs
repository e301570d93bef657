//! Whether a downloaded export file is plausibly what was asked for: not empty, and after
//! decompression (gzip or zstd, with the crates the service compresses with) as many rows as
//! the export says for CSV (records − the header) and JSON Lines (lines), or a ZIP archive for
//! XLSX. A file that fails is an error: a figure measured on a broken file means nothing.

use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context as _, bail, ensure};

use crate::formats::{Compression, Format};

/// What a check found.
#[derive(Debug, Clone, Copy)]
pub enum Verified {
    /// CSV and JSON Lines: the rows counted.
    Rows(i64),
    /// XLSX: a ZIP archive of this many (decompressed) bytes.
    Zip(u64),
}

/// The local file header's signature, the first bytes of any ZIP archive (and so of a workbook).
const ZIP_SIGNATURE: &[u8; 4] = b"PK\x03\x04";

/// Checks the file at `path`, an export of `rows` rows in `format` and `compression`.
pub fn check(
    path: &Path,
    format: Format,
    compression: Compression,
    rows: i64,
) -> anyhow::Result<Verified> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ensure!(file.metadata()?.len() > 0, "{} is empty", path.display());
    let file = BufReader::new(file);
    let content: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
    };
    let read = |e| anyhow::Error::new(e).context(format!("reading {}", path.display()));
    let verified = match format {
        Format::Csv => {
            let records = count_lines(content, true).map_err(read)?;
            ensure!(records > 0, "{}: no header row", path.display());
            Verified::Rows(records - 1)
        }
        Format::Jsonl => Verified::Rows(count_lines(content, false).map_err(read)?),
        Format::Xlsx => match zip_size(content).map_err(read)? {
            Some(bytes) => Verified::Zip(bytes),
            None => bail!(
                "{} is not a ZIP archive (no \"PK\\x03\\x04\")",
                path.display()
            ),
        },
    };
    if let Verified::Rows(found) = verified
        && found != rows
    {
        bail!(
            "{} holds {found} rows, the export says {rows}",
            path.display()
        );
    }
    Ok(verified)
}

/// Lines (records, for CSV: line breaks inside a quoted field do not end one), counting a
/// last line without its line break.
fn count_lines(mut content: impl Read, csv_quotes: bool) -> std::io::Result<i64> {
    let mut buffer = vec![0; 1 << 16];
    let (mut lines, mut quoted, mut last) = (0, false, b'\n');
    loop {
        let n = content.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        for &byte in &buffer[..n] {
            match byte {
                // `""` inside a quoted field toggles twice: still quoted.
                b'"' if csv_quotes => quoted = !quoted,
                b'\n' if !quoted => lines += 1,
                _ => {}
            }
        }
        last = buffer[n - 1];
    }
    Ok(lines + i64::from(last != b'\n'))
}

/// The size of a ZIP archive, read to its end (which checks the compressed stream around it);
/// `None` when it does not start like one.
fn zip_size(mut content: impl Read) -> std::io::Result<Option<u64>> {
    let mut start = [0; 4];
    let mut got = 0;
    while got < start.len() {
        match content.read(&mut start[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if &start[..got] != ZIP_SIGNATURE {
        return Ok(None);
    }
    let rest = std::io::copy(&mut content, &mut std::io::sink())?;
    Ok(Some(got as u64 + rest))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn counts_csv_records_across_quoted_line_breaks() {
        let csv = b"a,b\n\"x\ny\",\"say \"\"hi\"\"\r\n\"\n3,4";
        assert_eq!(count_lines(&csv[..], true).unwrap(), 3);
        assert_eq!(count_lines(&b"{}\n{}\n"[..], false).unwrap(), 2);
        assert_eq!(count_lines(&b""[..], false).unwrap(), 0);
    }

    #[test]
    fn checks_compressed_files() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = b"{\"a\":1}\n{\"a\":\"x\\ny\"}\n";

        let gz = dir.path().join("f.jsonl.gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(jsonl).unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
        assert!(matches!(
            check(&gz, Format::Jsonl, Compression::Gzip, 2).unwrap(),
            Verified::Rows(2)
        ));
        assert!(check(&gz, Format::Jsonl, Compression::Gzip, 3).is_err());

        let zst = dir.path().join("f.xlsx.zst");
        let zip = b"PK\x03\x04rest of the archive";
        std::fs::write(&zst, zstd::stream::encode_all(&zip[..], 3).unwrap()).unwrap();
        assert!(matches!(
            check(&zst, Format::Xlsx, Compression::Zstd, 9).unwrap(),
            Verified::Zip(bytes) if bytes == zip.len() as u64
        ));
        assert!(check(&zst, Format::Csv, Compression::Gzip, 0).is_err());

        let empty = dir.path().join("empty.csv");
        std::fs::write(&empty, b"").unwrap();
        assert!(check(&empty, Format::Csv, Compression::None, 0).is_err());
    }
}
