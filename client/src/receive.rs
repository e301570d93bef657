//! Receiving a whole file through `DownloadExport`, opened again at the byte reached when the
//! connection is cut or the server goes away ([`RetryPolicy`]).

use contact_export::v1::ExportFileMetadata;
use futures::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tonic::Status;

use crate::download::Download;
use crate::retry::{RetryPolicy, is_retryable};
use crate::{ClientError, ExportClient};

/// One download of one export's file, however many streams it takes.
pub(crate) struct Receiver<'a> {
    client: &'a ExportClient,
    id: &'a str,
    retry: RetryPolicy,
    /// Tries in a row that received nothing.
    failures: u32,
    /// The file's metadata as the first stream announced it.
    metadata: Option<ExportFileMetadata>,
}

impl<'a> Receiver<'a> {
    pub(crate) fn new(client: &'a ExportClient, id: &'a str) -> Self {
        Receiver {
            client,
            id,
            retry: client.retry,
            failures: 0,
            metadata: None,
        }
    }

    /// Opens the stream of the file from byte `at` to its end, retrying as the policy allows.
    /// Every stream after the first must describe the same file.
    pub(crate) async fn open(&mut self, at: u64) -> Result<Download, ClientError> {
        let offset = i64::try_from(at).map_err(|_| ClientError::SizeMismatch {
            expected: i64::MAX as u64,
            actual: at,
        })?;
        let download = loop {
            match self.client.download(self.id, offset, 0).await {
                Ok(download) => break download,
                Err(status) => self.failed(status).await?,
            }
        };
        match &self.metadata {
            None => self.metadata = Some(download.metadata.clone()),
            Some(first) => {
                if first.size_bytes != download.metadata.size_bytes
                    || !first.sha256.eq_ignore_ascii_case(&download.metadata.sha256)
                {
                    return Err(ClientError::FileChanged {
                        before: first.sha256.clone(),
                        now: download.metadata.sha256,
                    });
                }
            }
        }
        Ok(download)
    }

    /// Counts a failed try: `Ok` after the pause when another may succeed, else the error.
    async fn failed(&mut self, status: Status) -> Result<(), ClientError> {
        self.failures += 1;
        if !is_retryable(&status) || self.failures >= self.retry.attempts {
            return Err(status.into());
        }
        tokio::time::sleep(self.retry.backoff(self.failures - 1)).await;
        Ok(())
    }

    /// Writes the rest of the file, from byte `at` (where `download` starts), into `sink`
    /// and `hasher`, then flushes `sink`. A cut stream is opened again where it stopped.
    /// `progress(bytes_so_far, total)` counts from the start of the file.
    pub(crate) async fn receive<W>(
        &mut self,
        mut download: Download,
        mut at: u64,
        sink: &mut W,
        hasher: &mut Sha256,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<u64, ClientError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let size = download.metadata.size_bytes.max(0) as u64;
        let received = self
            .receive_into(&mut download, &mut at, size, sink, hasher, progress)
            .await;
        // What arrived is on disk even when the download stops here, for a resume to find
        // (a file's writes may still be on their way when a write call returns).
        let flushed = sink.flush().await;
        received?;
        flushed?;
        if at != size {
            return Err(ClientError::SizeMismatch {
                expected: size,
                actual: at,
            });
        }
        Ok(at)
    }

    async fn receive_into<W>(
        &mut self,
        download: &mut Download,
        at: &mut u64,
        size: u64,
        sink: &mut W,
        hasher: &mut Sha256,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<(), ClientError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match download.chunks.next().await {
                None => return Ok(()),
                Some(Ok(chunk)) => {
                    let end = *at + chunk.len() as u64;
                    if end > size {
                        return Err(ClientError::SizeMismatch {
                            expected: size,
                            actual: end,
                        });
                    }
                    hasher.update(&chunk);
                    sink.write_all(&chunk).await?;
                    *at = end;
                    self.failures = 0;
                    progress(end, size);
                }
                Some(Err(status)) => {
                    self.failed(status).await?;
                    *download = self.open(*at).await?;
                }
            }
        }
    }
}
