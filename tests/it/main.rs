//! The integration test binary: one module per concern.

mod api; // the HTTP API, the original UI protocol, tokens and origins, through real sockets
mod cli; // the `saltpeter` command's subcommands, as a user runs them
mod daemon; // `saltpeter run` as a process: firing, hot reload, SIGHUP, shutdown
mod doctor; // `saltpeter doctor` on the lab: all checks pass, then one planted failure per check
mod engine_lab; // the daemon end to end on a real Salt lab: Phase 1, Phase 2, exit codes
mod faults; // the fault suite on the lab: crashes, a master away, cut connections, forgeries, a full disk
mod fleet; // the whole daemon under 2,000 simulated wrappers: a kill while all of them stream
mod formula; // the Salt formula on the lab: saltpeter.wrapper installs idempotently, jobs run on it
mod fuzz_props; // the fuzz targets' checks on random inputs, and the inputs fuzzing found
mod golden; // every config finding, pinned by golden files under tests/golden/config
mod ha; // several daemons on one PostgreSQL store on the lab: slots once, adoption, fencing, restarts
mod lab; // the real Salt lab (contrib/lab/lab.sh), shared by the tests that need it
mod ledger; // the fire ledger on the lab: three minutes down under each misfire policy, two daemons
mod notify; // notifications on the lab: failures and a recovery across a restart, a webhook down, slow, up
mod notify_send; // the webhook and email senders against real HTTP and SMTP servers on loopback
mod openapi; // the REST API against proto/api/openapi.json: routes and response schemas
mod proto_salt; // Salt wire formats against the captured fixtures in proto/salt
mod proto_wrapper; // the wrapper protocol against its fixtures in proto/wrapper
mod salt_lab; // the native Salt client against a real master and minions
mod salt_offline; // the Salt client and commands with no master: bounded errors, clean exits
mod smtp_sink; // the lab's SMTP sink as a child process, with a self-signed certificate, for email tests
mod support; // helpers: temp config dirs, running the binary and the daemon, HTTP calls
mod ui; // the web UI in real headless Chromium against the daemon on the lab
mod webhook_sink; // a real HTTP listener with scripted answers, for webhook tests
mod wrapper; // the real sp-wrapper against the real machines hub
mod wrapper_failover; // sp-wrapper with several daemon URLs: a dead one skipped, a run adopted by another hub
