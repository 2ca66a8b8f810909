//! The operator's one error type; `metric_label()` names each kind for the failure counter.

/// Everything a reconcile (or the operator's start-up) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    /// The spec asks for something the operator will not do (CEL normally stops it earlier).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A Secret the spec names is missing or lacks the key.
    #[error("secret {name}: {reason}")]
    MissingSecret {
        /// The Secret's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Secret the spec names holds something the servers would refuse (a URL that is not
    /// PostgreSQL's, a CA file without a certificate). Never quotes the value.
    #[error("secret {name}: {reason}")]
    InvalidSecret {
        /// The Secret's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The generated password Secret is gone while Redis data (its StatefulSet or volume
    /// claims) still exists: a new password would lock the servers out of that data.
    #[error(
        "secret {name} is gone but Redis data still exists ({evidence}); not generating a new \
         password: restore the Secret (key \"password\") with the old password"
    )]
    PasswordSecretLost {
        /// The Secret's name.
        name: String,
        /// What still holds data.
        evidence: String,
    },
    /// The object lacks a namespace or name the operator needs.
    #[error("object without {0}")]
    MissingObjectKey(&'static str),
    /// A manifest could not be (de)serialised.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A YAML manifest could not be (de)serialised.
    #[error("yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// This replica lost (or could not keep) the leader Lease.
    #[error("lost the leader lease: {0}")]
    LostLease(String),
    /// A call (or a whole reconcile) took longer than its limit.
    #[error("{what}: no answer within {after_ms} ms")]
    Timeout {
        /// What was attempted.
        what: &'static str,
        /// The limit.
        after_ms: u64,
    },
    /// The operator's own HTTP endpoint failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Asking a Redis data node failed.
    #[error("redis {addr}: {reason}")]
    Redis {
        /// `host:port` of the node.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// Asking a sentinel failed.
    #[error("sentinel {addr}: {reason}")]
    Sentinel {
        /// `host:port` of the sentinel.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    /// A short, stable label for metrics.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::MissingSecret { .. } => "missing_secret",
            Self::InvalidSecret { .. } => "invalid_secret",
            Self::PasswordSecretLost { .. } => "password_secret_lost",
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::Serialization(_) => "serialization",
            Self::Yaml(_) => "yaml",
            Self::Sentinel { .. } => "sentinel",
            Self::Redis { .. } => "redis",
            Self::LostLease(_) => "lost_lease",
            Self::Timeout { .. } => "timeout",
            Self::Io(_) => "io",
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_are_short_snake_case_words() {
        let errors = [
            Error::InvalidSpec("x".into()),
            Error::MissingSecret {
                name: "s".into(),
                reason: "gone".into(),
            },
            Error::MissingObjectKey("namespace"),
            Error::PasswordSecretLost {
                name: "s".into(),
                evidence: "x".into(),
            },
            Error::Sentinel {
                addr: "a:1".into(),
                reason: "down".into(),
            },
        ];
        for e in errors {
            let label = e.metric_label();
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
        }
    }
}
