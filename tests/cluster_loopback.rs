//! Several relays on loopback sharing one queue through a real NATS server
//! (Debian's `nats-server` with JetStream): chats across relays, the
//! shared queue's order and capacities, and what NATS sees.

mod common;

use common::cluster::{Nats, start_cluster_relay};
use common::*;
use fluister::org::Identity;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counsellor_on_one_relay_and_a_young_person_on_another_chat_both_ways() {
    let org = Org::new();
    let nats = Nats::start();
    let a = start_cluster_relay(&org, &nats, "both_ways").await;
    let b = start_cluster_relay(&org, &nats, "both_ways").await;
    let identity = Identity::load(&org.counsellor("Sam")).unwrap();
    let mut sam = counsellor_party(connect_counsellor(&org, &a, &identity).await, identity);
    assert!(is_connected(&sam.next().await));

    let mut young = client_party(connect_anonymous(&org, &b).await, org.public);
    assert_eq!(young.expect(is_paired).await, paired_with("Sam"));
    sam.expect(is_paired).await;
    young.say("hoi, ben je er?").await;
    assert_eq!(strip_chat(sam.next().await), message("hoi, ben je er?"));
    sam.say("Ja, ik ben er.").await;
    assert_eq!(young.next().await, message("Ja, ik ben er."));
    sam.say("/end").await;
    assert_eq!(young.next().await, ended("peer_ended"));
    a.shutdown().await;
    b.shutdown().await;
}
