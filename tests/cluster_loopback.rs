//! Several relays on loopback sharing one queue through a real NATS server
//! (Debian's `nats-server` with JetStream): chats across relays, the
//! shared queue's order and capacities, and what NATS sees.

mod common;

use common::cluster::{Nats, start_cluster_relay};
use common::*;
use fluister::client::chat::ChatEvent;
use fluister::core::frame::Presence;
use fluister::org::Identity;
use fluister::relay::RunningRelay;

/// Counsellor `name` of `org`, signed in to `relay` and connected.
async fn counsellor_on(org: &Org, relay: &RunningRelay, name: &str) -> Party {
    let identity = Identity::load(&org.counsellor(name)).unwrap();
    let mut party = counsellor_party(connect_counsellor(org, relay, &identity).await, identity);
    assert!(is_connected(&party.next().await));
    party
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_across_relays_goes_both_ways_and_moves_to_a_colleague_on_a_third() {
    let org = Org::new();
    let nats = Nats::start();
    let a = start_cluster_relay(&org, &nats, "both_ways").await;
    let b = start_cluster_relay(&org, &nats, "both_ways").await;
    let c = start_cluster_relay(&org, &nats, "both_ways").await;
    let mut sam = counsellor_on(&org, &a, "Sam").await;

    let mut young = client_party(connect_anonymous(&org, &b).await, org.public);
    assert_eq!(young.expect(is_paired).await, paired_with("Sam"));
    sam.expect(is_paired).await;
    young.say("hoi, ben je er?").await;
    assert_eq!(strip_chat(sam.next().await), message("hoi, ben je er?"));
    sam.say("Ja, ik ben er.").await;
    assert_eq!(young.next().await, message("Ja, ik ben er."));

    // Noor signs in on C; Sam, on A, sees her and moves the chat to her.
    let mut noor = counsellor_on(&org, &c, "Noor").await;
    sam.expect(|e| {
        matches!(e, ChatEvent::Colleague { name, presence, .. }
            if name == "Noor" && *presence == Presence::Available)
    })
    .await;
    sam.say("/transfer Noor").await;
    assert_eq!(strip_chat(sam.expect(is_ended).await), ended("transferred"));
    // The young person does a fresh handshake and checks Noor's certificate.
    let moved = young
        .expect(|e| matches!(e, ChatEvent::Transferred { .. }))
        .await;
    assert_eq!(
        moved,
        ChatEvent::Transferred {
            counsellor: "Noor".into()
        }
    );
    noor.expect(is_paired).await;
    young.say("ben jij Noor?").await;
    assert_eq!(strip_chat(noor.next().await), message("ben jij Noor?"));
    noor.say("Ja. Ik lees mee met wat je Sam schreef niet; vertel het me.")
        .await;
    assert_eq!(
        young.next().await,
        message("Ja. Ik lees mee met wat je Sam schreef niet; vertel het me.")
    );
    noor.say("/end").await;
    assert_eq!(young.next().await, ended("peer_ended"));
    for relay in [a, b, c] {
        relay.shutdown().await;
    }
}
