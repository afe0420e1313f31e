//! The integration test binary: one module per concern.

mod cli; // the `saltpeter` command's subcommands, as a user runs them
mod daemon; // `saltpeter run` as a process: firing, hot reload, SIGHUP, shutdown
mod golden; // every config finding, pinned by golden files under tests/golden/config
mod support; // helpers: temp config dirs, running the binary, reading its output
