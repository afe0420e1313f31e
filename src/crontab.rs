//! `saltpeter import-crontab`: a crontab (user format, or system format with a user column)
//! turned into job YAML that keeps its meaning. Pure: text in, YAML and findings out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::config::TargetType;
use crate::schedule::{Cron, DomDow};

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// `None`: a placeholder the operator must replace (and a warning says so).
    pub targets: Option<String>,
    pub target_type: TargetType,
    /// System crontab format: a user column after the five time fields.
    pub system: bool,
    /// Shown in the header comment.
    pub source_name: String,
}

#[derive(Debug, Default)]
pub struct Imported {
    pub yaml: String,
    pub jobs: usize,
    /// Lines that could not be converted (`line N: why`); they are also kept in the YAML as
    /// comments so nothing is lost.
    pub rejected: Vec<String>,
    pub warnings: Vec<String>,
}

const PLACEHOLDER_TARGETS: &str = "CHANGE-ME";

/// Converts a crontab.
pub fn import(text: &str, opts: &ImportOptions) -> Imported {
    let mut out = Imported::default();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut timezone: Option<String> = None;
    let mut names = BTreeSet::new();
    let mut body = String::new();
    for (index, raw) in text.lines().enumerate() {
        let lineno = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = env_assignment(line) {
            match name.as_str() {
                "CRON_TZ" => timezone = Some(value),
                "MAILTO" | "MAILFROM" => out.warnings.push(format!(
                    "line {lineno}: {name} is ignored (saltpeter keeps each run's output in its history)"
                )),
                "SHELL" if value != "/bin/sh" => out.warnings.push(format!(
                    "line {lineno}: SHELL={value} is ignored: commands run with /bin/sh -c"
                )),
                "SHELL" => {}
                _ => {
                    env.insert(name, value);
                }
            }
            continue;
        }
        match job(line, opts) {
            Ok(job) => {
                let name = unique_name(&job.command, &mut names);
                write_job(
                    &mut body,
                    &name,
                    &job,
                    opts,
                    &env,
                    timezone.as_deref(),
                    lineno,
                );
                out.jobs += 1;
            }
            Err(why) => {
                out.rejected.push(format!("line {lineno}: {why}"));
                let _ = writeln!(body, "# NOT IMPORTED (line {lineno}: {why}):\n#   {raw}\n");
            }
        }
    }
    if opts.targets.is_none() && out.jobs > 0 {
        out.warnings.push(format!(
            "no --targets given: replace `targets: {PLACEHOLDER_TARGETS}` before using these jobs"
        ));
    }
    let _ = writeln!(
        out.yaml,
        "# Imported from {} by saltpeter import-crontab.",
        opts.source_name
    );
    out.yaml.push_str(&body);
    out
}

struct CronLine {
    fields: [String; 5],
    user: Option<String>,
    command: String,
}

fn env_assignment(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once('=')?;
    let name = name.trim();
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return None;
    }
    let value = value.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
        .unwrap_or(value);
    Some((name.to_string(), unquoted.to_string()))
}

fn job(line: &str, opts: &ImportOptions) -> Result<CronLine, String> {
    let mut rest = line;
    let take = |rest: &mut &str| -> Option<String> {
        let trimmed = rest.trim_start();
        let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        if end == 0 {
            return None;
        }
        let token = trimmed[..end].to_string();
        *rest = &trimmed[end..];
        Some(token)
    };
    let first = take(&mut rest).ok_or("empty line")?;
    let fields: [String; 5] = if let Some(mac) = first.strip_prefix('@') {
        let expanded = match mac {
            "yearly" | "annually" => "0 0 1 1 *",
            "monthly" => "0 0 1 * *",
            "weekly" => "0 0 * * 0",
            "daily" | "midnight" => "0 0 * * *",
            "hourly" => "0 * * * *",
            "reboot" => {
                return Err(
                    "@reboot has no saltpeter equivalent: jobs run on a schedule, not at boot; \
                            use a systemd unit or a Salt state for start-up tasks"
                        .into(),
                );
            }
            other => return Err(format!("unknown macro @{other}")),
        };
        let v: Vec<String> = expanded.split(' ').map(String::from).collect();
        v.try_into().expect("five fields")
    } else {
        let mut v = vec![first];
        for _ in 0..4 {
            v.push(take(&mut rest).ok_or("fewer than five time fields")?);
        }
        v.try_into().expect("five fields")
    };
    let user = if opts.system {
        Some(take(&mut rest).ok_or("missing the user column (system crontab format)")?)
    } else {
        None
    };
    let command = rest.trim().to_string();
    if command.is_empty() {
        return Err("missing the command".into());
    }
    let line = CronLine {
        fields,
        user,
        command: percent_to_shell(&command),
    };
    // The expression must be valid for saltpeter too.
    let f = &line.fields;
    Cron::parse(["0", &f[0], &f[1], &f[2], &f[3], &f[4], "*"], dom_dow(f))
        .map_err(|e| format!("bad time field: {}", e[0]))?;
    Ok(line)
}

/// Vixie cron ORs day of month and day of week when both are restricted.
fn dom_dow(fields: &[String; 5]) -> DomDow {
    let restricted = |f: &str| !f.starts_with('*') && f != "?";
    if restricted(&fields[2]) && restricted(&fields[4]) {
        DomDow::Or
    } else {
        DomDow::And
    }
}

/// In a crontab, an unescaped `%` ends the command and the rest is its standard input, with
/// further `%`s as newlines; `\%` is a literal `%`. The same meaning in `/bin/sh` is a here-doc.
fn percent_to_shell(command: &str) -> String {
    let mut cmd = String::new();
    let mut stdin: Option<String> = None;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' && stdin.is_none() {
            stdin = Some(String::new());
            continue;
        }
        let target = stdin.as_mut().unwrap_or(&mut cmd);
        match c {
            '\\' if chars.peek() == Some(&'%') => {
                target.push('%');
                chars.next();
            }
            '%' => target.push('\n'),
            _ => target.push(c),
        }
    }
    match stdin {
        None => cmd,
        Some(input) => format!("{cmd} <<'SALTPETER_STDIN'\n{input}\nSALTPETER_STDIN"),
    }
}

/// A job name from the command: the script or program it runs.
fn unique_name(command: &str, taken: &mut BTreeSet<String>) -> String {
    const WRAPPERS: &[&str] = &[
        "python", "python2", "python3", "php", "sh", "bash", "perl", "ruby", "node", "env", "nice",
        "ionice", "sudo", "timeout", "flock", "exec",
    ];
    let program = command
        .split_whitespace()
        .filter(|t| !t.contains('=') && !t.starts_with('-'))
        .map(|t| t.rsplit('/').next().unwrap_or(t))
        .find(|t| !WRAPPERS.contains(t) && t.parse::<f64>().is_err())
        .unwrap_or("job");
    let stem = program.split('.').next().unwrap_or(program);
    let mut base: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.is_empty() || base.starts_with('.') {
        base = "job".into();
    }
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}_{n}");
        n += 1;
    }
    taken.insert(name.clone());
    name
}

fn quote(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar, byte for byte.
    serde_json::to_string(s).expect("strings serialize")
}

fn write_job(
    out: &mut String,
    name: &str,
    job: &CronLine,
    opts: &ImportOptions,
    env: &BTreeMap<String, String>,
    timezone: Option<&str>,
    lineno: usize,
) {
    let f = &job.fields;
    let _ = writeln!(
        out,
        "# line {lineno}: {} {} {} {} {}",
        f[0], f[1], f[2], f[3], f[4]
    );
    let _ = writeln!(out, "{}:", quote(name));
    for (key, value) in ["min", "hour", "dom", "mon", "dow"].iter().zip(f) {
        let _ = writeln!(out, "  {key}: {}", quote(value));
    }
    if dom_dow(f) == DomDow::Or {
        let _ = writeln!(out, "  dom_dow: or");
    }
    if let Some(tz) = timezone {
        let _ = writeln!(out, "  timezone: {}", quote(tz));
    }
    let targets = opts.targets.as_deref().unwrap_or(PLACEHOLDER_TARGETS);
    let _ = writeln!(out, "  targets: {}", quote(targets));
    let _ = writeln!(out, "  target_type: {}", opts.target_type);
    let _ = writeln!(out, "  command: {}", quote(&job.command));
    if let Some(user) = &job.user {
        let _ = writeln!(out, "  user: {}", quote(user));
    }
    if !env.is_empty() {
        let _ = writeln!(out, "  env:");
        for (k, v) in env {
            let _ = writeln!(out, "    {}: {}", quote(k), quote(v));
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Loader, SourceFile};

    fn opts(system: bool) -> ImportOptions {
        ImportOptions {
            targets: Some("web*".into()),
            target_type: TargetType::Glob,
            system,
            source_name: "crontab".into(),
        }
    }

    fn load(yaml: &str) -> crate::config::Loaded {
        let file = SourceFile {
            path: "i.yaml".into(),
            group: "i".into(),
            text: Ok(yaml.into()),
        };
        Loader::new("h").load(&[file])
    }

    #[test]
    fn system_crontab_round_trips_with_its_meaning() {
        let tab = "SHELL=/bin/sh\nPATH=/usr/bin:/bin\nMAILTO=root\n\
                   # comment\n\
                   17 * * * * root cd / && run-parts --report /etc/cron.hourly\n\
                   0 4 1 * mon backup /usr/bin/python3 /opt/backup.py --full\n\
                   @daily root /usr/local/bin/rotate.sh\n\
                   @reboot root /usr/local/bin/start\n\
                   5 0 * * * root mail -s \"50\\% done\" admin%Hello%World\n";
        let out = import(tab, &opts(true));
        assert_eq!(out.jobs, 4);
        assert_eq!(out.rejected.len(), 1);
        assert!(
            out.rejected[0].starts_with("line 8: @reboot has no saltpeter equivalent"),
            "{:?}",
            out.rejected
        );
        assert!(out.yaml.contains("#   @reboot root /usr/local/bin/start"));
        let loaded = load(&out.yaml);
        assert_eq!(loaded.errors(), 0, "{:?}\n{}", loaded.diagnostics, out.yaml);
        let jobs = &loaded.config.jobs;
        let keys: Vec<&str> = jobs.keys().map(String::as_str).collect();
        assert_eq!(keys, ["backup", "cd", "mail", "rotate"]);
        let backup = &jobs["backup"];
        assert_eq!(backup.user.as_deref(), Some("backup"));
        assert_eq!(backup.env["PATH"], "/usr/bin:/bin");
        assert!(!backup.env.contains_key("MAILTO"));
        // Vixie semantics: the 1st of the month OR any Monday.
        let from: jiff::Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            backup.schedule.next_after(from).unwrap().to_string(),
            "2025-01-06T04:00:00Z"
        );
        assert_eq!(jobs["rotate"].expression, "0 0 0 * * * *");
        assert_eq!(
            jobs["mail"].command,
            "mail -s \"50% done\" admin <<'SALTPETER_STDIN'\nHello\nWorld\nSALTPETER_STDIN"
        );
    }

    #[test]
    fn user_format_names_and_placeholders() {
        let tab = "*/5 * * * * /opt/a.sh\n*/5 * * * * /opt/a.sh --again\n1 2 3 4 5\n0 0 30 2 * x\n";
        let mut o = opts(false);
        o.targets = None;
        let out = import(tab, &o);
        assert_eq!(out.jobs, 3);
        assert_eq!(out.rejected, ["line 3: missing the command"]);
        assert!(
            out.warnings
                .iter()
                .any(|w| w.contains("no --targets given"))
        );
        let loaded = load(&out.yaml);
        let keys: Vec<&str> = loaded.config.jobs.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "a_2", "x"]);
        // Feb 30 imports (it is valid grammar) and `check` warns that it never fires.
        assert!(
            loaded
                .diagnostics
                .iter()
                .any(|d| d.code == crate::config::Code::NeverFires)
        );
    }

    #[test]
    fn bad_fields_are_rejected_with_the_reason() {
        let out = import("61 * * * * x\n", &opts(false));
        assert_eq!(
            out.rejected,
            ["line 1: bad time field: 61 is out of range for `min` (0-59)"]
        );
    }
}
