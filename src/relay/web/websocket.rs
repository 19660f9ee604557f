//! The WebSocket binding (PROTOCOL.md §3.4.2) as a connection task sees it.
//!
//! An upgraded socket is split in two. The reading half ([`WsIn`]) is read
//! only when the connection task asks for a chunk, so TCP holds a fast
//! sender back as QUIC flow control does; each binary message must be
//! exactly one frame, and anything else (a text message, half a frame, two
//! frames) stops the reading with `MALFORMED_FRAME`, or `FRAME_TOO_LARGE`
//! for a header that declares too long a body. The writing half
//! ([`WsOut`]) sends each frame as one binary message, and a keep-alive
//! ping every `keep_alive`; a peer silent for `idle_timeout` is lost, like
//! a QUIC connection past its idle timeout. [`WsCarrier`] closes with
//! 4000 + the close code of §3.3, and tells when the socket is done.
//!
//! A peer's close means: 4000 + an endpoint code of §3.3 as that code;
//! 1000 (normal), 1001 (going away: the tab closed) and a close without a
//! code as `NO_ERROR`, so the person left; any other code as an error of
//! its own. A connection that ends without a close frame was lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Mutex, watch};

use crate::core::frame::{EndReason, whole_frame_at};
use crate::core::{CloseCode, Departure};
use crate::relay::carrier::{BytesOut, Carrier, ChunksIn, ReadEnd};

/// WebSocket close codes for the relay's codes start here (§3.4.2).
pub const CODE_BASE: u16 = 4000;

/// How long a close may take to go out before the socket is dropped.
const CLOSE_WRITE: Duration = Duration::from_secs(2);

type Sink = Arc<Mutex<SplitSink<WebSocket, Message>>>;

/// Splits an upgraded socket into the connection task's three parts, and
/// starts its keep-alive.
pub(in crate::relay) fn split(
    socket: WebSocket,
    idle_timeout: Duration,
    keep_alive: Duration,
) -> (Arc<WsCarrier>, WsIn, WsOut) {
    let (sink, stream) = socket.split();
    let sink = Arc::new(Mutex::new(sink));
    let (done, _) = watch::channel(false);
    let carrier = Arc::new(WsCarrier {
        sink: sink.clone(),
        done: done.clone(),
    });
    tokio::spawn(keep_alive_pings(sink.clone(), done.subscribe(), keep_alive));
    let reader = WsIn {
        stream,
        idle_timeout,
        done: done.clone(),
        sink: sink.clone(),
    };
    (carrier, reader, WsOut { sink, done })
}

/// Pings every `every` until the socket is done; browsers answer by
/// themselves, and the answer keeps [`WsIn`]'s idle timer from firing.
async fn keep_alive_pings(sink: Sink, mut done: watch::Receiver<bool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.wait_for(|d| *d) => return,
        }
        if sink
            .lock()
            .await
            .send(Message::Ping(Default::default()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The socket as a whole: close it, or wait until it is done.
pub(in crate::relay) struct WsCarrier {
    sink: Sink,
    done: watch::Sender<bool>,
}

impl Carrier for WsCarrier {
    fn close(&self, code: CloseCode) {
        let sink = self.sink.clone();
        let done = self.done.clone();
        tokio::spawn(async move {
            let frame = CloseFrame {
                code: close_code_of(code),
                reason: code.reason().into(),
            };
            let _ = tokio::time::timeout(CLOSE_WRITE, async {
                let mut sink = sink.lock().await;
                let _ = sink.send(Message::Close(Some(frame))).await;
                let _ = sink.close().await;
            })
            .await;
            done.send_replace(true);
        });
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let mut done = self.done.subscribe();
        Box::pin(async move {
            let _ = done.wait_for(|d| *d).await;
        })
    }
}

/// The WebSocket close code for one of the relay's close codes.
pub fn close_code_of(code: CloseCode) -> u16 {
    CODE_BASE + code.code() as u16
}

/// What a close from the peer means (module doc).
pub fn departure_of_close(code: Option<u16>) -> Departure {
    match code {
        None | Some(1000) | Some(1001) | Some(1005) => Departure::Left(EndReason::UserEnded),
        Some(c) if (CODE_BASE..CODE_BASE + 256).contains(&c) => {
            Departure::from_application_close(u64::from(c - CODE_BASE))
        }
        Some(_) => Departure::Left(EndReason::PeerDisconnected),
    }
}

/// Whether one message is exactly one frame: `Err` with the close code if
/// not (the frame decoder's own header check: an unknown type or a wrong
/// length is `MALFORMED_FRAME`, too long a body `FRAME_TOO_LARGE`).
pub fn one_whole_frame(message: &[u8]) -> Result<(), CloseCode> {
    match whole_frame_at(message) {
        Ok(Some(len)) if len == message.len() => Ok(()),
        Ok(_) => Err(CloseCode::MalformedFrame),
        Err(e) => Err(e.close_code()),
    }
}

/// The reading half.
pub(in crate::relay) struct WsIn {
    stream: SplitStream<WebSocket>,
    idle_timeout: Duration,
    done: watch::Sender<bool>,
    /// To answer the peer's close at once.
    sink: Sink,
}

impl WsIn {
    async fn next_message(&mut self) -> Result<bytes::Bytes, ReadEnd> {
        loop {
            let next = tokio::time::timeout(self.idle_timeout, self.stream.next()).await;
            let message = match next {
                Err(_) | Ok(None) => return Err(ReadEnd::Departed(Departure::Lost)),
                // axum's error wraps tungstenite's; only its kind is used.
                Ok(Some(Err(e))) => {
                    return Err(match e.into_inner().downcast_ref::<tungstenite::Error>() {
                        Some(tungstenite::Error::Capacity(_)) => {
                            ReadEnd::Broken(CloseCode::FrameTooLarge)
                        }
                        // The TCP connection ended without a close: lost,
                        // like a QUIC connection that timed out.
                        Some(tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                        )) => ReadEnd::Departed(Departure::Lost),
                        Some(tungstenite::Error::Protocol(_)) => {
                            ReadEnd::Broken(CloseCode::MalformedFrame)
                        }
                        _ => ReadEnd::Departed(Departure::Lost),
                    });
                }
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Binary(bytes) => {
                    one_whole_frame(&bytes).map_err(ReadEnd::Broken)?;
                    return Ok(bytes);
                }
                Message::Text(_) => return Err(ReadEnd::Broken(CloseCode::MalformedFrame)),
                Message::Close(frame) => {
                    // Answer the close (tungstenite queued the answer) now,
                    // before the connection's task lets go of the socket.
                    let sink = self.sink.clone();
                    tokio::spawn(async move {
                        let answer = async { sink.lock().await.close().await };
                        let _ = tokio::time::timeout(CLOSE_WRITE, answer).await;
                    });
                    return Err(ReadEnd::Departed(departure_of_close(frame.map(|f| f.code))));
                }
                Message::Ping(_) | Message::Pong(_) => continue,
            }
        }
    }
}

impl ChunksIn for WsIn {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, ReadEnd> {
        let read = self.next_message().await;
        if read.is_err() {
            self.done.send_replace(true);
        }
        read.map(Some)
    }
}

/// The writing half.
pub(in crate::relay) struct WsOut {
    sink: Sink,
    done: watch::Sender<bool>,
}

impl BytesOut for WsOut {
    async fn write_all(&mut self, bytes: &[u8]) -> bool {
        let mut sink = self.sink.lock().await;
        let mut rest = bytes;
        // One message per frame, whatever the core handed over at once.
        while let Ok(Some(len)) = whole_frame_at(rest) {
            let message = Message::Binary(bytes::Bytes::copy_from_slice(&rest[..len]));
            if sink.feed(message).await.is_err() {
                self.done.send_replace(true);
                return false;
            }
            rest = &rest[len..];
        }
        if sink.flush().await.is_err() {
            self.done.send_replace(true);
            return false;
        }
        true
    }

    async fn finish(&mut self, _wait: Duration) {
        // A WebSocket has no half-close: the close frame follows at once,
        // behind everything written, and TCP delivers it in order.
        let _ = self.sink.lock().await.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_whole_frame_or_it_is_refused() {
        let frame = crate::core::frame::Frame::Hello {
            version: crate::core::frame::PROTOCOL_VERSION,
            role: crate::core::frame::Role::Client,
        }
        .encode();
        assert_eq!(one_whole_frame(&frame), Ok(()));
        assert_eq!(
            one_whole_frame(&frame[..frame.len() - 1]),
            Err(CloseCode::MalformedFrame)
        );
        assert_eq!(one_whole_frame(&[0x02]), Err(CloseCode::MalformedFrame));
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert_eq!(one_whole_frame(&two), Err(CloseCode::MalformedFrame));
        assert_eq!(
            one_whole_frame(&[0x05, 0xff, 0xff]),
            Err(CloseCode::FrameTooLarge)
        );
    }

    #[test]
    fn close_codes_map_both_ways() {
        assert_eq!(close_code_of(CloseCode::ShuttingDown), 4008);
        assert_eq!(
            departure_of_close(Some(4000)),
            Departure::Left(EndReason::UserEnded)
        );
        assert_eq!(departure_of_close(Some(4017)), Departure::Lost);
        assert_eq!(
            departure_of_close(Some(4016)),
            Departure::Left(EndReason::SecurityFailure)
        );
        assert_eq!(
            departure_of_close(Some(1001)),
            Departure::Left(EndReason::UserEnded)
        );
        assert_eq!(
            departure_of_close(Some(1011)),
            Departure::Left(EndReason::PeerDisconnected)
        );
    }
}
