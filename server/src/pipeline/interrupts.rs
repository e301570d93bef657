//! What can stop a running job from outside, checked between batches and between steps.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::step::StepError;

/// The two ways a job is stopped from outside its steps.
#[derive(Debug, Clone, Default)]
pub struct Interrupts {
    /// The worker's heartbeat found the job claimed again: another worker owns it now.
    pub lease_lost: CancellationToken,
    /// The process is shutting down: the job is handed back.
    pub shutdown: CancellationToken,
}

impl Interrupts {
    /// `Err` once either has fired.
    pub fn check(&self) -> Result<(), StepError> {
        if self.lease_lost.is_cancelled() {
            Err(StepError::LeaseLost)
        } else if self.shutdown.is_cancelled() {
            Err(StepError::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Sleeps `delay`, or less when interrupted (then `Err`).
    pub async fn sleep(&self, delay: Duration) -> Result<(), StepError> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.lease_lost.cancelled() => Err(StepError::LeaseLost),
            _ = self.shutdown.cancelled() => Err(StepError::Shutdown),
        }
    }

    /// Runs `work` to its end, or stops it when interrupted (then `Err`).
    pub async fn race<T>(&self, work: impl Future<Output = T>) -> Result<T, StepError> {
        tokio::select! {
            done = work => Ok(done),
            _ = self.lease_lost.cancelled() => Err(StepError::LeaseLost),
            _ = self.shutdown.cancelled() => Err(StepError::Shutdown),
        }
    }
}
