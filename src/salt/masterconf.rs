//! Discovers the Salt master's settings the way Salt's own client does: the master config file
//! (`/etc/salt/master`) plus its includes (`master.d/*.conf` by default), with Salt's defaults.

use std::path::{Path, PathBuf};

use crate::yaml::{self, Kind, Node};

pub const DEFAULT_MASTER_CONFIG: &str = "/etc/salt/master";

/// What saltpeter needs to know about the master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaltSettings {
    /// Where the settings came from, for messages.
    pub source: PathBuf,
    pub interface: String,
    pub ret_port: u16,
    pub sock_dir: PathBuf,
    pub cachedir: PathBuf,
    pub user: String,
    /// `ipc` (unix sockets) or `tcp` (loopback ports).
    pub ipc_mode: String,
    pub tcp_master_pub_port: u16,
    pub hash_type: String,
    /// The master's request workers (`worker_threads`): how many publishes it serves at once.
    pub worker_threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MasterConfigError {
    #[error("cannot read the Salt master config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{col}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: u32,
        col: u32,
        message: String,
    },
}

impl SaltSettings {
    /// Salt's own defaults (`salt/config/__init__.py` `DEFAULT_MASTER_OPTS`).
    pub fn defaults(source: &Path) -> SaltSettings {
        SaltSettings {
            source: source.to_path_buf(),
            interface: "0.0.0.0".into(),
            ret_port: 4506,
            sock_dir: "/var/run/salt/master".into(),
            cachedir: "/var/cache/salt/master".into(),
            user: "root".into(),
            ipc_mode: "ipc".into(),
            tcp_master_pub_port: 4512,
            hash_type: "sha256".into(),
            worker_threads: 5,
        }
    }

    /// Reads `path` and what it includes. A missing default file (`/etc/salt/master`) means
    /// Salt's defaults, as for Salt itself; a missing explicit file is an error.
    pub fn load(path: Option<&Path>) -> Result<SaltSettings, MasterConfigError> {
        let explicit = path.is_some();
        let path = path.unwrap_or(Path::new(DEFAULT_MASTER_CONFIG));
        let mut settings = SaltSettings::defaults(path);
        let mut root_dir = PathBuf::from("/");
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(settings),
            Err(source) => {
                return Err(MasterConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut files = vec![(path.to_path_buf(), text)];
        let base = path.parent().unwrap_or(Path::new("/"));
        let main = parse(path, &files[0].1)?;
        let includes = match main
            .as_ref()
            .and_then(|m| find(m, "include").or_else(|| find(m, "default_include")))
        {
            Some(node) => strings(node),
            None => vec!["master.d/*.conf".to_string()],
        };
        for pattern in includes {
            for include in glob(base, &pattern) {
                if let Ok(text) = std::fs::read_to_string(&include) {
                    files.push((include, text));
                }
            }
        }
        for (file, text) in &files {
            let Some(root) = parse(file, text)? else {
                continue;
            };
            let Some(entries) = root.as_map() else {
                continue;
            };
            for (key, value) in entries {
                let Some(scalar) = value.as_scalar().filter(|s| !s.is_null()) else {
                    continue;
                };
                let text = scalar.text.clone();
                let port = |what: &str| -> Result<u16, MasterConfigError> {
                    text.parse().map_err(|_| MasterConfigError::Invalid {
                        path: file.clone(),
                        line: value.pos.line,
                        col: value.pos.col,
                        message: format!("`{what}` must be a port number, found `{text}`"),
                    })
                };
                match key.key_str().unwrap_or_default() {
                    "interface" => settings.interface = text,
                    "ret_port" => settings.ret_port = port("ret_port")?,
                    "sock_dir" => settings.sock_dir = text.into(),
                    "cachedir" => settings.cachedir = text.into(),
                    "user" => settings.user = text,
                    "ipc_mode" => settings.ipc_mode = text,
                    "tcp_master_pub_port" => {
                        settings.tcp_master_pub_port = port("tcp_master_pub_port")?
                    }
                    "hash_type" => settings.hash_type = text,
                    // A bad value is Salt's to refuse; ours is only a pool size.
                    "worker_threads" => {
                        settings.worker_threads = text.parse().unwrap_or(5).clamp(1, 64)
                    }
                    "root_dir" => root_dir = text.into(),
                    _ => {}
                }
            }
        }
        // Salt prepends `root_dir` to these paths unless they already lie under it.
        for p in [&mut settings.sock_dir, &mut settings.cachedir] {
            if root_dir != Path::new("/") && !p.starts_with(&root_dir) {
                *p = root_dir.join(p.strip_prefix("/").unwrap_or(p));
            }
        }
        Ok(settings)
    }

    /// `saltpeter_config.salt_*` overrides applied over the master's own config.
    pub fn with_overrides(mut self, o: &crate::config::SaltOverrides) -> SaltSettings {
        if let Some(v) = &o.interface {
            self.interface = v.clone();
        }
        if let Some(v) = o.ret_port {
            self.ret_port = v;
        }
        if let Some(v) = &o.sock_dir {
            self.sock_dir = v.into();
        }
        if let Some(v) = &o.cachedir {
            self.cachedir = v.into();
        }
        if let Some(v) = &o.user {
            self.user = v.clone();
        }
        self
    }

    /// The master's settings as the daemon's config says to find them.
    pub fn from_config(
        o: &crate::config::SaltOverrides,
    ) -> Result<SaltSettings, MasterConfigError> {
        let path = o.master_config.as_deref().map(Path::new);
        Ok(SaltSettings::load(path)?.with_overrides(o))
    }

    /// The request server's address: `interface` (a wildcard means this host) and `ret_port`.
    pub fn request_endpoint(&self) -> String {
        let host = match self.interface.as_str() {
            "0.0.0.0" | "" => "127.0.0.1",
            "::" => "::1",
            other => other,
        };
        if host.contains(':') {
            format!("tcp://[{host}]:{}", self.ret_port)
        } else {
            format!("tcp://{host}:{}", self.ret_port)
        }
    }

    /// The key file Salt's LocalClient reads as root: `<cachedir>/.<user>_key`, where the user
    /// is the master's `user` (root's own key when the master runs as root).
    pub fn key_file(&self) -> PathBuf {
        self.cachedir.join(format!(".{}_key", self.user))
    }

    /// Where the event bus is published.
    pub fn event_source(&self) -> EventSource {
        if self.ipc_mode == "tcp" {
            EventSource::Tcp(format!("127.0.0.1:{}", self.tcp_master_pub_port))
        } else {
            EventSource::Unix(self.sock_dir.join("master_event_pub.ipc"))
        }
    }
}

/// The master's event bus endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventSource {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventSource::Unix(p) => write!(f, "{}", p.display()),
            EventSource::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

fn parse(path: &Path, text: &str) -> Result<Option<Node>, MasterConfigError> {
    yaml::parse(text)
        .map(|d| d.root)
        .map_err(|e| MasterConfigError::Invalid {
            path: path.to_path_buf(),
            line: e.pos.line,
            col: e.pos.col,
            message: e.message,
        })
}

fn find<'a>(root: &'a Node, key: &str) -> Option<&'a Node> {
    root.as_map()?
        .iter()
        .find(|(k, _)| k.key_str() == Some(key))
        .map(|(_, v)| v)
}

fn strings(node: &Node) -> Vec<String> {
    match &node.kind {
        Kind::Scalar(s) => vec![s.text.clone()],
        Kind::Seq(items) => items
            .iter()
            .filter_map(|n| n.as_scalar().map(|s| s.text.clone()))
            .collect(),
        Kind::Map(_) => Vec::new(),
    }
}

/// Minimal glob for Salt's include patterns: `*` in the file name part only.
fn glob(base: &Path, pattern: &str) -> Vec<PathBuf> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let (Some(dir), Some(name)) = (full.parent(), full.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    if !name.contains('*') {
        return if full.is_file() {
            vec![full]
        } else {
            Vec::new()
        };
    }
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.len() >= prefix.len() + suffix.len()
                    && n.starts_with(prefix)
                    && n.ends_with(suffix)
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_includes_and_root_dir() {
        let dir = tempfile::tempdir().unwrap();
        let master = dir.path().join("master");
        std::fs::write(
            &master,
            "interface: 10.1.2.3\nret_port: 14506\nuser: salt\nroot_dir: /srv/r\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("master.d")).unwrap();
        std::fs::write(
            dir.path().join("master.d/zz.conf"),
            "ipc_mode: tcp\ntcp_master_pub_port: 4599\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("master.d/ignored.txt"), "ret_port: 1\n").unwrap();
        let s = SaltSettings::load(Some(&master)).unwrap();
        assert_eq!(s.request_endpoint(), "tcp://10.1.2.3:14506");
        assert_eq!(
            s.key_file(),
            PathBuf::from("/srv/r/var/cache/salt/master/.salt_key")
        );
        assert_eq!(s.event_source(), EventSource::Tcp("127.0.0.1:4599".into()));
        std::fs::write(&master, "ret_port: nope\n").unwrap();
        let e = SaltSettings::load(Some(&master)).unwrap_err().to_string();
        assert!(
            e.ends_with("master:1:11: `ret_port` must be a port number, found `nope`"),
            "{e}"
        );
        assert!(SaltSettings::load(Some(&dir.path().join("none"))).is_err());
    }

    #[test]
    fn saltpeter_config_overrides_win() {
        let dir = tempfile::tempdir().unwrap();
        let master = dir.path().join("master");
        std::fs::write(&master, "ret_port: 14506\ncachedir: /c\n").unwrap();
        let o = crate::config::SaltOverrides {
            master_config: Some(master.display().to_string()),
            ret_port: Some(4999),
            user: Some("salt".into()),
            ..Default::default()
        };
        let s = SaltSettings::from_config(&o).unwrap();
        assert_eq!(
            (s.ret_port, s.key_file()),
            (4999, PathBuf::from("/c/.salt_key"))
        );
    }
}
