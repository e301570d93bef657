//! DownloadExport: the finished file from storage, in bounded chunks, google.bytestream style.

use crate::ids::ExportId;
use bytes::Bytes;
use contact_export::v1::download_export_response::Payload;
use contact_export::v1::{DownloadExportResponse, ExportFileMetadata};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Response, Status};

use super::{ExportApi, ResponseStream, status};
use crate::auth::Principal;
use crate::exports::filename::content_disposition;
use crate::exports::{ExportRecord, ExportStatus, repo};

/// Largest data message: well under tonic's 4 MiB default limit, large enough to stream fast.
pub const MAX_CHUNK: usize = 256 << 10;

/// The requested byte range.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    offset: u64,
    /// 0: to the end.
    limit: u64,
}

impl Range {
    /// Checks `read_offset` and `read_limit` (both must be ≥ 0).
    pub fn parse(read_offset: i64, read_limit: i64) -> Result<Range, Status> {
        let offset = u64::try_from(read_offset)
            .map_err(|_| Status::invalid_argument("read_offset: must not be negative"))?;
        let limit = u64::try_from(read_limit)
            .map_err(|_| Status::invalid_argument("read_limit: must not be negative"))?;
        Ok(Range { offset, limit })
    }

    /// The byte span within a file of `size` bytes; OUT_OF_RANGE past its end.
    fn within(self, size: u64) -> Result<std::ops::Range<u64>, Status> {
        if self.offset > size {
            return Err(Status::out_of_range(format!(
                "read_offset {} is past the end of the file ({size} bytes)",
                self.offset
            )));
        }
        let end = match self.limit {
            0 => size,
            n => size.min(self.offset.saturating_add(n)),
        };
        Ok(self.offset..end)
    }
}

impl ExportApi {
    pub(super) async fn download(
        &self,
        principal: Principal,
        id: ExportId,
        range: Range,
    ) -> Result<Response<ResponseStream<DownloadExportResponse>>, Status> {
        let record = repo::get(&mut *self.conn().await?, principal.workspace_id, id).await?;
        let (key, size, sha256) = completed_file(&record)?;
        let size = size as u64;
        let span = range.within(size)?;
        // A missing object only errors once read; look first, for a clean status. An object
        // of another size than recorded is not the file the checksum describes.
        match self.storage.stat(key).await {
            Ok(object) if object.content_length() != size => {
                tracing::error!(
                    export_id = %id,
                    key = %key,
                    recorded = size,
                    stored = object.content_length(),
                    "completed export's file in storage has another size than recorded"
                );
                return Err(Status::data_loss(format!(
                    "the export's file in storage has {} bytes, not the {size} it was written \
                     with",
                    object.content_length()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                tracing::error!(export_id = %id, key = %key, "completed export has no file in storage");
                return Err(Status::data_loss(
                    "the export's file is missing from storage",
                ));
            }
            Err(e) => return Err(status::internal(e)),
        }
        let metadata = ExportFileMetadata {
            filename: record.filename.clone(),
            size_bytes: size as i64,
            sha256: sha256.to_owned(),
            content_type: content_type(&record).to_owned(),
        };

        let (tx, rx) = mpsc::channel::<Result<DownloadExportResponse, Status>>(2);
        let storage = self.storage.clone();
        let shutdown = self.shutdown.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let first = DownloadExportResponse {
                payload: Some(Payload::Metadata(metadata)),
            };
            if tx.send(Ok(first)).await.is_err() || span.is_empty() {
                return;
            }
            let stream = match storage.reader_with(&key).chunk(MAX_CHUNK).await {
                Ok(reader) => reader.into_bytes_stream(span).await,
                Err(e) => Err(e),
            };
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(status::internal(e))).await;
                    return;
                }
            };
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down; resume at the offset reached"))).await;
                        return;
                    }
                };
                match next {
                    None => return,
                    Some(Ok(bytes)) => {
                        for chunk in split(bytes) {
                            let data = DownloadExportResponse {
                                payload: Some(Payload::Data(chunk)),
                            };
                            if tx.send(Ok(data)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx
                            .send(Err(status::internal(std::io::Error::other(e))))
                            .await;
                        return;
                    }
                }
            }
        });

        let mut response = Response::new(Box::pin(ReceiverStream::new(rx)) as ResponseStream<_>);
        if let Ok(value) = MetadataValue::try_from(content_disposition(&record.filename)) {
            response.metadata_mut().insert("content-disposition", value);
        }
        Ok(response)
    }
}

/// The object, size and SHA-256 of a COMPLETED export; FAILED_PRECONDITION, saying why, for
/// any other.
/// The media type of an export's stored file (its format's, or its compressor's).
pub(super) fn content_type(record: &ExportRecord) -> &'static str {
    match record.options() {
        Ok(options) => options.content_type(),
        // A completed export's options were read to write its file; should they no longer
        // read, its bytes are still bytes.
        Err(_) => "application/octet-stream",
    }
}

pub(super) fn completed_file(record: &ExportRecord) -> Result<(&str, i64, &str), Status> {
    let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    match (
        record.status,
        &record.storage_key,
        record.size_bytes,
        &record.sha256,
    ) {
        (ExportStatus::Completed, Some(key), Some(size), Some(sha256)) => Ok((key, size, sha256)),
        (ExportStatus::Expired, ..) => Err(Status::failed_precondition(format!(
            "export expired at {}: its file was removed by retention",
            when(record.expires_at)
        ))),
        (ExportStatus::Deleted, ..) => Err(Status::failed_precondition(format!(
            "export was deleted at {}: its file is gone",
            when(record.deleted_at)
        ))),
        (status, ..) => Err(Status::failed_precondition(format!(
            "export is {}; only a completed export can be downloaded",
            status.as_str().to_uppercase()
        ))),
    }
}

/// Splits a storage read into messages of at most [`MAX_CHUNK`] bytes (without copying).
fn split(mut bytes: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        (!bytes.is_empty()).then(|| bytes.split_to(bytes.len().min(MAX_CHUNK)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_rules() {
        assert!(Range::parse(-1, 0).is_err());
        assert!(Range::parse(0, -1).is_err());
        let r = Range::parse(10, 0).unwrap();
        assert_eq!(r.within(100).unwrap(), 10..100);
        assert_eq!(Range::parse(10, 5).unwrap().within(100).unwrap(), 10..15);
        assert_eq!(Range::parse(10, 500).unwrap().within(100).unwrap(), 10..100);
        assert_eq!(Range::parse(100, 0).unwrap().within(100).unwrap(), 100..100);
        assert_eq!(
            Range::parse(101, 0)
                .unwrap()
                .within(100)
                .unwrap_err()
                .code(),
            tonic::Code::OutOfRange
        );
    }

    #[test]
    fn split_bounds_chunks() {
        let parts: Vec<Bytes> = split(Bytes::from(vec![0u8; MAX_CHUNK * 2 + 1])).collect();
        assert_eq!(
            parts.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![MAX_CHUNK, MAX_CHUNK, 1]
        );
    }
}
