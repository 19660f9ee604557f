//! Forwarding straight from one connection task to the other, over real
//! QUIC on loopback: once the core routes a chat, FORWARD frames bypass the
//! driver, and nothing may change their order, lose one, let one pass the
//! END that follows it, or deliver one the sender wrote after its END.

mod common;

use std::time::Duration;

use common::*;
use fluister::client::RelayStream;
use fluister::core::frame::{BLOB_LEN, Blob, ChatNumber, EndReason, Frame};

fn numbered(seq: u32) -> Blob {
    let mut bytes = [0u8; BLOB_LEN];
    bytes[..4].copy_from_slice(&seq.to_be_bytes());
    Blob::new(bytes)
}

fn number_of(blob: &Blob) -> u32 {
    let mut seq = [0u8; 4];
    seq.copy_from_slice(&blob.as_bytes()[..4]);
    u32::from_be_bytes(seq)
}

/// Reads `count` FORWARD frames in `chat` and then the END that follows;
/// checks that they come numbered 0, 1, 2, … and that END comes last.
async fn expect_in_order_then_end(stream: &mut RelayStream, chat: ChatNumber, count: u32) {
    for want in 0..count {
        match next_substantive(stream).await {
            Frame::Forward { chat: c, blob } if c == chat => {
                assert_eq!(number_of(&blob), want, "frames out of order")
            }
            other => panic!("frame {want} of {count}: got {other:?}"),
        }
    }
    match next_substantive(stream).await {
        Frame::End { chat: c, reason } if c == chat => assert_eq!(reason, EndReason::UserEnded),
        other => panic!("END after {count} frames: got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_frames_keep_their_order_and_never_pass_an_end_twenty_chats_over() {
    let org = Org::new();
    let relay = start_relay_for_many(&org).await;
    let (mut sam, _) = raw_counsellor(&org, &relay, "Sam").await;
    // Within the budget of a chat's burst: pacing is not what this tests.
    let count = 60;
    for round in 0..20u32 {
        let (mut young, chat) = raw_paired_client(&org, &relay).await;
        let sams_chat = match next_substantive(&mut sam).await {
            Frame::Paired { chat, .. } => chat,
            other => panic!("PAIRED for Sam: got {other:?}"),
        };
        if round % 2 == 0 {
            // The young person writes and ends; Sam reads it all, then END.
            for seq in 0..count {
                let blob = numbered(seq);
                young.send(&Frame::Forward { chat, blob }).await.unwrap();
                // Spread out, so that the route is granted while frames
                // sent through the driver are still on their way.
                if seq % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let end = Frame::End {
                chat,
                reason: EndReason::UserEnded,
            };
            young.send(&end).await.unwrap();
            // Racing the end: these must never reach Sam.
            for seq in count..count + 5 {
                let blob = numbered(seq);
                let _ = young.send(&Frame::Forward { chat, blob }).await;
            }
            expect_in_order_then_end(&mut sam, sams_chat, count).await;
        } else {
            // The young person's first frame confirms the pairing; then Sam
            // writes and ends, and the young person reads it all, then END.
            let blob = numbered(0);
            young.send(&Frame::Forward { chat, blob }).await.unwrap();
            match next_substantive(&mut sam).await {
                Frame::Forward { chat: c, .. } => assert_eq!(c, sams_chat),
                other => panic!("the first frame: got {other:?}"),
            }
            for seq in 0..count {
                let blob = numbered(seq);
                let forward = Frame::Forward {
                    chat: sams_chat,
                    blob,
                };
                sam.send(&forward).await.unwrap();
            }
            let end = Frame::End {
                chat: sams_chat,
                reason: EndReason::UserEnded,
            };
            sam.send(&end).await.unwrap();
            for seq in count..count + 5 {
                let blob = numbered(seq);
                let forward = Frame::Forward {
                    chat: sams_chat,
                    blob,
                };
                sam.send(&forward).await.unwrap();
            }
            expect_in_order_then_end(&mut young, chat, count).await;
        }
    }
    relay.shutdown().await;
}
