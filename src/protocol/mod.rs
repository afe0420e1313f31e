//! The wrapper ⇄ daemon protocol: text WebSocket frames, one JSON object each, with the
//! original Saltpeter's message names and fields (so its deployed Python wrappers work against
//! this daemon) plus negotiated extensions that old peers ignore. Used by both `sp-wrapper`
//! and the daemon's machines hub; pure (no sockets). Spec: `proto/wrapper/README.md`.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Absent in a peer's messages = the original (0).
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The largest `data` the wrapper puts in one `output` message.
pub const MAX_OUTPUT_CHUNK: usize = 256 * 1024;

/// Who a message is about; every message carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub job_name: String,
    pub job_instance: String,
    pub machine: String,
    /// RFC 3339 with `+00:00` (the original's Python `isoformat()` shape); absent = now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// Wrapper → daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WrapperMsg {
    Connect {
        #[serde(flatten)]
        header: Header,
        #[serde(flatten)]
        ext: Ext,
        /// Extension: after a reconnect, the last output `seq` the daemon acknowledged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<i64>,
    },
    Start {
        #[serde(flatten)]
        header: Header,
        pid: i64,
        #[serde(default = "unknown_version")]
        version: String,
        #[serde(flatten)]
        ext: Ext,
    },
    Output {
        #[serde(flatten)]
        header: Header,
        #[serde(default = "stdout")]
        stream: String,
        data: String,
        seq: i64,
        #[serde(flatten)]
        ext: Ext,
    },
    Heartbeat {
        #[serde(flatten)]
        header: Header,
        #[serde(flatten)]
        ext: Ext,
    },
    SyncRequest {
        #[serde(flatten)]
        header: Header,
        #[serde(default)]
        last_acked_seq: i64,
        #[serde(default)]
        next_seq: i64,
        #[serde(flatten)]
        ext: Ext,
    },
    Complete {
        #[serde(flatten)]
        header: Header,
        retcode: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        #[serde(flatten)]
        ext: Ext,
    },
    Error {
        #[serde(flatten)]
        header: Header,
        error: String,
        #[serde(flatten)]
        ext: Ext,
    },
    /// Accepted for compatibility (the original server took it); carries nothing.
    Killed {
        #[serde(flatten)]
        header: Header,
    },
}

/// Negotiated extensions: absent from the original's messages, ignored by the original.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// The per-run secret the daemon handed the wrapper in `SP_RUN_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn unknown_version() -> String {
    "unknown".into()
}

fn stdout() -> String {
    "stdout".into()
}

/// Daemon → wrapper.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DaemonMsg {
    Ack {
        ack_type: AckType,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        timestamp: String,
        /// Extension (on `ack connect`): the protocol the daemon speaks, and how many output
        /// messages may be in flight unacknowledged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u32>,
    },
    Nack {
        nack_type: String,
        expected_seq: i64,
        received_seq: i64,
        timestamp: String,
    },
    SyncResponse {
        last_seq: i64,
        timestamp: String,
    },
    Kill {
        job_name: String,
        job_instance: String,
        machine: String,
        timestamp: String,
    },
    Error {
        code: String,
        message: String,
        timestamp: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckType {
    Connect,
    Start,
    Output,
    Complete,
}

/// Error codes the daemon sends.
pub mod codes {
    /// The original's: the run is unknown (never registered, or long finished).
    pub const JOB_NOT_FOUND: &str = "JOB_NOT_FOUND";
    pub const BAD_TOKEN: &str = "BAD_TOKEN";
    /// Salt has not named this machine as a target of the run (yet): try again later.
    pub const NOT_A_TARGET: &str = "NOT_A_TARGET";
    pub const BAD_MESSAGE: &str = "BAD_MESSAGE";
    pub const TOO_LARGE: &str = "MESSAGE_TOO_LARGE";
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES} byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl WrapperMsg {
    pub fn header(&self) -> &Header {
        match self {
            WrapperMsg::Connect { header, .. }
            | WrapperMsg::Start { header, .. }
            | WrapperMsg::Output { header, .. }
            | WrapperMsg::Heartbeat { header, .. }
            | WrapperMsg::SyncRequest { header, .. }
            | WrapperMsg::Complete { header, .. }
            | WrapperMsg::Error { header, .. }
            | WrapperMsg::Killed { header } => header,
        }
    }

    pub fn ext(&self) -> Option<&Ext> {
        match self {
            WrapperMsg::Connect { ext, .. }
            | WrapperMsg::Start { ext, .. }
            | WrapperMsg::Output { ext, .. }
            | WrapperMsg::Heartbeat { ext, .. }
            | WrapperMsg::SyncRequest { ext, .. }
            | WrapperMsg::Complete { ext, .. }
            | WrapperMsg::Error { ext, .. } => Some(ext),
            WrapperMsg::Killed { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            WrapperMsg::Connect { .. } => "connect",
            WrapperMsg::Start { .. } => "start",
            WrapperMsg::Output { .. } => "output",
            WrapperMsg::Heartbeat { .. } => "heartbeat",
            WrapperMsg::SyncRequest { .. } => "sync_request",
            WrapperMsg::Complete { .. } => "complete",
            WrapperMsg::Error { .. } => "error",
            WrapperMsg::Killed { .. } => "killed",
        }
    }

    pub fn decode(text: &str) -> Result<WrapperMsg, DecodeError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(text.len()));
        }
        Ok(serde_json::from_str(text)?)
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("messages serialize")
    }
}

impl DaemonMsg {
    pub fn decode(text: &str) -> Result<DaemonMsg, DecodeError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(text.len()));
        }
        Ok(serde_json::from_str(text)?)
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("messages serialize")
    }
}

/// A timestamp in the shape the original's Python server parses (`+00:00`, microseconds).
pub fn timestamp_from_unix_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Now, in that shape (reads the system clock; the wrapper has no other clock module).
pub fn timestamp_now() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    timestamp_from_unix_micros(micros)
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_pythons_isoformat() {
        assert_eq!(
            timestamp_from_unix_micros(0),
            "1970-01-01T00:00:00.000000+00:00"
        );
        assert_eq!(
            timestamp_from_unix_micros(1_766_484_000_123_456),
            "2025-12-23T10:00:00.123456+00:00"
        );
        assert_eq!(
            timestamp_from_unix_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000+00:00"
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_optional_ones_defaulted() {
        let m = WrapperMsg::decode(
            r#"{"type":"start","job_name":"j","job_instance":"j_1","machine":"m","pid":7,"extra":[1]}"#,
        )
        .unwrap();
        let WrapperMsg::Start {
            version,
            ext,
            header,
            ..
        } = m
        else {
            panic!()
        };
        assert_eq!(
            (version.as_str(), ext.token, header.timestamp),
            ("unknown", None, None)
        );
        assert!(WrapperMsg::decode(r#"{"type":"explode","job_name":"j"}"#).is_err());
        assert!(WrapperMsg::decode(&" ".repeat(MAX_MESSAGE_BYTES + 1)).is_err());
    }
}
