//! Why a session closes with an ERROR: the protocol's reasons (from chat-wire) and the chat's
//! own (destinations, transactions, limits, credentials, the backend).
//!
//! `label()` is the ERROR frame's `message` (before the detail) and the `reason` of the
//! `chat_errors_total` metric, so it is a short fixed text; the error's text is the detail.
//! Clients and tests match on these texts: they stay byte for byte.

use chat_wire::body::BodyError;
use chat_wire::stomp::{Command, FrameError, ProtocolError, excerpt};

use super::publish::{MAX_TRANSACTION_FRAMES, MAX_TRANSACTIONS};
use crate::auth::AuthError;
use crate::broker::BackendError;
use crate::destination::DestinationError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("expected CONNECT, got {0}")]
    NotConnected(Command),
    #[error("CONNECT was sent twice")]
    AlreadyConnected,
    #[error("no CONNECT frame in time")]
    ConnectTimeout,
    #[error("{0}")]
    Authentication(#[from] AuthError),
    #[error("{0}")]
    Malformed(#[from] FrameError),
    #[error("{0}")]
    Transport(axum::Error),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("{0}")]
    BadMessage(#[from] BodyError),
    #[error("not allowed in room {0:?}")]
    Forbidden(String),
    #[error("at most {0} messages per second per connection")]
    ConnectionRate(u32),
    #[error("at most {0} messages per second per user")]
    UserRate(u32),
    #[error("no transaction {:?}", excerpt(.0))]
    UnknownTransaction(String),
    #[error("transaction {:?} is already open", excerpt(.0))]
    TransactionExists(String),
    #[error("at most {} open", MAX_TRANSACTIONS)]
    TooManyTransactions,
    #[error("at most {} frames", MAX_TRANSACTION_FRAMES)]
    TransactionTooLarge,
    #[error("subscription id {:?} is in use", excerpt(.0))]
    DuplicateSubscription(String),
    #[error("at most {0} per connection")]
    TooManySubscriptions(usize),
    #[error("no subscription {:?}", excerpt(.0))]
    UnknownSubscription(String),
    /// A chat extension header (`x-since-offset`, `x-history`) that is not a whole number.
    #[error("{0} must be a whole number")]
    NotANumber(&'static str),
    #[error("{0}")]
    Unavailable(#[from] BackendError),
}

impl SessionError {
    /// The short, fixed reason: the ERROR's `message` and the metrics label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            SessionError::Protocol(e) => e.label(),
            SessionError::NotConnected(_) => "not connected",
            SessionError::AlreadyConnected => "already connected",
            SessionError::ConnectTimeout => "connect timeout",
            SessionError::Authentication(_) => "authentication failed",
            SessionError::Malformed(_) => "malformed frame",
            SessionError::Transport(_) => "websocket error",
            SessionError::Destination(_) => "bad destination",
            SessionError::BadMessage(_) => "bad message",
            SessionError::Forbidden(_) => "forbidden",
            SessionError::ConnectionRate(_) | SessionError::UserRate(_) => "rate limit exceeded",
            SessionError::UnknownTransaction(_) => "unknown transaction",
            SessionError::TransactionExists(_) => "transaction exists",
            SessionError::TooManyTransactions => "too many transactions",
            SessionError::TransactionTooLarge => "transaction too large",
            SessionError::DuplicateSubscription(_) => "duplicate subscription",
            SessionError::TooManySubscriptions(_) => "too many subscriptions",
            SessionError::UnknownSubscription(_) => "unknown subscription",
            SessionError::NotANumber(_) => "bad header",
            SessionError::Unavailable(_) => "service unavailable",
        }
    }
}
