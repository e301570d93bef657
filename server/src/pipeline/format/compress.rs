//! Compression of the stored file, applied to whatever the encoder produced, chunk by chunk:
//! gzip (flate2, level 6: gzip's own default) or Zstandard (zstd, level 3: its default). Each
//! compressor buffers what it needs and hands back what it has produced so far, so memory
//! stays flat whatever the size of the file.

use std::io::Write as _;

use bytes::Bytes;

use crate::exports::Compression;

const GZIP_LEVEL: u32 = 6;
const ZSTD_LEVEL: i32 = 3;

/// The compressor of one file.
pub enum Compressor {
    None,
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compressor::None => "Compressor::None",
            Compressor::Gzip(_) => "Compressor::Gzip",
            Compressor::Zstd(_) => "Compressor::Zstd",
        })
    }
}

impl Compressor {
    pub fn new(compression: Compression) -> std::io::Result<Compressor> {
        Ok(match compression {
            Compression::None => Compressor::None,
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Compression::Zstd => {
                Compressor::Zstd(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?)
            }
        })
    }

    /// Takes the next bytes of the file; returns the compressed bytes ready so far (possibly
    /// none). Without compression, the chunk itself.
    pub fn push(&mut self, chunk: Bytes) -> std::io::Result<Bytes> {
        match self {
            Compressor::None => Ok(chunk),
            Compressor::Gzip(encoder) => {
                encoder.write_all(&chunk)?;
                Ok(take(encoder.get_mut()))
            }
            Compressor::Zstd(encoder) => {
                encoder.write_all(&chunk)?;
                Ok(take(encoder.get_mut()))
            }
        }
    }

    /// The end of the compressed stream (its trailer).
    pub fn finish(self) -> std::io::Result<Bytes> {
        match self {
            Compressor::None => Ok(Bytes::new()),
            Compressor::Gzip(encoder) => encoder.finish().map(Bytes::from),
            Compressor::Zstd(encoder) => encoder.finish().map(Bytes::from),
        }
    }
}

/// What the compressor has written so far, leaving its buffer (and its capacity) in place.
fn take(buffer: &mut Vec<u8>) -> Bytes {
    let out = Bytes::copy_from_slice(buffer);
    buffer.clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn compress(compression: Compression, chunks: &[&[u8]]) -> Vec<u8> {
        let mut compressor = Compressor::new(compression).unwrap();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&compressor.push(Bytes::copy_from_slice(chunk)).unwrap());
        }
        out.extend_from_slice(&compressor.finish().unwrap());
        out
    }

    #[test]
    fn chunks_compress_to_one_stream_that_reads_back() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("row {i},x@example.com\n").into_bytes())
            .collect();
        let chunks: Vec<&[u8]> = text.chunks(7_919).collect();

        let gzip = compress(Compression::Gzip, &chunks);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, text);
        assert!(
            gzip.len() < text.len() / 4,
            "{} of {}",
            gzip.len(),
            text.len()
        );

        let zstd = compress(Compression::Zstd, &chunks);
        assert_eq!(zstd::stream::decode_all(&zstd[..]).unwrap(), text);
        assert!(zstd.len() < text.len() / 4);

        assert_eq!(compress(Compression::None, &chunks), text);
    }

    #[test]
    fn an_empty_file_is_a_valid_empty_stream() {
        let gzip = compress(Compression::Gzip, &[]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
        assert!(
            zstd::stream::decode_all(&compress(Compression::Zstd, &[])[..])
                .unwrap()
                .is_empty()
        );
    }
}
