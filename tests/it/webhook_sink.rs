//! A real HTTP listener for webhook tests: records every request (method, path, headers,
//! body) and answers each with the next scripted reply — a status, a status with a body, or
//! silence for a while (a slow endpoint) — then 200 once the script is used up.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the sink answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// This status with this body. A 3xx also carries a `Location` back to this sink
    /// (`/elsewhere`), so a client that follows redirects shows up as one more request.
    Answer(u16, String),
    /// Says nothing for this long, then closes the connection.
    Hang(Duration),
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub struct WebhookSink {
    pub url: String,
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl WebhookSink {
    pub fn start(script: impl IntoIterator<Item = Reply>) -> WebhookSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}/hook");
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let script = Arc::new(Mutex::new(script.into_iter().collect::<VecDeque<_>>()));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (reqs, replies) = (reqs.clone(), script.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &reqs, &replies);
                });
            }
        });
        WebhookSink {
            url,
            addr,
            requests,
        }
    }

    /// The port it listens on (127.0.0.1), for a URL with another path.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `ready` holds for the requests so far.
    pub fn wait(
        &self,
        what: &str,
        within: Duration,
        ready: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.requests();
            if ready(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the webhook received {} request(s): {:#?}",
                seen.len(),
                seen.iter().map(|r| &r.body).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn serve(
    stream: std::net::TcpStream,
    requests: &Mutex<Vec<Request>>,
    script: &Mutex<VecDeque<Reply>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let reply = script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Status(200));
    requests.lock().unwrap().push(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    });
    let mut stream = stream;
    match reply {
        Reply::Status(status) => write!(
            stream,
            "HTTP/1.1 {status} Scripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Reply::Answer(status, body) => {
            let location = if (300..400).contains(&status) {
                format!("Location: http://{}/elsewhere\r\n", stream.local_addr()?)
            } else {
                String::new()
            };
            write!(
                stream,
                "HTTP/1.1 {status} Scripted\r\nContent-Length: {}\r\n{location}Connection: close\r\n\r\n",
                body.len()
            )?;
            // The client may hang up after the first few KiB of a long body.
            stream.write_all(body.as_bytes())
        }
        Reply::Hang(d) => {
            std::thread::sleep(d);
            Ok(())
        }
    }
}
