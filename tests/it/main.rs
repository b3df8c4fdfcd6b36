//! The integration tests: one binary, a module per concern (as cargo's own
//! testsuite is), so that libtorch is linked once rather than per file.
//! Run one concern with `cargo test --test it <module>::`.
mod common;

mod balancing;
mod calibration;
mod cli;
mod connections;
mod consistency;
mod counts;
mod deploy;
mod lifecycle;
mod monitoring;
mod onboard;
mod pipeline;
mod replica;
mod request_rules;
mod schedule_tuning;
mod server_certify;
mod server_errors;
mod server_interop;
mod server_methods;
mod server_ops;
mod server_sequential;
mod surrogate;
mod traces;
