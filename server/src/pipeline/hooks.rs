//! Faults on purpose, for the tests that run the real binary: a step that panics, batches that
//! take longer. Off unless `EXPORTD_TEST_FAULTS` is set (never in production): the variable is
//! read once at start, and `exportd` logs a warning when it is.
//!
//! `EXPORTD_TEST_FAULTS=panic-in=stream-export,batch-delay-ms=50`

use std::time::Duration;

use crate::queue::StepName;

/// The faults asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultHooks {
    /// This step panics each time it starts.
    pub panic_in: Option<StepName>,
    /// Each batch of the stream waits this long after it is written.
    pub batch_delay: Option<Duration>,
}

/// The variable the hooks are read from.
pub const VARIABLE: &str = "EXPORTD_TEST_FAULTS";

impl FaultHooks {
    /// Parses `key=value,…`; an unknown key or value is an error naming it.
    pub fn parse(spec: &str) -> Result<FaultHooks, String> {
        let mut hooks = FaultHooks::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{VARIABLE}: {part:?} is not key=value"))?;
            match key {
                "panic-in" => {
                    hooks.panic_in = Some(
                        StepName::parse(value)
                            .ok_or_else(|| format!("{VARIABLE}: no step {value:?}"))?,
                    )
                }
                "batch-delay-ms" => {
                    let ms: u64 = value
                        .parse()
                        .map_err(|_| format!("{VARIABLE}: batch-delay-ms={value:?}"))?;
                    hooks.batch_delay = Some(Duration::from_millis(ms));
                }
                other => return Err(format!("{VARIABLE}: unknown fault {other:?}")),
            }
        }
        Ok(hooks)
    }

    /// The hooks of this process's environment (none when the variable is unset).
    pub fn from_env() -> Result<FaultHooks, String> {
        match std::env::var(VARIABLE) {
            Ok(spec) => FaultHooks::parse(&spec),
            Err(_) => Ok(FaultHooks::default()),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == FaultHooks::default()
    }

    /// Panics if asked to for `step`.
    pub fn before_step(&self, step: StepName) {
        if self.panic_in == Some(step) {
            panic!("{VARIABLE}: panic in step {step}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_faults_and_refuses_unknown_ones() {
        assert_eq!(FaultHooks::parse("").unwrap(), FaultHooks::default());
        assert_eq!(
            FaultHooks::parse("panic-in=stream-export, batch-delay-ms=50").unwrap(),
            FaultHooks {
                panic_in: Some(StepName::StreamExport),
                batch_delay: Some(Duration::from_millis(50)),
            }
        );
        assert!(FaultHooks::parse("panic-in=nope").is_err());
        assert!(FaultHooks::parse("explode=1").is_err());
        assert!(FaultHooks::parse("batch-delay-ms").is_err());
    }
}
