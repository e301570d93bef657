//! Storage that breaks on purpose: an OpenDAL layer of our own over the real `memory` service
//! that makes writers fail or wait, counts how each upload ended, and counts what readers read.
//!
//! opendal's `ChaosLayer` only injects read errors and its `RetryLayer` does not retry writes,
//! so write faults need this. Readers pass through, counted; everything else is untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use opendal::raw::oio;
use opendal::raw::{
    Layer, OpCompose, OpCopy, OpCreateDir, OpList, OpPresign, OpRead, OpRename, OpRestore, OpStat,
    OpWrite, RpCreateDir, RpPresign, RpRead, RpRename, RpRestore, RpStat, Service, ServiceInfo,
    Servicer,
};
use opendal::{
    Buffer, BytesRange, Capability, Error, ErrorKind, Metadata, OperationContext, Operator, Result,
};
use tokio::sync::{Notify, watch};

/// What writers are made to do, and what became of them. Shared by every clone of the
/// operator, so a test keeps one handle while the service uses the operator.
#[derive(Debug)]
pub struct WriteFaults {
    /// Writer `write` and `close` calls still to refuse; `usize::MAX` refuses all of them.
    fail_next: AtomicUsize,
    /// Advertised as the only part size the service accepts, as an object store's multipart
    /// limits: the writer then uploads part by part while rows stream in, instead of
    /// everything from its buffer at `close`.
    max_part: Option<usize>,
    /// `false`: writes wait until the test opens it.
    gate: watch::Sender<bool>,
    /// Woken when a write waits at the closed gate.
    waiting: Notify,
    refused: AtomicUsize,
    aborted: AtomicUsize,
    closed: AtomicUsize,
    /// Bytes handed out by readers so far.
    bytes_read: AtomicU64,
    /// Readers opened so far, and readers dropped so far.
    readers_opened: AtomicUsize,
    readers_dropped: watch::Sender<usize>,
}

impl WriteFaults {
    fn new(fail_next: usize, max_part: Option<usize>, gate_open: bool) -> Arc<WriteFaults> {
        Arc::new(WriteFaults {
            fail_next: AtomicUsize::new(fail_next),
            max_part,
            gate: watch::Sender::new(gate_open),
            waiting: Notify::new(),
            refused: AtomicUsize::new(0),
            aborted: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            bytes_read: AtomicU64::new(0),
            readers_opened: AtomicUsize::new(0),
            readers_dropped: watch::Sender::new(0),
        })
    }

    /// The first `n` writer calls fail, later ones pass. With the service's 8 MiB parts and a
    /// small file the first call is the upload at `close`.
    pub fn fail_first(n: usize) -> Arc<WriteFaults> {
        WriteFaults::new(n, None, true)
    }

    /// The first `n` writer calls fail, with parts of at most `max_part` bytes: the failure
    /// hits in the middle of the stream.
    pub fn fail_first_part(n: usize, max_part: usize) -> Arc<WriteFaults> {
        WriteFaults::new(n, Some(max_part), true)
    }

    /// Every writer call fails.
    pub fn fail_always() -> Arc<WriteFaults> {
        WriteFaults::new(usize::MAX, None, true)
    }

    /// Writes wait until [`WriteFaults::open`]; parts of at most `max_part` bytes, so the first
    /// part is uploaded, and waits, in the middle of the stream.
    pub fn hold_writes(max_part: usize) -> Arc<WriteFaults> {
        WriteFaults::new(0, Some(max_part), false)
    }

    /// An in-memory operator behind this layer.
    pub fn operator(self: &Arc<Self>) -> Operator {
        Operator::via_iter("memory", [])
            .expect("memory storage")
            .layer(FaultLayer(self.clone()))
    }

    /// Resolves once a write waits at the closed gate (at once if one waited before).
    pub async fn write_waiting(&self) {
        self.waiting.notified().await;
    }

    /// Lets every waiting and future write through.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Writer calls refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Writers aborted so far.
    pub fn aborted(&self) -> usize {
        self.aborted.load(Ordering::SeqCst)
    }

    /// Writers closed successfully so far.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// No faults: every call passes, reads are counted.
    pub fn none() -> Arc<WriteFaults> {
        WriteFaults::new(0, None, true)
    }

    /// Bytes the service's readers have returned so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::SeqCst)
    }

    /// Resolves once every reader opened so far has been dropped, and at least `n` were.
    pub async fn readers_dropped(&self, n: usize) {
        let mut dropped = self.readers_dropped.subscribe();
        dropped
            .wait_for(|&d| d >= n && d == self.readers_opened.load(Ordering::SeqCst))
            .await
            .expect("the sender lives in self");
    }

    /// Refuses this call if faults remain.
    fn inject(&self, call: &str) -> Result<()> {
        let refuse = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                usize::MAX => Some(n),
                n => Some(n - 1),
            })
            .is_ok();
        if !refuse {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::SeqCst);
        Err(Error::new(
            ErrorKind::Unexpected,
            format!("injected fault: writer {call} refused"),
        ))
    }

    async fn pass_gate(&self) {
        let mut gate = self.gate.subscribe();
        if !*gate.borrow() {
            self.waiting.notify_one();
        }
        gate.wait_for(|open| *open)
            .await
            .expect("the gate's sender lives in self");
    }
}

#[derive(Debug)]
struct FaultLayer(Arc<WriteFaults>);

impl Layer for FaultLayer {
    fn apply_service(&self, inner: Servicer) -> Servicer {
        Arc::new(FaultService {
            inner,
            faults: self.0.clone(),
        })
    }
}

#[derive(Debug)]
struct FaultService {
    inner: Servicer,
    faults: Arc<WriteFaults>,
}

/// Forwards everything; only `capability`, `read` and `write` differ.
impl Service for FaultService {
    type Reader = CountingReader;
    type Writer = FaultWriter;
    type Lister = oio::Lister;
    type Deleter = oio::Deleter;
    type Copier = oio::Copier;
    type Composer = oio::Composer;

    fn info(&self) -> ServiceInfo {
        self.inner.info()
    }

    fn capability(&self) -> Capability {
        let mut capability = self.inner.capability();
        if let Some(max) = self.faults.max_part {
            // Multipart limits like an object store's, so that the service writes in parts.
            capability.write_multi_min_size = Some(max);
            capability.write_multi_max_size = Some(max);
        }
        capability
    }

    async fn create_dir(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpCreateDir,
    ) -> Result<RpCreateDir> {
        self.inner.create_dir(ctx, path, args).await
    }

    async fn stat(&self, ctx: &OperationContext, path: &str, args: OpStat) -> Result<RpStat> {
        self.inner.stat(ctx, path, args).await
    }

    fn read(&self, ctx: &OperationContext, path: &str, args: OpRead) -> Result<Self::Reader> {
        let inner = self.inner.read(ctx, path, args)?;
        self.faults.readers_opened.fetch_add(1, Ordering::SeqCst);
        Ok(CountingReader {
            inner,
            faults: self.faults.clone(),
        })
    }

    fn write(&self, ctx: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        Ok(FaultWriter {
            inner: self.inner.write(ctx, path, args)?,
            faults: self.faults.clone(),
        })
    }

    fn delete(&self, ctx: &OperationContext) -> Result<Self::Deleter> {
        self.inner.delete(ctx)
    }

    fn list(&self, ctx: &OperationContext, path: &str, args: OpList) -> Result<Self::Lister> {
        self.inner.list(ctx, path, args)
    }

    fn copy(
        &self,
        ctx: &OperationContext,
        from: &str,
        to: &str,
        args: OpCopy,
    ) -> Result<Self::Copier> {
        self.inner.copy(ctx, from, to, args)
    }

    fn compose(&self, ctx: &OperationContext, to: &str, args: OpCompose) -> Result<Self::Composer> {
        self.inner.compose(ctx, to, args)
    }

    async fn rename(
        &self,
        ctx: &OperationContext,
        from: &str,
        to: &str,
        args: OpRename,
    ) -> Result<RpRename> {
        self.inner.rename(ctx, from, to, args).await
    }

    async fn restore(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpRestore,
    ) -> Result<RpRestore> {
        self.inner.restore(ctx, path, args).await
    }

    async fn presign(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpPresign,
    ) -> Result<RpPresign> {
        self.inner.presign(ctx, path, args).await
    }
}

/// A writer whose `write` may wait or fail and whose `close` may fail, before the real
/// writer sees the call (a refused part upload, say); `abort` always reaches the real writer.
struct FaultWriter {
    inner: oio::Writer,
    faults: Arc<WriteFaults>,
}

impl oio::Write for FaultWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.faults.pass_gate().await;
        self.faults.inject("write")?;
        self.inner.write(bs).await
    }

    async fn copy_from(&mut self, path: &str, args: OpRead, range: BytesRange) -> Result<()> {
        self.inner.copy_from(path, args, range).await
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.faults.inject("close")?;
        let metadata = self.inner.close().await?;
        self.faults.closed.fetch_add(1, Ordering::SeqCst);
        Ok(metadata)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await?;
        self.faults.aborted.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A reader that counts the bytes it returns, and its own drop.
struct CountingReader {
    inner: oio::Reader,
    faults: Arc<WriteFaults>,
}

impl Drop for CountingReader {
    fn drop(&mut self) {
        self.faults.readers_dropped.send_modify(|n| *n += 1);
    }
}

impl oio::Read for CountingReader {
    async fn open(&self, range: BytesRange) -> Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        let (rp, inner) = self.inner.open(range).await?;
        let stream = CountingStream {
            inner,
            faults: self.faults.clone(),
        };
        Ok((rp, Box::new(stream)))
    }

    async fn read(&self, range: BytesRange) -> Result<(RpRead, Buffer)> {
        let (rp, buffer) = self.inner.read(range).await?;
        self.faults
            .bytes_read
            .fetch_add(buffer.len() as u64, Ordering::SeqCst);
        Ok((rp, buffer))
    }
}

struct CountingStream {
    inner: Box<dyn oio::ReadStreamDyn>,
    faults: Arc<WriteFaults>,
}

impl oio::ReadStream for CountingStream {
    async fn read(&mut self) -> Result<Buffer> {
        let buffer = self.inner.read().await?;
        self.faults
            .bytes_read
            .fetch_add(buffer.len() as u64, Ordering::SeqCst);
        Ok(buffer)
    }
}
