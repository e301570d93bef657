//! `DownloadExport`: the metadata-first stream, and writing it out with verification.

use std::fmt;

use bytes::Bytes;
use contact_export::v1::download_export_response::Payload;
use contact_export::v1::{DownloadExportResponse, ExportFileMetadata};
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tonic::Status;

use crate::ClientError;

/// An open download: the file's metadata, then its bytes as a stream.
///
/// Built by [`ExportClient::download`](crate::ExportClient::download), which has already read
/// and checked the first message. Consume [`chunks`](Self::chunks) yourself, or hand the whole
/// thing to [`write_to`](Self::write_to).
pub struct Download {
    /// Describes the whole file, whatever range was asked for.
    pub metadata: ExportFileMetadata,
    /// The `content-disposition` response metadata, when the server sent one.
    pub content_disposition: Option<String>,
    /// The `read_offset` that was requested.
    pub read_offset: i64,
    /// The `read_limit` that was requested (0: to the end of the file).
    pub read_limit: i64,
    /// The data chunks, in order. A metadata message after the first one is an
    /// `INTERNAL` error item.
    pub chunks: BoxStream<'static, Result<Bytes, Status>>,
}

impl Download {
    /// Whether this is the whole file (offset 0, no limit), so its SHA-256 can be checked.
    pub fn is_full(&self) -> bool {
        self.read_offset == 0 && self.read_limit == 0
    }

    /// How many bytes the requested range holds, from the metadata's `size_bytes`.
    pub fn expected_len(&self) -> u64 {
        range_len(self.metadata.size_bytes, self.read_offset, self.read_limit)
    }

    /// Streams every chunk into `writer` and flushes it; returns the number of bytes written.
    ///
    /// `progress(bytes_so_far, expected_len)` is called after each chunk. Fails with
    /// [`ClientError::SizeMismatch`] when the stream does not carry exactly
    /// [`expected_len`](Self::expected_len) bytes and, for a full download, with
    /// [`ClientError::ChecksumMismatch`] when the bytes do not hash to `metadata.sha256`.
    /// On error the writer holds a partial file: write to a temporary place.
    pub async fn write_to<W>(
        mut self,
        writer: &mut W,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, ClientError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let expected = self.expected_len();
        let mut hasher = self.is_full().then(Sha256::new);
        let mut written = 0u64;
        while let Some(chunk) = self.chunks.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            if written > expected {
                return Err(ClientError::SizeMismatch {
                    expected,
                    actual: written,
                });
            }
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&chunk);
            }
            writer.write_all(&chunk).await?;
            progress(written, expected);
        }
        writer.flush().await?;
        if written != expected {
            return Err(ClientError::SizeMismatch {
                expected,
                actual: written,
            });
        }
        if let Some(hasher) = hasher {
            verify(hasher, &self.metadata, None)?;
        }
        Ok(written)
    }
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download")
            .field("metadata", &self.metadata)
            .field("content_disposition", &self.content_disposition)
            .field("read_offset", &self.read_offset)
            .field("read_limit", &self.read_limit)
            .finish_non_exhaustive()
    }
}

/// Bytes in `[offset, offset + limit)` of a file of `size` bytes; `limit` 0 means to the end.
pub(crate) fn range_len(size: i64, offset: i64, limit: i64) -> u64 {
    let rest = size.saturating_sub(offset.max(0)).max(0);
    let len = if limit > 0 { rest.min(limit) } else { rest };
    len as u64
}

/// The first message of the stream: it must be the metadata.
pub(crate) fn first_metadata(
    message: Option<DownloadExportResponse>,
) -> Result<ExportFileMetadata, Status> {
    match message.and_then(|m| m.payload) {
        Some(Payload::Metadata(metadata)) => Ok(metadata),
        Some(Payload::Data(_)) => Err(Status::internal(
            "download stream did not start with the file metadata",
        )),
        None => Err(Status::internal(
            "download stream ended or sent an empty message before the file metadata",
        )),
    }
}

/// A later message of the stream: it must be data.
pub(crate) fn data_chunk(message: DownloadExportResponse) -> Result<Bytes, Status> {
    match message.payload {
        Some(Payload::Data(data)) => Ok(data),
        Some(Payload::Metadata(_)) => Err(Status::internal(
            "download stream sent file metadata after the first message",
        )),
        None => Err(Status::internal("download stream sent an empty message")),
    }
}

/// `Ok` when `hasher` holds the file that `metadata` announces.
pub(crate) fn verify(
    hasher: Sha256,
    metadata: &ExportFileMetadata,
    restarted_after: Option<u64>,
) -> Result<(), ClientError> {
    let actual = hex::encode(hasher.finalize());
    if actual.eq_ignore_ascii_case(&metadata.sha256) {
        Ok(())
    } else {
        Err(ClientError::ChecksumMismatch {
            expected: metadata.sha256.clone(),
            actual,
            restarted_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    const FILE: &[u8] = b"email,first_name\na@example.com,Ann\nb@example.com,Bob\n";

    fn metadata(size: usize, sha256: String) -> ExportFileMetadata {
        ExportFileMetadata {
            filename: "contacts.csv".into(),
            size_bytes: size as i64,
            sha256,
            content_type: "text/csv".into(),
        }
    }

    fn download(
        meta: ExportFileMetadata,
        offset: i64,
        limit: i64,
        chunks: Vec<Result<Bytes, Status>>,
    ) -> Download {
        Download {
            metadata: meta,
            content_disposition: None,
            read_offset: offset,
            read_limit: limit,
            chunks: stream::iter(chunks).boxed(),
        }
    }

    fn chunked(bytes: &[u8], size: usize) -> Vec<Result<Bytes, Status>> {
        bytes
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn range_lengths() {
        assert_eq!(range_len(100, 0, 0), 100);
        assert_eq!(range_len(100, 40, 0), 60);
        assert_eq!(range_len(100, 40, 10), 10);
        assert_eq!(range_len(100, 90, 50), 10);
        assert_eq!(range_len(100, 100, 0), 0);
        assert_eq!(range_len(100, 150, 0), 0);
        assert_eq!(range_len(0, 0, 0), 0);
    }

    #[test]
    fn first_message_must_be_metadata() {
        let meta = metadata(3, "x".into());
        let ok = DownloadExportResponse {
            payload: Some(Payload::Metadata(meta.clone())),
        };
        assert_eq!(first_metadata(Some(ok)).unwrap(), meta);
        let data = DownloadExportResponse {
            payload: Some(Payload::Data(Bytes::from_static(b"abc"))),
        };
        assert_eq!(
            first_metadata(Some(data)).unwrap_err().code(),
            tonic::Code::Internal
        );
        assert_eq!(
            first_metadata(None).unwrap_err().code(),
            tonic::Code::Internal
        );
    }

    #[test]
    fn later_messages_must_be_data() {
        let data = DownloadExportResponse {
            payload: Some(Payload::Data(Bytes::from_static(b"abc"))),
        };
        assert_eq!(data_chunk(data).unwrap(), Bytes::from_static(b"abc"));
        let meta = DownloadExportResponse {
            payload: Some(Payload::Metadata(metadata(3, String::new()))),
        };
        assert_eq!(data_chunk(meta).unwrap_err().code(), tonic::Code::Internal);
        let empty = DownloadExportResponse { payload: None };
        assert_eq!(data_chunk(empty).unwrap_err().code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn full_download_is_written_verified_and_reported() {
        let dl = download(metadata(FILE.len(), sha(FILE)), 0, 0, chunked(FILE, 7));
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let n = dl
            .write_to(&mut out, |done, total| seen.push((done, total)))
            .await
            .unwrap();
        assert_eq!(n, FILE.len() as u64);
        assert_eq!(out, FILE);
        assert_eq!(seen.last(), Some(&(FILE.len() as u64, FILE.len() as u64)));
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[tokio::test]
    async fn upper_case_checksum_is_accepted() {
        let dl = download(
            metadata(FILE.len(), sha(FILE).to_uppercase()),
            0,
            0,
            chunked(FILE, 64),
        );
        dl.write_to(&mut Vec::new(), |_, _| {}).await.unwrap();
    }

    #[tokio::test]
    async fn corrupted_bytes_fail_the_checksum() {
        let mut bad = FILE.to_vec();
        bad[3] ^= 1;
        let dl = download(metadata(FILE.len(), sha(FILE)), 0, 0, chunked(&bad, 10));
        let err = dl.write_to(&mut Vec::new(), |_, _| {}).await.unwrap_err();
        match err {
            ClientError::ChecksumMismatch {
                expected,
                actual,
                restarted_after: None,
            } => {
                assert_eq!(expected, sha(FILE));
                assert_eq!(actual, sha(&bad));
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn truncated_and_overlong_streams_fail() {
        let short = download(
            metadata(FILE.len(), sha(FILE)),
            0,
            0,
            chunked(&FILE[..10], 4),
        );
        let err = short
            .write_to(&mut Vec::new(), |_, _| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::SizeMismatch { expected, actual: 10 } if expected == FILE.len() as u64)
        );

        let long = download(metadata(5, sha(FILE)), 0, 0, chunked(FILE, 4));
        let err = long.write_to(&mut Vec::new(), |_, _| {}).await.unwrap_err();
        assert!(matches!(
            err,
            ClientError::SizeMismatch {
                expected: 5,
                actual: 8
            }
        ));
    }

    #[tokio::test]
    async fn a_range_is_not_checksummed_but_its_length_is_checked() {
        let part = &FILE[10..30];
        let dl = download(metadata(FILE.len(), sha(FILE)), 10, 20, chunked(part, 6));
        assert!(!dl.is_full());
        assert_eq!(dl.expected_len(), 20);
        let mut out = Vec::new();
        assert_eq!(dl.write_to(&mut out, |_, _| {}).await.unwrap(), 20);
        assert_eq!(out, part);
    }

    #[tokio::test]
    async fn a_stream_error_is_passed_through() {
        let mut chunks = chunked(FILE, 8);
        chunks.insert(2, Err(Status::unavailable("gone")));
        let dl = download(metadata(FILE.len(), sha(FILE)), 0, 0, chunks);
        let err = dl.write_to(&mut Vec::new(), |_, _| {}).await.unwrap_err();
        assert_eq!(
            err.status().map(Status::code),
            Some(tonic::Code::Unavailable)
        );
    }
}
