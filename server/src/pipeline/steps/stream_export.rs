//! Step 3: the file. One ordered scan of the snapshot, a batch at a time, through the encoder
//! of the export's format and its compressor into a storage writer that is closed on success
//! and aborted on any failure. The size and SHA-256 are those of the stored bytes.

use bytes::Bytes;
use opendal::Writer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::resolve_export_metadata::ExportMetadata;
use crate::exports::ExportOptions;
use crate::exports::filename::content_disposition;
use crate::pipeline::PipelineContext;
use crate::pipeline::batches::{Batches, ReadError};
use crate::pipeline::copy_rows::RowBatch;
use crate::pipeline::format::compress::Compressor;
use crate::pipeline::format::{self, EncodeError, Encoder, Finished};
use crate::pipeline::interrupts::Interrupts;
use crate::pipeline::progress::Progress;
use crate::pipeline::selection::Selection;
use crate::pipeline::snapshot::Snapshot;
use crate::pipeline::step::{FailureKind, StepError};
use crate::queue::JobWriter;

/// Multipart chunk of the storage writer for object stores (S3's parts are at least 5 MiB):
/// large parts, fewer requests. Storage without such a minimum (`fs`) gets every batch as it
/// is encoded, so that no 8 MiB of chunks wait in memory (measured: 6 MiB less peak RSS
/// and a flat peak between a 100,000-row and a million-row export, exportd-bench).
const UPLOAD_CHUNK: usize = 8 << 20;

/// The persisted output: what was written where (the attempt's own object: see
/// [`crate::storage::attempt_key`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredFile {
    pub storage_key: String,
    pub size_bytes: i64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    pub rows: i64,
}

/// What one attempt reads and where it writes.
pub struct StreamInput<'a> {
    /// `None` when the tag filter matched nobody: a header-only file. The attempt lends the
    /// snapshot to its fetching task and puts it back; it is left `None` if that task died
    /// with it (a retry then needs a fresh one).
    pub snapshot: &'a mut Option<Snapshot>,
    pub selection: &'a Selection,
    pub metadata: &'a ExportMetadata,
    pub options: &'a ExportOptions,
    pub storage_key: &'a str,
    /// The file's name, for its `content-disposition`.
    pub filename: &'a str,
}

/// Writes the whole file once, into the attempt's own object; on any failure the upload is
/// aborted, so that nothing of it stays in storage.
pub async fn run(
    ctx: &PipelineContext,
    job: &JobWriter,
    interrupts: &Interrupts,
    input: StreamInput<'_>,
) -> Result<StoredFile, StepError> {
    let mut write = ctx
        .storage
        .writer_with(input.storage_key)
        .content_type(input.options.content_type());
    // Where the store keeps it, a signed URL then serves the file under its name.
    if ctx
        .storage
        .info()
        .capability()
        .write_with_content_disposition
    {
        write = write.content_disposition(&content_disposition(input.filename));
    }
    if ctx
        .storage
        .info()
        .capability()
        .write_multi_min_size
        .is_some()
    {
        write = write.chunk(UPLOAD_CHUNK);
    }
    let mut writer = Upload(Some(write.await.map_err(StepError::write)?));
    let storage_key = input.storage_key.to_owned();
    let written = match write_rows(ctx, job, interrupts, input, writer.get()).await {
        // `close` uploads what the writer still buffers (for a small file, all of it) and
        // commits the object: it fails like any write, and then needs the same abort.
        Ok(written) => writer
            .get()
            .close()
            .await
            .map(|_| written)
            .map_err(StepError::write),
        Err(e) => Err(e),
    };
    match written {
        Ok((size_bytes, sha256, rows)) => {
            writer.0 = None;
            Ok(StoredFile {
                storage_key,
                size_bytes,
                sha256,
                rows,
            })
        }
        Err(e) => {
            // Leave no partial object behind (nor an unfinished multipart upload, whose parts
            // the object store keeps and bills); the step's own error is the one that matters.
            if let Some(mut w) = writer.0.take()
                && let Err(abort) = w.abort().await
            {
                tracing::warn!(error = %abort, "aborting the storage writer failed");
            }
            Err(e)
        }
    }
}

/// A storage writer that is aborted if dropped unfinished (its task panicked, or was
/// dropped at the shutdown timeout): no unfinished multipart upload is left to the store.
struct Upload(Option<Writer>);

impl Upload {
    fn get(&mut self) -> &mut Writer {
        self.0
            .as_mut()
            .expect("the writer is there until the upload ends")
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(mut writer) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(error = %e, "aborting an abandoned storage writer failed");
                }
            });
        }
    }
}

/// The stored bytes so far: counted, hashed and written.
struct Output<'w> {
    writer: &'w mut Writer,
    compressor: Compressor,
    hasher: Sha256,
    size: i64,
}

impl Output<'_> {
    /// Compresses `bytes` and stores what the compressor hands back.
    async fn push(&mut self, ctx: &PipelineContext, bytes: Bytes) -> Result<(), StepError> {
        let stored = self.compressor.push(bytes).map_err(compress_failed)?;
        self.store(ctx, stored).await
    }

    /// The compressor's trailer, then the size and SHA-256 (hex) of everything stored.
    async fn finish(mut self, ctx: &PipelineContext) -> Result<(i64, String), StepError> {
        let compressor = std::mem::replace(&mut self.compressor, Compressor::None);
        let trailer = compressor.finish().map_err(compress_failed)?;
        self.store(ctx, trailer).await?;
        Ok((self.size, hex::encode(self.hasher.finalize())))
    }

    async fn store(&mut self, ctx: &PipelineContext, bytes: Bytes) -> Result<(), StepError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.hasher.update(&bytes);
        let len = bytes.len();
        self.size += len as i64;
        self.writer.write(bytes).await.map_err(StepError::write)?;
        ctx.metrics.bytes_written(len);
        Ok(())
    }
}

/// Encodes and writes; returns (bytes, sha256 hex, data rows).
async fn write_rows(
    ctx: &PipelineContext,
    job: &JobWriter,
    interrupts: &Interrupts,
    input: StreamInput<'_>,
    writer: &mut Writer,
) -> Result<(i64, String, i64), StepError> {
    let mut encoder = format::encoder(input.options, &input.metadata.custom_keys)
        .map_err(|e| encode_failed(None, e))?;
    let mut out = Output {
        writer,
        compressor: Compressor::new(input.options.compression).map_err(compress_failed)?,
        hasher: Sha256::new(),
        size: 0,
    };
    let mut rows = 0i64;

    let start = encoder.begin().map_err(|e| encode_failed(None, e))?;
    out.push(ctx, start).await?;

    if let Some(snapshot) = input.snapshot.take() {
        // The next batch is fetched while this one is encoded and uploaded, and progress is
        // written beside the stream: between two batches nothing waits on a round trip.
        let mut batches = Batches::start(snapshot, input.selection, ctx.batch_size);
        let progress = Progress::spawn(job);
        let streamed = async {
            loop {
                interrupts.check()?;
                progress.check()?;
                let batch = batches.next().await.map_err(read_failed)?;
                if batch.is_empty() {
                    return Ok(());
                }
                let batch_rows = encode(encoder.as_mut(), &batch)?;
                let bytes = encoder.take_chunk();
                rows += batch_rows as i64;
                drop(batch);
                out.push(ctx, bytes).await?;
                ctx.metrics.rows_exported(batch_rows);
                progress.report(rows);
                if let Some(delay) = ctx.hooks.batch_delay {
                    interrupts.sleep(delay).await?;
                }
            }
        }
        .await;
        // The snapshot goes back to the runner for a retry (or is gone, and the retry opens a
        // fresh one).
        *input.snapshot = batches.finish().await;
        match streamed {
            // The exact count is recorded before the caller moves on to COMPLETED.
            Ok(()) => progress.finish(rows).await?,
            Err(e) => {
                progress.abandon().await;
                return Err(e);
            }
        }
    }

    // One snapshot feeds count and rows: a difference is a bug, never a file to hand out.
    if rows != input.metadata.total_rows {
        return Err(StepError::failed(
            FailureKind::Fatal,
            "internal consistency check failed",
            format!(
                "wrote {rows} rows, metadata counted {}",
                input.metadata.total_rows
            ),
        ));
    }
    // The end of the file, which may take a while to build (a workbook is zipped here): a
    // cancel or a shutdown does not wait for it (the blocking build runs on and its temporary
    // files go when it ends).
    let finished = interrupts
        .race(tokio::task::spawn_blocking(move || encoder.finish()))
        .await?
        .map_err(|e| StepError::failed(FailureKind::Fatal, "encoding the file failed", e))?
        .map_err(|e| encode_failed(None, e))?;
    match finished {
        Finished::Chunk(bytes) => out.push(ctx, bytes).await?,
        Finished::File(file) => {
            let mut file = tokio::fs::File::from_std(file.reopen().map_err(temp_file_failed)?);
            loop {
                let mut chunk = bytes::BytesMut::with_capacity(FILE_CHUNK);
                let n = tokio::io::AsyncReadExt::read_buf(&mut file, &mut chunk)
                    .await
                    .map_err(temp_file_failed)?;
                if n == 0 {
                    break;
                }
                // A workbook's upload is many chunks after the last batch: cancels and
                // shutdowns are heard between them as between batches.
                interrupts.check()?;
                out.push(ctx, chunk.freeze()).await?;
            }
        }
    }
    let (size, sha256) = out.finish(ctx).await?;
    Ok((size, sha256, rows))
}

/// Reads of a file built locally (XLSX) go to the compressor and the store in pieces of this.
const FILE_CHUNK: usize = 1 << 20;

/// Encodes the rows of `batch` into the encoder's current chunk; returns how many there were.
fn encode(encoder: &mut dyn Encoder, batch: &RowBatch) -> Result<usize, StepError> {
    let mut reader = batch.rows();
    let mut rows = 0;
    while let Some((id, row)) = reader.next_row().map_err(|e| read_failed(e.into()))? {
        encoder.row(&row).map_err(|e| encode_failed(Some(id), e))?;
        rows += 1;
    }
    Ok(rows)
}

/// An encoder's failure: a row the format cannot take fails every attempt alike (not worth a
/// retry); a local temporary file may do better next time.
fn encode_failed(contact: Option<i64>, e: EncodeError) -> StepError {
    match e {
        EncodeError::TempFile(io) => temp_file_failed(io),
        row => {
            let public = match contact {
                Some(id) => format!("contact {id} cannot be exported: {row}"),
                None => format!("the file cannot be written: {row}"),
            };
            StepError::failed(FailureKind::Fatal, public, row)
        }
    }
}

fn temp_file_failed(e: std::io::Error) -> StepError {
    let public = if e.raw_os_error() == Some(libc::ENOSPC) {
        "building the file in a temporary folder failed: the disk is full"
    } else {
        "building the file in a temporary folder failed"
    };
    StepError::failed(FailureKind::Write, public, e)
}

/// Compressing into memory fails only on a broken invariant.
fn compress_failed(e: std::io::Error) -> StepError {
    StepError::failed(FailureKind::Fatal, "compressing the file failed", e)
}

/// A failed read: the database's failures are retried on a fresh snapshot, data that is not
/// what the `COPY` asked for is a bug no retry mends.
fn read_failed(e: ReadError) -> StepError {
    match e {
        ReadError::Database(e) => StepError::read(e),
        ReadError::Stopped => StepError::read(e),
        ReadError::Row(_) => StepError::failed(
            FailureKind::Fatal,
            "reading contacts from the database failed",
            e,
        ),
    }
}
