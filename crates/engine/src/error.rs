//! How a deploy ends when it does not succeed, each with its process exit code.

/// How a deploy ended, when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Nothing was changed: bad input, missing artifact, a port held by a stranger, or the
    /// service is locked.
    #[error("{0}")]
    Refused(String),
    /// The environment is broken (journal cannot be written, the balancer's own config is
    /// invalid): the deploy stopped before its next step; the journal says how far it got and the
    /// next `nonstop deploy` recovers from there.
    #[error("{0}")]
    Environment(String),
    /// The new release failed (or an operator's change stopped the deploy); the previous state
    /// serves again.
    #[error("{0}")]
    RolledBack(String),
    /// Something failed and could not be fully undone; the message says what serves and what to check.
    #[error("{0}")]
    Failed(String),
}

impl DeployError {
    /// Process exit code: 2 rolled back, 3 refused or environment error, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            DeployError::RolledBack(_) => 2,
            DeployError::Refused(_) | DeployError::Environment(_) => 3,
            DeployError::Failed(_) => 1,
        }
    }
}

impl From<nonstop_store::StoreError> for DeployError {
    fn from(e: nonstop_store::StoreError) -> Self {
        match e {
            e @ nonstop_store::StoreError::Locked { .. } => DeployError::Refused(e.to_string()),
            e => DeployError::Environment(e.to_string()),
        }
    }
}

/// Why one step failed: decides whether the executor undoes what it did (and how it reports).
#[derive(Debug, Clone, PartialEq)]
pub enum StepError {
    /// The step failed (release unhealthy, crashed, balancer refused): undo and report rolled back.
    Failed(String),
    /// An operator changed the balancer during the deploy: undo only what the deploy changed.
    Operator(String),
    /// The environment is broken: stop, undo what can be undone without the broken part.
    Environment(String),
    /// The journal could not be written: stop at once, change nothing more.
    Journal(String),
}

impl StepError {
    pub fn message(&self) -> &str {
        match self {
            StepError::Failed(m)
            | StepError::Operator(m)
            | StepError::Environment(m)
            | StepError::Journal(m) => m,
        }
    }
}

impl From<nonstop_ports::PortError> for StepError {
    fn from(e: nonstop_ports::PortError) -> Self {
        if e.is_environment() {
            StepError::Environment(e.message)
        } else {
            StepError::Failed(e.message)
        }
    }
}
