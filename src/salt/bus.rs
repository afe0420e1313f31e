//! Subscribes to the master's event bus (a unix socket, or loopback TCP with `ipc_mode: tcp`),
//! splits and decodes frames, and reconnects with backoff when the master restarts. Reports
//! connection changes too, so a consumer can reconcile what it missed from the job cache.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::masterconf::EventSource;
use super::wire::{self, BadFrame, Event, FrameSplitter, WireError};

/// What the subscription reports, in order.
#[derive(Debug)]
pub enum BusMessage {
    Connected(EventSource),
    /// The connection failed or ended; the next attempt is in `retry_in`.
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    Event(Event),
    /// Unreadable bytes were skipped and the stream resynchronised.
    BadFrame(BadFrame),
    /// A frame was read but could not be decoded; it was skipped.
    BadEvent(WireError),
}

/// Exponential backoff between reconnection attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt; each call doubles the following one, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Reads the bus until `tx` is closed. Connection failures are reported and retried forever.
pub async fn subscribe(source: EventSource, tx: mpsc::Sender<BusMessage>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let reason = match connect(&source).await {
            Ok(mut stream) => {
                backoff.reset();
                if tx
                    .send(BusMessage::Connected(source.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
                match pump(&mut stream, &tx).await {
                    Pump::ConsumerGone => return,
                    Pump::Ended(reason) => reason,
                }
            }
            Err(e) => e.to_string(),
        };
        let retry_in = backoff.next_delay();
        if tx
            .send(BusMessage::Disconnected { reason, retry_in })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

trait Stream: tokio::io::AsyncRead + Unpin + Send {}
impl<T: tokio::io::AsyncRead + Unpin + Send> Stream for T {}

async fn connect(source: &EventSource) -> std::io::Result<Box<dyn Stream>> {
    Ok(match source {
        EventSource::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        EventSource::Tcp(addr) => Box::new(tokio::net::TcpStream::connect(addr).await?),
    })
}

enum Pump {
    ConsumerGone,
    Ended(String),
}

async fn pump(stream: &mut Box<dyn Stream>, tx: &mpsc::Sender<BusMessage>) -> Pump {
    let mut splitter = FrameSplitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => return Pump::Ended("the master closed the event bus".into()),
            Ok(n) => n,
            Err(e) => return Pump::Ended(e.to_string()),
        };
        splitter.push(&buf[..n]);
        while let Some(frame) = splitter.next_frame() {
            let message = match frame {
                Ok(bytes) => match wire::decode_event(&bytes) {
                    Ok(event) => BusMessage::Event(event),
                    Err(e) => BusMessage::BadEvent(e),
                },
                Err(bad) => BusMessage::BadFrame(bad),
            };
            if tx.send(message).await.is_err() {
                return Pump::ConsumerGone;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn reports_disconnects_with_backoff_and_reads_frames_after_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.ipc");
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(subscribe(EventSource::Unix(path.clone()), tx));
        // No socket yet: two failures, 100 ms then 200 ms apart (paused clock).
        for want in [100, 200] {
            match rx.recv().await.unwrap() {
                BusMessage::Disconnected { retry_in, .. } => assert_eq!(retry_in.as_millis(), want),
                other => panic!("{other:?}"),
            }
        }
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(rx.recv().await.unwrap(), BusMessage::Connected(_)));
        let (mut server, _) = listener.accept().await.unwrap();
        let frame = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proto/salt/3006.29/event_job_ret.bin"
        ))
        .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut server, &frame)
            .await
            .unwrap();
        match rx.recv().await.unwrap() {
            BusMessage::Event(e) => assert_eq!(e.job_ret().unwrap().ret, rmpv::Value::from("hi")),
            other => panic!("{other:?}"),
        }
        drop(server);
        match rx.recv().await.unwrap() {
            BusMessage::Disconnected { retry_in, .. } => assert_eq!(retry_in.as_millis(), 100),
            other => panic!("{other:?}"),
        }
    }
}
