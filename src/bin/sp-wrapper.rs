//! `sp-wrapper`: run by Salt on each minion with the job in its `SP_*` environment. Validates
//! the settings (an error exits non-zero with a one-line message, before detaching, so Salt's
//! return carries it), detaches so Salt returns at once, then runs the job. `--version` prints
//! `sp-wrapper <version> (protocol <n>)` and exits 0, reading no environment.

use saltpeter::wrapper::{self, settings::Settings};

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "--version" || a == "-V")
    {
        println!(
            "sp-wrapper {} (protocol {})",
            saltpeter::VERSION,
            saltpeter::protocol::PROTOCOL_VERSION
        );
        return;
    }
    println!("Saltpeter Wrapper version {}", saltpeter::VERSION);
    // The minion's environment is not ours: variables that are not UTF-8 are skipped, not a
    // panic (ours are all `SP_*` text).
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let settings = match Settings::from_vars(
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &saltpeter::hostname(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(2);
        }
    };
    if std::env::var_os("SP_NO_DETACH").is_none()
        && let Err(e) = wrapper::detach::detach()
    {
        eprintln!("Error: cannot detach: {e}");
        std::process::exit(2);
    }
    std::process::exit(wrapper::run(settings));
}
