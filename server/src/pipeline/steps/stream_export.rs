//! Step 3: the file. One ordered scan of the snapshot, a batch at a time, through the CSV
//! encoder into a storage writer that is closed on success and aborted on any failure.

use opendal::Writer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::resolve_export_metadata::ExportMetadata;
use crate::exports::filename::content_disposition;
use crate::pipeline::PipelineContext;
use crate::pipeline::batches::{Batches, ReadError};
use crate::pipeline::copy_rows::RowBatch;
use crate::pipeline::csv::{CsvEncoder, CsvOptions};
use crate::pipeline::interrupts::Interrupts;
use crate::pipeline::progress::Progress;
use crate::pipeline::selection::Selection;
use crate::pipeline::snapshot::Snapshot;
use crate::pipeline::step::{FailureKind, StepError};
use crate::queue::JobWriter;
use crate::storage::CSV_CONTENT_TYPE;

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
    pub options: CsvOptions,
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
        .content_type(CSV_CONTENT_TYPE);
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

/// Encodes and writes; returns (bytes, sha256 hex, data rows).
async fn write_rows(
    ctx: &PipelineContext,
    job: &JobWriter,
    interrupts: &Interrupts,
    input: StreamInput<'_>,
    writer: &mut Writer,
) -> Result<(i64, String, i64), StepError> {
    let mut encoder = CsvEncoder::new(input.metadata.custom_keys.clone(), input.options);
    let mut hasher = Sha256::new();
    let mut size = 0i64;
    let mut rows = 0i64;

    let header = encoder.encode_header();
    hasher.update(&header);
    let header_len = header.len();
    size += header_len as i64;
    writer.write(header).await.map_err(StepError::write)?;
    ctx.metrics.bytes_written(header_len);

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
                let batch_rows = encode(&mut encoder, &batch)?;
                let bytes = encoder.take_chunk();
                rows += batch_rows as i64;
                drop(batch);
                hasher.update(&bytes);
                let batch_len = bytes.len();
                size += batch_len as i64;
                writer.write(bytes).await.map_err(StepError::write)?;
                ctx.metrics.rows_exported(batch_rows);
                ctx.metrics.bytes_written(batch_len);
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
    Ok((size, hex::encode(hasher.finalize()), rows))
}

/// Encodes the rows of `batch` into the encoder's current chunk; returns how many there were.
fn encode(encoder: &mut CsvEncoder, batch: &RowBatch) -> Result<usize, StepError> {
    let mut reader = batch.rows();
    let mut rows = 0;
    while let Some((id, row)) = reader.next_row().map_err(|e| read_failed(e.into()))? {
        // The same row fails every attempt: not worth a retry.
        encoder.encode_row(&row).map_err(|e| {
            StepError::failed(
                FailureKind::Fatal,
                format!("contact {id} cannot be exported: {e}"),
                e,
            )
        })?;
        rows += 1;
    }
    Ok(rows)
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
