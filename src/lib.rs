//! The `actorgate` binary's library: loading the config file ([`config`]), wiring the
//! components onto the shared runtime ([`app`], one module per component), the admin server
//! ([`admin`]) and logging ([`telemetry`]). `src/main.rs` is the CLI over it; tests run the app
//! in process with [`app::App::start`].

pub mod admin;
pub mod app;
pub mod config;
mod resolve_endpoint;
pub mod telemetry;
