//! The `actorgate` binary's library: loading the config file ([`config`]), wiring the
//! components onto the shared runtime ([`app`], one module per component), the admin server
//! ([`admin`]) and logging ([`telemetry`]). `src/main.rs` is the CLI over it; tests run the app
//! in process with [`app::App::start`].

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod config;
pub mod telemetry;
