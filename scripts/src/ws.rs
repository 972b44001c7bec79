//! Websocket plumbing shared by LVSP and the voice gateway: a `Link`
//! drives a sans-IO session over a websocket (frames in, queued frames
//! out, heartbeats from a background task), and a cloneable [`WsWriter`]
//! sends whatever a test wants besides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::{ClientError, Result, SessionError};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One thing read from a websocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame (DAVE at gateway v8).
    Binary(Vec<u8>),
    /// The peer closed (with this close code) or the stream ended (`None`).
    Closed(Option<u16>),
}

/// The sending half of a websocket; clones share one connection.
#[derive(Debug, Clone)]
pub struct WsWriter(Arc<Mutex<SplitSink<Stream, Message>>>);

impl WsWriter {
    /// Sends a text frame.
    pub async fn send_text(&self, text: String) -> Result<()> {
        self.0.lock().await.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends a binary frame.
    pub async fn send_binary(&self, data: Vec<u8>) -> Result<()> {
        self.0.lock().await.send(Message::binary(data)).await?;
        Ok(())
    }

    /// Sends a close frame with `code`.
    pub async fn close(&self, code: u16) -> Result<()> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        self.0
            .lock()
            .await
            .send(Message::Close(Some(frame)))
            .await?;
        Ok(())
    }
}

/// Certificates trusted for `wss://`, added by [`trust_certificate_file`].
static TRUSTED: std::sync::Mutex<Vec<CertificateDer<'static>>> = std::sync::Mutex::new(Vec::new());

/// Trusts the PEM certificate(s) in `path` for every later `wss://`
/// connection of this process (e.g. the server's self-signed certificate).
pub fn trust_certificate_file(path: impl AsRef<std::path::Path>) -> Result<()> {
    let certs = CertificateDer::pem_file_iter(path.as_ref())
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Protocol(format!("{}: {e}", path.as_ref().display())))?;
    TRUSTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(certs);
    Ok(())
}

fn tls_connector() -> Result<Connector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in TRUSTED.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        roots
            .add(cert.clone())
            .map_err(|e| ClientError::Protocol(format!("trusted certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Protocol(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}

/// Both halves of a client websocket.
#[derive(Debug)]
struct WsConn {
    writer: WsWriter,
    reader: SplitStream<Stream>,
}

impl WsConn {
    /// Connects to `url`: `ws://`, or `wss://` trusting the certificates
    /// given to [`trust_certificate_file`].
    async fn connect(url: &str) -> Result<Self> {
        let connector = url.starts_with("wss://").then(tls_connector).transpose()?;
        let (stream, _response) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector).await?;
        let (sink, reader) = stream.split();
        Ok(WsConn {
            writer: WsWriter(Arc::new(Mutex::new(sink))),
            reader,
        })
    }

    /// The next text, binary or close; pings and pongs are handled here.
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            let code = match self.reader.next().await {
                None => None,
                Some(Ok(Message::Text(t))) => return Ok(Frame::Text(t)),
                Some(Ok(Message::Binary(b))) => return Ok(Frame::Binary(b)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(c))) => c.map(|c| u16::from(c.code)),
                Some(Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                )) => None,
                Some(Err(e)) => return Err(e.into()),
            };
            // Send the close reply tungstenite queued; the peer may be
            // waiting for it. It fails if the stream is already gone.
            let _ = self.writer.0.lock().await.flush().await;
            return Ok(Frame::Closed(code));
        }
    }
}

/// What both client sessions ([`GatewaySession`](crate::GatewaySession),
/// [`LvspSession`](crate::LvspSession)) offer whatever drives them: frames
/// and time in, frames to send and the next deadline out. A [`Link`] drives
/// one over a websocket; `control/tests/pair/` drives one against the
/// server's state machine in one process.
pub trait Session: Send + 'static {
    /// Reads one frame from the server at `now`.
    fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), SessionError>;
    /// The next text frame to send.
    fn poll_transmit(&mut self) -> Option<String>;
    /// Heartbeats every `interval` from `now` on.
    fn start_heartbeat(&mut self, now: Instant, interval: Duration);
    /// When `handle_timeout` has something to do.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Does what is due at `now`.
    fn handle_timeout(&mut self, now: Instant);
}

/// A session's state, shared between its client and its heartbeat task.
type Shared<S> = Arc<std::sync::Mutex<S>>;

/// Runs `f` on the session; never held across an await.
fn with<S, T>(session: &Shared<S>, f: impl FnOnce(&mut S) -> T) -> T {
    // A panic elsewhere cannot leave a session half-updated in a way
    // that matters to a test client: use it anyway.
    f(&mut session.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Sends what the session queued.
async fn flush(writer: &WsWriter, frames: Vec<String>) -> Result<()> {
    for frame in frames {
        writer.send_text(frame).await?;
    }
    Ok(())
}

/// The frames a session queued.
fn drain<S: Session>(session: &mut S) -> Vec<String> {
    std::iter::from_fn(|| session.poll_transmit()).collect()
}

/// A websocket driving a [`Session`]: what the session queues is sent,
/// what arrives is handed to it, and helpers wait by polling it between
/// reads. [`GatewayClient`](crate::GatewayClient) and
/// [`LvspClient`](crate::LvspClient) are one each, with their protocol's
/// helpers; what they share is here.
#[derive(Debug)]
pub struct Link<S> {
    ws: WsConn,
    session: Shared<S>,
    /// How long [`wait`](Self::wait) waits.
    timeout: Duration,
}

impl<S: Session> Link<S> {
    /// Connects to `url` (see [`WsConn::connect`]) for `session`.
    pub(crate) async fn connect(url: &str, session: S, timeout: Duration) -> Result<Self> {
        Ok(Link {
            ws: WsConn::connect(url).await?,
            session: Arc::new(std::sync::Mutex::new(session)),
            timeout,
        })
    }

    /// A handle that can send on this connection from another task, for
    /// frames the session does not know about.
    pub fn writer(&self) -> WsWriter {
        self.ws.writer.clone()
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&self, value: &serde_json::Value) -> Result<()> {
        self.send_text(value.to_string()).await
    }

    /// Sends any text frame.
    pub async fn send_text(&self, text: String) -> Result<()> {
        self.ws.writer.send_text(text).await
    }

    /// Closes the websocket with `code`.
    pub async fn close(&self, code: u16) -> Result<()> {
        self.ws.writer.close(code).await
    }

    /// How long helpers wait for their reply (default 10 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// A copy of the session's state as it is now.
    pub fn session(&self) -> S
    where
        S: Clone,
    {
        self.with(|s| s.clone())
    }

    /// Reads the session.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        with(&self.session, f)
    }

    /// Runs `f` on the session and sends what it queued.
    pub(crate) async fn act<T>(&self, f: impl FnOnce(&mut S) -> T) -> Result<T> {
        let (t, frames) = self.with(|s| (f(s), drain(s)));
        flush(&self.ws.writer, frames).await?;
        Ok(t)
    }

    /// What `poll` returns once it returns something, reading a frame
    /// into the session each time it has nothing.
    pub(crate) async fn poll_until<T>(
        &mut self,
        mut poll: impl FnMut(&mut S) -> Result<Option<T>, SessionError>,
    ) -> Result<T> {
        loop {
            if let Some(t) = self.with(&mut poll)? {
                return Ok(t);
            }
            let frame = self.ws.recv().await?;
            let now = Instant::now();
            self.with(|s| s.handle_frame(now, frame))?;
        }
    }

    /// [`poll_until`](Self::poll_until) within the link's timeout; running
    /// out of it is [`ClientError::Timeout`] naming `what`.
    pub(crate) async fn wait<T>(
        &mut self,
        what: &'static str,
        poll: impl FnMut(&mut S) -> Result<Option<T>, SessionError>,
    ) -> Result<T> {
        tokio::time::timeout(self.timeout, self.poll_until(poll))
            .await
            .map_err(|_| ClientError::Timeout(what))?
    }

    /// Heartbeats every `interval` in the background (the session's
    /// schedule, sent by a task when due) until the returned task is
    /// dropped; ACKs are absorbed by later reads.
    pub fn spawn_heartbeat(&self, interval: Duration) -> HeartbeatTask {
        self.with(|s| s.start_heartbeat(Instant::now(), interval));
        let (session, writer) = (Arc::clone(&self.session), self.ws.writer.clone());
        HeartbeatTask(tokio::spawn(async move {
            // The lock is taken and let go inside `with`, never held
            // across the sleep or the send.
            while let Some(due) = with(&session, |s| s.poll_timeout()) {
                tokio::time::sleep_until(due.into()).await;
                let frames = with(&session, |s| {
                    s.handle_timeout(Instant::now());
                    drain(s)
                });
                if flush(&writer, frames).await.is_err() {
                    break;
                }
            }
        }))
    }
}

/// A background task sending a session's heartbeats; aborted when dropped
/// (the session's schedule stays, with nothing driving it).
#[derive(Debug)]
pub struct HeartbeatTask(tokio::task::JoinHandle<()>);

impl HeartbeatTask {
    /// True once the task stopped (its connection failed or closed).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
