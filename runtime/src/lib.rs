//! What every door of actorgate shares (DESIGN §1): listeners that expose the peer's verified
//! identity, one drain/shutdown primitive that every connection and tunnel holds, one
//! file-watch/reload helper, readiness and status registration, and config field errors.
//!
//! This crate depends on no other crate of the project, so every one of them may use it.
//!
//! | module | idea |
//! |---|---|
//! | [`drain`] | start draining, wait for held work up to a deadline, then force and count the rest |
//! | [`listener`] | one accept loop (plain TCP or TLS) with limits; connections carry [`listener::ConnInfo`] |
//! | [`read_ahead`] | a lazily allocated read-ahead buffer under TLS (fewer reads of the socket) |
//! | [`http`] | serving hyper on a listener, graceful on drain and on idle connections |
//! | [`reload`] | debounced file watch: reload on change, keep the previous value on a bad file |
//! | [`health`] | readiness checks and `/statusz` sections registered by components |
//! | [`config`] | config problems with their field paths |

#![warn(missing_docs)]

pub mod config;
pub mod drain;
pub mod health;
pub mod http;
pub mod listener;
pub mod read_ahead;
pub mod reload;

pub use drain::{Drain, DrainGuard, DrainReport, DrainSignal};
pub use health::{Health, ProbeHysteresis};
pub use listener::{BoundListener, Conn, ConnInfo, ListenerLimits, PeerIdentity, ServerTlsSource};
pub use reload::{ReloadStatus, Reloader};
