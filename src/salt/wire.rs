//! Salt's wire formats, pure: the publish envelope sent to the request server, its replies,
//! the event bus's frames and events, typed views of job events, and jids. No sockets here.
//! Pinned by the captured fixtures in `proto/salt/`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use rmpv::Value;

/// The largest event frame accepted (Salt's own `max_event_size` default is far lower for
/// most events; large returns still fit).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

// === publish ===

/// A Salt target: an expression, or an explicit minion list (`tgt_type: list`).
#[derive(Clone, Debug, PartialEq)]
pub enum Tgt {
    Expr(String),
    List(Vec<String>),
}

/// One job to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub tgt: Tgt,
    pub tgt_type: String,
    pub fun: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments, sent the way Salt's LocalClient does: a trailing
    /// `{"__kwarg__": true, ...}` in `arg`.
    pub kwargs: BTreeMap<String, Value>,
    /// A pre-generated jid (see [`JidGen`]); empty lets the master choose.
    pub jid: String,
    /// The user recorded with the job.
    pub user: String,
    /// Returners (`""`: none).
    pub ret: String,
}

impl Publish {
    pub fn new(tgt: Tgt, tgt_type: &str, fun: &str) -> Publish {
        Publish {
            tgt,
            tgt_type: tgt_type.to_string(),
            fun: fun.to_string(),
            args: Vec::new(),
            kwargs: BTreeMap::new(),
            jid: String::new(),
            user: "root".to_string(),
            ret: String::new(),
        }
    }

    /// `fun <jid>` to a list of minions: `saltutil.find_job` (is it still running there?) or
    /// `saltutil.term_job` (stop it).
    pub fn about_job(minions: Vec<String>, fun: &str, jid: &str) -> Publish {
        let mut p = Publish::new(Tgt::List(minions), "list", fun);
        p.args = vec![Value::from(jid)];
        p
    }
}

fn s(text: &str) -> Value {
    Value::from(text)
}

/// The request as msgpack: `{"enc": "clear", "load": {...}, "version": 3}`.
pub fn encode_publish(p: &Publish, key: &str) -> Vec<u8> {
    let mut arg: Vec<Value> = p.args.clone();
    if !p.kwargs.is_empty() {
        let mut kw = vec![(s("__kwarg__"), Value::Boolean(true))];
        kw.extend(p.kwargs.iter().map(|(k, v)| (s(k), v.clone())));
        arg.push(Value::Map(kw));
    }
    let tgt = match &p.tgt {
        Tgt::Expr(e) => s(e),
        Tgt::List(l) => Value::Array(l.iter().map(|m| s(m)).collect()),
    };
    let load = Value::Map(vec![
        (s("cmd"), s("publish")),
        (s("tgt"), tgt),
        (s("fun"), s(&p.fun)),
        (s("arg"), Value::Array(arg)),
        (s("key"), s(key)),
        (s("tgt_type"), s(&p.tgt_type)),
        (s("ret"), s(&p.ret)),
        (s("jid"), s(&p.jid)),
        (s("user"), s(&p.user)),
    ]);
    let envelope = Value::Map(vec![
        (s("enc"), s("clear")),
        (s("load"), load),
        (s("version"), Value::from(3)),
    ]);
    let mut out = Vec::with_capacity(256);
    rmpv::encode::write_value(&mut out, &envelope).expect("writing to a Vec cannot fail");
    out
}

/// Decodes a publish request (for tests and tools; the master is the real reader).
pub fn decode_publish(bytes: &[u8]) -> Result<(Publish, String), WireError> {
    let v = read_value(bytes)?;
    let load = get(&v, "load").ok_or(WireError::Shape("publish request without `load`"))?;
    let text = |k: &str| get(load, k).map(value_text).unwrap_or_default();
    let mut args = match get(load, "arg") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let mut kwargs = BTreeMap::new();
    let is_kwarg =
        |(k, v): &(Value, Value)| value_text(k) == "__kwarg__" && *v == Value::Boolean(true);
    if let Some(Value::Map(m)) = args.last()
        && m.iter().any(is_kwarg)
    {
        for (k, v) in m {
            if value_text(k) != "__kwarg__" {
                kwargs.insert(value_text(k), v.clone());
            }
        }
        args.pop();
    }
    let tgt = match get(load, "tgt") {
        Some(Value::Array(a)) => Tgt::List(a.iter().map(value_text).collect()),
        Some(v) => Tgt::Expr(value_text(v)),
        None => Tgt::Expr(String::new()),
    };
    let publish = Publish {
        tgt,
        tgt_type: text("tgt_type"),
        fun: text("fun"),
        args,
        kwargs,
        jid: text("jid"),
        user: text("user"),
        ret: text("ret"),
    };
    Ok((publish, text("key")))
}

/// Every reply shape of the request server, as a value.
#[derive(Clone, Debug, PartialEq)]
pub enum PublishReply {
    /// Published: the jid, the minions expected to return, and `list` targets with no key.
    Published {
        jid: String,
        minions: Vec<String>,
        missing: Vec<String>,
    },
    /// The target matched no minion.
    NoMinions { message: String },
    /// The key was wrong (the master rewrites it at every start).
    AuthenticationError { message: String },
    /// The user may not publish this.
    AuthorizationError { message: String },
    /// The master rejected the request's shape (`"bad load"`).
    BadLoad { message: String },
    /// Anything else the master said.
    Error { message: String },
}

pub fn decode_reply(bytes: &[u8]) -> Result<PublishReply, WireError> {
    let v = read_value(bytes)?;
    if let Some(text) = v.as_str() {
        return Ok(PublishReply::BadLoad {
            message: text.to_string(),
        });
    }
    if let Some(err) = get(&v, "error") {
        let name = get(err, "name").map(value_text).unwrap_or_default();
        let message = get(err, "message")
            .map(value_text)
            .unwrap_or_else(|| value_text(err));
        return Ok(match name.as_str() {
            "AuthenticationError" => PublishReply::AuthenticationError { message },
            "AuthorizationError" => PublishReply::AuthorizationError { message },
            _ => PublishReply::Error { message },
        });
    }
    if let Some(msg) = get(&v, "msg") {
        return Ok(PublishReply::BadLoad {
            message: value_text(msg),
        });
    }
    let Some(load) = get(&v, "load") else {
        return Ok(PublishReply::Error {
            message: format!("unexpected reply from the master: {}", to_json(&v)),
        });
    };
    let list = |k: &str| -> Vec<String> {
        match get(load, k) {
            Some(Value::Array(a)) => a.iter().map(value_text).collect(),
            _ => Vec::new(),
        }
    };
    let jid = get(load, "jid").filter(|j| !j.is_nil()).map(value_text);
    match jid {
        Some(jid) if !list("minions").is_empty() || get(load, "error").is_none() => {
            Ok(PublishReply::Published {
                jid,
                minions: list("minions"),
                missing: list("missing"),
            })
        }
        _ => Ok(PublishReply::NoMinions {
            message: get(load, "error")
                .map(value_text)
                .unwrap_or_else(|| "the target matched no minion".into()),
        }),
    }
}

// === jids ===

/// Salt-format jids (`%Y%m%d%H%M%S%f`, UTC, 20 digits), strictly increasing: two publishes in
/// the same microsecond get consecutive microseconds, so a jid is never reused.
#[derive(Debug, Default)]
pub struct JidGen {
    last_micros: i64,
}

impl JidGen {
    pub fn next(&mut self, now: Timestamp) -> String {
        let micros = (now.as_microsecond()).max(self.last_micros + 1);
        self.last_micros = micros;
        let at = Timestamp::from_microsecond(micros).expect("jid time in range");
        at.strftime("%Y%m%d%H%M%S%6f").to_string()
    }
}

// === event bus framing ===

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid msgpack: {0}")]
    Msgpack(String),
    #[error("unexpected shape: {0}")]
    Shape(&'static str),
}

/// A frame the splitter could not read; its bytes were skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("skipped {skipped} byte(s) of unreadable event stream: {reason}")]
pub struct BadFrame {
    pub skipped: usize,
    pub reason: String,
}

/// Splits the event bus byte stream into frames. Accepts both framings Salt uses (a bare
/// msgpack map, and a 4-byte big-endian length before it), never trusts a length beyond
/// `max_frame`, and resynchronises after garbage.
#[derive(Debug)]
pub struct FrameSplitter {
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
}

impl Default for FrameSplitter {
    fn default() -> Self {
        FrameSplitter::new(MAX_FRAME)
    }
}

enum Probe {
    /// A whole frame: (bytes to consume, payload range).
    Frame(usize, std::ops::Range<usize>),
    Incomplete,
    Bad(String),
}

impl FrameSplitter {
    pub fn new(max_frame: usize) -> FrameSplitter {
        FrameSplitter {
            buf: Vec::new(),
            start: 0,
            max_frame,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next frame's msgpack payload, an error for skipped garbage, or `None` for "need
    /// more bytes".
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, BadFrame>> {
        let data = &self.buf[self.start..];
        if data.is_empty() {
            return None;
        }
        match self.probe(data) {
            Probe::Frame(consumed, payload) => {
                let frame = data[payload].to_vec();
                self.start += consumed;
                Some(Ok(frame))
            }
            Probe::Incomplete => None,
            Probe::Bad(reason) => {
                // Skip to the next position where a frame could start.
                let mut skipped = 1;
                while skipped < data.len() && !plausible_start(&data[skipped..], self.max_frame) {
                    skipped += 1;
                }
                self.start += skipped;
                Some(Err(BadFrame { skipped, reason }))
            }
        }
    }

    fn probe(&self, data: &[u8]) -> Probe {
        let first = data[0];
        if is_map_marker(first) {
            return match msgpack_len(data, self.max_frame) {
                Ok(Some(n)) => Probe::Frame(n, 0..n),
                Ok(None) => Probe::Incomplete,
                Err(e) => Probe::Bad(e),
            };
        }
        if data.len() < 5 {
            // A length prefix not read whole: refused now only if it will be once it is.
            return if least_len(data) > self.max_frame {
                Probe::Bad(format!(
                    "frame length {} or more exceeds the {} byte limit",
                    least_len(data),
                    self.max_frame
                ))
            } else {
                Probe::Incomplete
            };
        }
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len > self.max_frame {
            return Probe::Bad(format!(
                "frame length {len} exceeds the {} byte limit",
                self.max_frame
            ));
        }
        if !is_map_marker(data[4]) {
            return Probe::Bad(format!(
                "length-prefixed frame does not hold a map (0x{:02x})",
                data[4]
            ));
        }
        if data.len() < 4 + len {
            return Probe::Incomplete;
        }
        match msgpack_len(&data[4..4 + len], len) {
            Ok(Some(n)) if n == len => Probe::Frame(4 + len, 4..4 + len),
            Ok(_) => Probe::Bad(format!("frame length {len} does not match its content")),
            Err(e) => Probe::Bad(e),
        }
    }
}

fn is_map_marker(b: u8) -> bool {
    (0x80..=0x8f).contains(&b) || b == 0xde || b == 0xdf
}

/// Whether a frame could start at `data[0]`: a map, or a length prefix within `max_frame`
/// before one. Bytes not read yet count as fitting, so the answer never depends on where a
/// read ended: the probe that follows waits for them.
fn plausible_start(data: &[u8], max_frame: usize) -> bool {
    is_map_marker(data[0])
        || (least_len(data) <= max_frame && data.get(4).is_none_or(|b| is_map_marker(*b)))
}

/// The smallest length a 4-byte big-endian prefix starting `data` can have (unread bytes 0).
fn least_len(data: &[u8]) -> usize {
    let mut prefix = [0; 4];
    let known = data.len().min(4);
    prefix[..known].copy_from_slice(&data[..known]);
    u32::from_be_bytes(prefix) as usize
}

/// The byte length of the first msgpack value in `buf`: `Ok(None)` when more bytes are needed,
/// `Err` for invalid data or a value that would exceed `max` bytes. Allocates nothing.
pub fn msgpack_len(buf: &[u8], max: usize) -> Result<Option<usize>, String> {
    let mut pos = 0usize;
    let mut pending = 1usize;
    let be = |at: usize, n: usize| -> Option<usize> {
        let bytes = buf.get(at..at + n)?;
        Some(
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
        )
    };
    while pending > 0 {
        let Some(&m) = buf.get(pos) else {
            return Ok(None);
        };
        pending -= 1;
        // (header bytes, payload bytes, child values)
        let (head, body, children): (usize, usize, usize) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
            0x80..=0x8f => (1, 0, 2 * usize::from(m & 0x0f)),
            0x90..=0x9f => (1, 0, usize::from(m & 0x0f)),
            0xa0..=0xbf => (1, usize::from(m & 0x1f), 0),
            0xc1 => return Err("invalid msgpack marker 0xc1".into()),
            0xc4 | 0xd9 => match be(pos + 1, 1) {
                Some(n) => (2, n, 0),
                None => return Ok(None),
            },
            0xc5 | 0xda => match be(pos + 1, 2) {
                Some(n) => (3, n, 0),
                None => return Ok(None),
            },
            0xc6 | 0xdb => match be(pos + 1, 4) {
                Some(n) => (5, n, 0),
                None => return Ok(None),
            },
            0xc7 => match be(pos + 1, 1) {
                Some(n) => (3, n, 0),
                None => return Ok(None),
            },
            0xc8 => match be(pos + 1, 2) {
                Some(n) => (4, n, 0),
                None => return Ok(None),
            },
            0xc9 => match be(pos + 1, 4) {
                Some(n) => (6, n, 0),
                None => return Ok(None),
            },
            0xca => (5, 0, 0),
            0xcb => (9, 0, 0),
            0xcc | 0xd0 => (2, 0, 0),
            0xcd | 0xd1 => (3, 0, 0),
            0xce | 0xd2 => (5, 0, 0),
            0xcf | 0xd3 => (9, 0, 0),
            0xd4 => (3, 0, 0),
            0xd5 => (4, 0, 0),
            0xd6 => (6, 0, 0),
            0xd7 => (10, 0, 0),
            0xd8 => (18, 0, 0),
            0xdc => match be(pos + 1, 2) {
                Some(n) => (3, 0, n),
                None => return Ok(None),
            },
            0xdd => match be(pos + 1, 4) {
                Some(n) => (5, 0, n),
                None => return Ok(None),
            },
            0xde => match be(pos + 1, 2) {
                Some(n) => (3, 0, 2 * n),
                None => return Ok(None),
            },
            0xdf => match be(pos + 1, 4) {
                Some(n) => (5, 0, 2 * n),
                None => return Ok(None),
            },
        };
        pos = pos.saturating_add(head).saturating_add(body);
        pending = pending.saturating_add(children);
        // Every pending value takes at least one more byte.
        if pos.saturating_add(pending) > max {
            return Err(format!("value exceeds the {max} byte limit"));
        }
    }
    if pos > buf.len() {
        return Ok(None);
    }
    Ok(Some(pos))
}

// === events ===

/// One event from the bus: its tag and its data.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub tag: String,
    pub data: Value,
}

/// Decodes one frame: `{"head": {}, "body": <tag "\n\n" msgpack(data)>}`.
pub fn decode_event(frame: &[u8]) -> Result<Event, WireError> {
    let outer = read_value(frame)?;
    let body: &[u8] = match get(&outer, "body") {
        Some(Value::Binary(b)) => b,
        Some(Value::String(s)) => s.as_bytes(),
        _ => return Err(WireError::Shape("event frame without `body`")),
    };
    let Some(split) = body.windows(2).position(|w| w == b"\n\n") else {
        // A tag alone (no data) is legal for some events.
        return Ok(Event {
            tag: visible(body),
            data: Value::Nil,
        });
    };
    let data = if split + 2 < body.len() {
        read_value(&body[split + 2..])?
    } else {
        Value::Nil
    };
    Ok(Event {
        tag: visible(&body[..split]),
        data,
    })
}

/// `salt/job/<jid>/new`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobNew {
    pub jid: String,
    pub tgt_type: String,
    pub tgt: Value,
    pub user: String,
    pub fun: String,
    pub arg: Vec<Value>,
    pub minions: Vec<String>,
    pub missing: Vec<String>,
    pub stamp: Option<Timestamp>,
}

/// `salt/job/<jid>/ret/<minion>`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRet {
    pub id: String,
    pub jid: String,
    pub fun: String,
    pub fun_args: Vec<Value>,
    pub ret: Value,
    pub retcode: Option<i64>,
    pub success: Option<bool>,
    pub stamp: Option<Timestamp>,
    pub out: Option<String>,
}

impl JobRet {
    /// The exit code: `retcode`, else 1 when Salt says it failed, else 0.
    pub fn exit_code(&self) -> i64 {
        self.retcode
            .unwrap_or(if self.success == Some(false) { 1 } else { 0 })
    }

    /// The text of a return for people: `cmd.run_all`'s stderr (else stdout), or the return
    /// itself as text (Salt's own error strings, `cmd.run`'s output).
    pub fn text(&self) -> String {
        let field = |k: &str| get(&self.ret, k).map(value_text).filter(|s| !s.is_empty());
        match &self.ret {
            Value::Map(_) => field("stderr")
                .or_else(|| field("stdout"))
                .unwrap_or_default(),
            other => value_text(other),
        }
    }

    /// A `saltutil.find_job` answer saying the job still runs there (a non-empty map).
    pub fn reports_running(&self) -> bool {
        matches!(&self.ret, Value::Map(m) if !m.is_empty())
    }

    /// The return as people read it: text as is, anything else as indented JSON.
    pub fn pretty(&self) -> String {
        match &self.ret {
            Value::String(_) | Value::Binary(_) => value_text(&self.ret),
            other => serde_json::to_string_pretty(&to_json(other)).unwrap_or_default(),
        }
    }

    /// The bus event this return came (or would have come) as.
    pub fn to_event(&self) -> Event {
        let data = Value::Map(vec![
            (s("id"), s(&self.id)),
            (s("jid"), s(&self.jid)),
            (s("fun"), s(&self.fun)),
            (s("return"), self.ret.clone()),
            (s("retcode"), self.retcode.map_or(Value::Nil, Value::from)),
            (s("success"), self.success.map_or(Value::Nil, Value::from)),
        ]);
        Event {
            tag: format!("salt/job/{}/ret/{}", self.jid, self.id),
            data,
        }
    }

    /// A `test.ping` answer of `True`.
    pub fn is_true(&self) -> bool {
        self.ret == Value::Boolean(true)
    }
}

impl Event {
    /// The jid of a `salt/job/<jid>/...` event.
    pub fn jid(&self) -> Option<&str> {
        self.tag.strip_prefix("salt/job/")?.split('/').next()
    }

    pub fn job_new(&self) -> Option<JobNew> {
        let rest = self.tag.strip_prefix("salt/job/")?;
        let (jid, kind) = rest.split_once('/')?;
        if kind != "new" {
            return None;
        }
        let d = &self.data;
        Some(JobNew {
            jid: get(d, "jid")
                .map(value_text)
                .unwrap_or_else(|| jid.to_string()),
            tgt_type: get(d, "tgt_type").map(value_text).unwrap_or_default(),
            tgt: get(d, "tgt").cloned().unwrap_or(Value::Nil),
            user: get(d, "user").map(value_text).unwrap_or_default(),
            fun: get(d, "fun").map(value_text).unwrap_or_default(),
            arg: array(d, "arg"),
            minions: array(d, "minions").iter().map(value_text).collect(),
            missing: array(d, "missing").iter().map(value_text).collect(),
            stamp: get(d, "_stamp").and_then(|v| parse_stamp(&value_text(v))),
        })
    }

    pub fn job_ret(&self) -> Option<JobRet> {
        let rest = self.tag.strip_prefix("salt/job/")?;
        let (jid, minion) = rest.split_once("/ret/")?;
        let d = &self.data;
        Some(JobRet {
            id: get(d, "id")
                .map(value_text)
                .unwrap_or_else(|| minion.to_string()),
            jid: get(d, "jid")
                .map(value_text)
                .unwrap_or_else(|| jid.to_string()),
            fun: get(d, "fun").map(value_text).unwrap_or_default(),
            fun_args: array(d, "fun_args"),
            ret: get(d, "return").cloned().unwrap_or(Value::Nil),
            retcode: get(d, "retcode").and_then(Value::as_i64),
            success: get(d, "success").and_then(Value::as_bool),
            stamp: get(d, "_stamp").and_then(|v| parse_stamp(&value_text(v))),
            out: get(d, "out").map(value_text),
        })
    }

    /// The event a minion's return makes on the bus, in the shape Salt gives it: `ret` is a
    /// `cmd.run_all` map (`retcode`, `stdout`, `stderr`) when `stdout` is given, else the plain
    /// value `true` (a `test.ping`, or a `find_job` answer that is a non-empty map when
    /// `running`). For tests of what consumes the bus.
    #[cfg(test)]
    pub fn job_return(
        jid: &str,
        minion: &str,
        fun: &str,
        retcode: i64,
        stdout: Option<&str>,
        running: bool,
    ) -> Event {
        let ret = match (stdout, running) {
            (Some(out), _) => Value::Map(vec![
                (s("pid"), Value::from(1)),
                (s("retcode"), Value::from(retcode)),
                (s("stdout"), s(out)),
                (s("stderr"), s("")),
            ]),
            (None, true) => Value::Map(vec![(s("jid"), s(jid))]),
            (None, false) if fun == "saltutil.find_job" => Value::Map(vec![]),
            (None, false) => Value::Boolean(true),
        };
        let data = Value::Map(vec![
            (s("id"), s(minion)),
            (s("jid"), s(jid)),
            (s("fun"), s(fun)),
            (s("return"), ret),
            (s("retcode"), Value::from(retcode)),
            (s("success"), Value::Boolean(retcode == 0)),
        ]);
        Event {
            tag: format!("salt/job/{jid}/ret/{minion}"),
            data,
        }
    }

    /// The event as JSON: `{"tag": ..., "data": ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "tag": self.tag, "data": to_json(&self.data) })
    }
}

/// `_stamp`: naive UTC (`2026-11-26T03:19:50.296316`, Salt 3006/3007) or with an offset (3008).
pub fn parse_stamp(text: &str) -> Option<Timestamp> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Some(t);
    }
    let dt: jiff::civil::DateTime = text.parse().ok()?;
    dt.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

// === msgpack helpers ===

fn read_value(bytes: &[u8]) -> Result<Value, WireError> {
    let mut cursor = bytes;
    rmpv::decode::read_value_with_max_depth(&mut cursor, 256)
        .map_err(|e| WireError::Msgpack(e.to_string()))
}

/// A map's value by string key (str or bin keys).
pub fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Map(entries) => entries.iter().find(|(k, _)| key_is(k, key)).map(|(_, v)| v),
        _ => None,
    }
}

fn key_is(k: &Value, key: &str) -> bool {
    match k {
        Value::String(s) => s.as_bytes() == key.as_bytes(),
        Value::Binary(b) => b == key.as_bytes(),
        _ => false,
    }
}

fn array(v: &Value, key: &str) -> Vec<Value> {
    match get(v, key) {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    }
}

/// Text of a scalar: strings (invalid UTF-8 kept visible as `\xNN`), numbers, booleans.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => visible(s.as_bytes()),
        Value::Binary(b) => visible(b),
        Value::Nil => String::new(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::F32(f) => f.to_string(),
        Value::F64(f) => f.to_string(),
        other => to_json(other).to_string(),
    }
}

/// Bytes as text; invalid UTF-8 sequences are shown as `\xNN` rather than dropped.
pub fn visible(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The longest text a list or map used as a map key becomes in JSON.
const MAX_KEY_TEXT: usize = 1024;

/// A map key as JSON object key: its text, and a list or map key (msgpack allows any) as its
/// JSON cut to [`MAX_KEY_TEXT`] bytes: escaping doubles the text at every key nested in a key,
/// so a few hundred bytes of such nesting would otherwise take gigabytes.
fn json_key(k: &Value) -> String {
    let mut text = value_text(k);
    if text.len() > MAX_KEY_TEXT {
        let mut cut = MAX_KEY_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// msgpack → JSON: bin as text when it is UTF-8, ext types as `{"ext": type, "hex": ...}`
/// (Salt's datetime ext 78 as its text).
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => i
            .as_i64()
            .map(J::from)
            .or_else(|| i.as_u64().map(J::from))
            .unwrap_or(J::Null),
        Value::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => J::String(visible(s.as_bytes())),
        Value::Binary(b) => J::String(visible(b)),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, v)| (json_key(k), to_json(v))).collect()),
        Value::Ext(78, data) => J::String(visible(data)),
        Value::Ext(t, data) => serde_json::json!({
            "ext": t,
            "hex": data.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_len_walks_nested_values_and_waits_for_more() {
        let mut buf = Vec::new();
        let v = Value::Map(vec![(
            s("a"),
            Value::Array(vec![Value::from(1), Value::Binary(vec![0; 300])]),
        )]);
        rmpv::encode::write_value(&mut buf, &v).unwrap();
        assert_eq!(msgpack_len(&buf, MAX_FRAME), Ok(Some(buf.len())));
        for cut in 0..buf.len() {
            assert_eq!(
                msgpack_len(&buf[..cut], MAX_FRAME),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert!(msgpack_len(&buf, 100).is_err());
        assert!(msgpack_len(&[0xc1], MAX_FRAME).is_err());
        // A map32 claiming 2^32 entries is refused without allocating.
        assert!(msgpack_len(&[0xdf, 0xff, 0xff, 0xff, 0xff], 1 << 20).is_err());
    }

    #[test]
    fn splitter_handles_both_framings_byte_by_byte_and_resyncs() {
        let mut frame = Vec::new();
        rmpv::encode::write_value(
            &mut frame,
            &Value::Map(vec![(s("head"), Value::Map(vec![]))]),
        )
        .unwrap();
        let mut stream = frame.clone();
        stream.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        stream.extend_from_slice(&frame);
        stream.extend_from_slice(b"\xc1garbage");
        stream.extend_from_slice(&frame);
        let mut sp = FrameSplitter::default();
        let mut got = Vec::new();
        for b in &stream {
            sp.push(std::slice::from_ref(b));
            while let Some(r) = sp.next_frame() {
                got.push(r.map_err(|e| e.skipped));
            }
        }
        let ok: Vec<_> = got.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(ok.len(), 3, "{got:?}");
        assert!(got.iter().any(|r| r.is_err()));
        assert_eq!(sp.pending(), 0);
    }

    #[test]
    fn oversized_length_prefix_is_refused() {
        let mut sp = FrameSplitter::new(1024);
        sp.push(&[0, 0, 0x10, 0, 0x82]);
        assert!(matches!(sp.next_frame(), Some(Err(_))));
    }

    #[test]
    fn jids_are_salt_format_and_unique_within_a_microsecond() {
        let mut g = JidGen::default();
        let t: Timestamp = "2026-11-26T03:19:50.294346Z".parse().unwrap();
        assert_eq!(g.next(t), "20261126031950294346");
        assert_eq!(g.next(t), "20261126031950294347");
        let t2: Timestamp = "2026-11-26T03:19:59.999999Z".parse().unwrap();
        assert_eq!(g.next(t2), "20261126031959999999");
        assert_eq!(g.next(t2), "20261126032000000000");
    }

    #[test]
    fn stamps_with_and_without_offset() {
        let a = parse_stamp("2026-11-26T03:19:50.296316").unwrap();
        let b = parse_stamp("2026-11-26T03:19:50.296316+00:00").unwrap();
        assert_eq!(a, b);
        assert!(parse_stamp("yesterday").is_none());
    }

    #[test]
    fn invalid_utf8_stays_visible() {
        assert_eq!(visible(b"ok\xff\xfeok"), "ok\\xff\\xfeok");
    }
}
