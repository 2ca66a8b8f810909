//! A SockJS session seen as the STOMP session's socket: a `Stream` of the client's messages and
//! a `Sink` of the server's, so `session::run` serves SockJS clients unchanged.
//!
//! What stays true: a text message the STOMP session writes goes to the session's bounded
//! outbound queue or fails the write (the STOMP session then closes as a slow consumer); its
//! close becomes the SockJS close frame; and however the STOMP session ends, the SockJS session
//! ends with it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;

use super::frame::{Frame, GO_AWAY};
use super::table::Session;

/// Close code a SockJS client gets when it was dropped for not receiving fast enough.
const CLOSE_SLOW: (u16, &str) = (1008, "Slow consumer: outbound queue full");

/// The STOMP session's side of one SockJS session.
#[derive(Debug)]
pub(crate) struct Transport {
    session: Arc<Session>,
    inbound: mpsc::Receiver<Message>,
    /// Set once the STOMP session closed: its input is over too.
    closed: bool,
    overflowed: bool,
}

impl Transport {
    pub(crate) fn new(session: Arc<Session>, inbound: mpsc::Receiver<Message>) -> Transport {
        Transport {
            session,
            inbound,
            closed: false,
            overflowed: false,
        }
    }
}

/// The SockJS close frame for the STOMP session's WebSocket close.
fn close_frame(close: Option<&CloseFrame>) -> Frame {
    match close {
        // A normal close is what SockJS spells "Go away!".
        None => Frame::close(GO_AWAY.0, GO_AWAY.1),
        Some(c) if c.code == 1000 => Frame::close(GO_AWAY.0, GO_AWAY.1),
        Some(c) => Frame::close(c.code, c.reason.as_str()),
    }
}

impl Stream for Transport {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.closed {
            return Poll::Ready(None);
        }
        self.inbound.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for Transport {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let text = match item {
            Message::Text(t) => t.as_str().to_owned(),
            Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
            Message::Close(c) => {
                self.session.end(close_frame(c.as_ref()));
                self.closed = true;
                return Ok(());
            }
        };
        if let Err(e) = self.session.push(text) {
            self.overflowed = true;
            return Err(axum::Error::new(e));
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // The STOMP session is over however it ended (an abort sends no close of its own).
        let frame = if self.overflowed {
            Frame::close(CLOSE_SLOW.0, CLOSE_SLOW.1)
        } else {
            Frame::close(GO_AWAY.0, GO_AWAY.1)
        };
        self.session.end(frame);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::extract::ws::Utf8Bytes;
    use futures_util::{SinkExt, StreamExt};

    use super::*;

    const BEAT: Duration = Duration::from_secs(25);

    #[tokio::test(start_paused = true)]
    async fn client_messages_come_out_and_server_text_goes_to_the_queue() {
        let (session, rx) = Session::new(4);
        let mut t = Transport::new(session.clone(), rx);
        let tx = session.sender().unwrap();
        tx.send(Message::Text("CONNECT\n\n\0".into()))
            .await
            .unwrap();
        let got = t.next().await.unwrap().unwrap();
        assert_eq!(got, Message::Text("CONNECT\n\n\0".into()));
        t.send(Message::Text("CONNECTED\n\n\0".into()))
            .await
            .unwrap();
        let r = session.attach().unwrap();
        assert_eq!(r.next(BEAT).await, Frame::Open);
        assert_eq!(
            r.next(BEAT).await,
            Frame::Messages(vec!["CONNECTED\n\n\0".into()])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_close_becomes_the_sockjs_close_and_ends_the_input() {
        let (session, rx) = Session::new(4);
        let mut t = Transport::new(session.clone(), rx);
        t.send(Message::Close(Some(CloseFrame {
            code: 1012,
            reason: Utf8Bytes::from_static("server restarting: reconnect"),
        })))
        .await
        .unwrap();
        assert!(t.next().await.is_none());
        drop(t);
        let r = session.attach().unwrap();
        assert_eq!(r.next(BEAT).await, Frame::Open);
        assert_eq!(
            r.next(BEAT).await,
            Frame::close(1012, "server restarting: reconnect")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_fails_the_write_and_closes_as_slow() {
        let (session, rx) = Session::new(1);
        let mut t = Transport::new(session.clone(), rx);
        t.send(Message::Text("1".into())).await.unwrap();
        assert!(t.send(Message::Text("2".into())).await.is_err());
        drop(t);
        let r = session.attach().unwrap();
        assert_eq!(r.next(BEAT).await, Frame::Open);
        assert_eq!(r.next(BEAT).await, Frame::Messages(vec!["1".into()]));
        assert_eq!(r.next(BEAT).await, Frame::close(CLOSE_SLOW.0, CLOSE_SLOW.1));
    }
}
