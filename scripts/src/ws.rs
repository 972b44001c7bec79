//! Websocket plumbing shared by LVSP and the voice gateway: a reader half
//! that turns frames into [`Frame`]s (close codes included) and a cloneable
//! writer half that background heartbeat tasks can share.

use std::sync::Arc;

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

use crate::error::{ClientError, Result};

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
pub(crate) struct WsConn {
    pub(crate) writer: WsWriter,
    reader: SplitStream<Stream>,
    closed: Option<Option<u16>>,
}

impl WsConn {
    /// Connects to `url`: `ws://`, or `wss://` trusting the certificates
    /// given to [`trust_certificate_file`].
    pub(crate) async fn connect(url: &str) -> Result<Self> {
        let connector = url.starts_with("wss://").then(tls_connector).transpose()?;
        let (stream, _response) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector).await?;
        let (sink, reader) = stream.split();
        Ok(WsConn {
            writer: WsWriter(Arc::new(Mutex::new(sink))),
            reader,
            closed: None,
        })
    }

    /// The next text, binary or close; pings and pongs are handled here.
    /// After a close every call returns the same `Closed`.
    pub(crate) async fn recv(&mut self) -> Result<Frame> {
        if let Some(code) = self.closed {
            return Ok(Frame::Closed(code));
        }
        loop {
            let frame = match self.reader.next().await {
                None => Frame::Closed(None),
                Some(Ok(Message::Text(t))) => return Ok(Frame::Text(t)),
                Some(Ok(Message::Binary(b))) => return Ok(Frame::Binary(b)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(c))) => Frame::Closed(c.map(|c| u16::from(c.code))),
                Some(Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                )) => Frame::Closed(None),
                Some(Err(e)) => return Err(e.into()),
            };
            if let Frame::Closed(code) = frame {
                self.closed = Some(code);
                // Send the close reply tungstenite queued; the peer may be
                // waiting for it. It fails if the stream is already gone.
                let _ = self.writer.0.lock().await.flush().await;
            }
            return Ok(frame);
        }
    }

    /// The close code, once the connection closed.
    pub(crate) fn closed(&self) -> Option<Option<u16>> {
        self.closed
    }
}

/// A background task sending heartbeats; aborted when dropped.
#[derive(Debug)]
pub struct HeartbeatTask(tokio::task::JoinHandle<()>);

impl HeartbeatTask {
    /// Sends `payload()` through `writer` every `interval` (first one after
    /// one interval) until a send fails or the task is dropped.
    pub(crate) fn spawn(
        writer: WsWriter,
        interval: std::time::Duration,
        mut payload: impl FnMut() -> String + Send + 'static,
    ) -> Self {
        let interval = interval.max(std::time::Duration::from_millis(1));
        HeartbeatTask(tokio::spawn(async move {
            let start = tokio::time::Instant::now() + interval;
            let mut ticks = tokio::time::interval_at(start, interval);
            loop {
                ticks.tick().await;
                if writer.send_text(payload()).await.is_err() {
                    break;
                }
            }
        }))
    }

    /// True once the task stopped (its connection failed).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
