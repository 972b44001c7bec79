//! In-test scripted websocket servers.

use std::future::Future;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The server side of one scripted connection.
pub(crate) struct Peer {
    ws: WebSocketStream<TcpStream>,
    /// The request path and query the client asked for.
    pub(crate) path: String,
}

impl Peer {
    pub(crate) async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("server send");
    }

    pub(crate) async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("server send");
    }

    /// The next text frame as JSON.
    pub(crate) async fn recv(&mut self) -> Value {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t).expect("client sent JSON")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame, unparsed.
    pub(crate) async fn recv_text(&mut self) -> String {
        match self.ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub(crate) async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
        // Drain until the client answers the close.
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}

/// Serves one websocket connection on 127.0.0.1 with `script`; returns the
/// `ws://` URL and the task (join it to surface the script's panics).
// The header callback's error type is fixed by tungstenite.
#[allow(clippy::result_large_err)]
pub(crate) async fn serve<F, Fut>(script: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut path = String::new();
        let ws = tokio_tungstenite::accept_hdr_async(
            tcp,
            |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                path = req.uri().to_string();
                Ok(resp)
            },
        )
        .await
        .expect("handshake");
        script(Peer { ws, path }).await;
    });
    (url, task)
}
