//! End-to-end tests: the real `skiff` binary on free loopback ports, real sockets, real
//! wasm components built from functions/ and tests/guests/.

mod bad_input;
mod cluster;
mod console;
mod deploy_files;
mod dev_session;
mod devloop;
mod disk;
mod events;
mod faults;
mod gate;
mod harness;
mod lifecycle;
mod logs;
mod metrics;
mod netns;
mod partition;
mod polyglot;
mod replicated;
mod sandbox;
mod schedules;
mod security;
mod serving;
mod sharding;
mod state;
mod wasi_p3;
