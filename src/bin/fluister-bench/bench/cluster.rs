//! Bench part 6: a cluster of two relays on NATS against one relay,
//! measured in the same run. Counsellors sign in to relay A and young
//! people to relay B, so that every pairing goes through the leader and
//! every frame crosses NATS twice (young person → A's counsellor → back).
//!
//! - forwarding across two relays, closed loop, against the same number of
//!   chats on one relay;
//! - new chats per second with the young people on one relay and the
//!   counsellors on the other, against both on one relay.
//!
//! NATS is Debian's `nats-server` with JetStream on loopback, started here;
//! without it the part is left out.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::time::Instant;

use super::{BenchError, Setup, load};
use fluister::org::Identity;

/// A `nats-server -js` on 127.0.0.1, killed on drop.
pub struct Nats {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// `None` if there is no `nats-server` to start.
    pub fn start() -> Option<Nats> {
        let dir = tempfile::tempdir().ok()?;
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let stderr = child.stderr.take()?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let marker = "Listening for client connections on ";
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find(marker) {
                    let _ = tx.send(line[at + marker.len()..].trim().to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(15)).ok()?;
        Some(Nats {
            child,
            url: format!("nats://{addr}"),
            _dir: dir,
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows: (measurement, unit, cluster, one relay).
pub async fn measure(
    setup: &Setup,
    nats: &Nats,
    chats: usize,
    arrivals: usize,
    secs: Duration,
    epoch: Instant,
) -> Result<Vec<(String, &'static str, f64, f64)>, BenchError> {
    let mut rows = Vec::new();

    // Forwarding: the same chats, closed loop, on one relay and across two.
    let single = {
        let relay = setup.relay(false)?;
        let endpoints = setup.endpoints(4)?;
        let configs = setup.counsellor_configs(super::counsellors_for(chats, load::CAPACITY))?;
        let _counsellors =
            load::counsellors(&endpoints, relay.addr, configs, load::CAPACITY, epoch).await?;
        let clients = load::clients(&endpoints, relay.addr, chats, true).await?;
        load::closed_loop(clients, secs, epoch).await?.0
    };
    let across = {
        // A cluster of its own: the relays of one measurement are killed,
        // and their lease and node ids would linger for seconds.
        let a = setup.cluster_relay(&nats.url, "forwarding", "a")?;
        let b = setup.cluster_relay(&nats.url, "forwarding", "b")?;
        settle().await;
        let endpoints = setup.endpoints(4)?;
        let configs = setup.counsellor_configs(super::counsellors_for(chats, load::CAPACITY))?;
        let _counsellors =
            load::counsellors(&endpoints, a.addr, configs, load::CAPACITY, epoch).await?;
        settle().await;
        let clients = load::clients(&endpoints, b.addr, chats, true).await?;
        let rate = load::closed_loop(clients, secs, epoch).await?.0;
        drop((a, b));
        rate
    };
    rows.push((
        format!(
            "cluster: forwarding across two relays, {chats} chats, closed loop; baseline one relay"
        ),
        "frames/s",
        across,
        single,
    ));

    // New chats: young people arrive on one relay, counsellors wait on the
    // other; against both on one relay.
    let identities = || {
        setup.identities[..8]
            .iter()
            .map(|p| Identity::load(p))
            .collect::<Result<Vec<_>, _>>()
    };
    let single = {
        let relay = setup.relay(false)?;
        let _counsellors =
            load::surge_counsellors(relay.addr, setup.ca.clone(), identities()?).await?;
        settle().await;
        load::surge(relay.addr, setup.ca.clone(), setup.org, arrivals, 64).await?
    };
    let across = {
        let a = setup.cluster_relay(&nats.url, "surge", "a")?;
        let b = setup.cluster_relay(&nats.url, "surge", "b")?;
        settle().await;
        let _counsellors = load::surge_counsellors(a.addr, setup.ca.clone(), identities()?).await?;
        settle().await;
        let rate = load::surge(b.addr, setup.ca.clone(), setup.org, arrivals, 64).await?;
        drop((a, b));
        rate
    };
    rows.push((
        "cluster: new chats, young people on one relay and counsellors on another; baseline one relay".into(),
        "chats/s",
        across,
        single,
    ));
    Ok(rows)
}

/// Lets relays find each other, and counsellors' offers reach the leader.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}
