//! The baseline: a minimal quinn program with the relay's own QUIC and
//! rustls settings ([`tls::server_config`], [`tls::transport_config`]) that
//! echoes every 1039-byte frame straight back over one hop. It runs as its
//! own process (`fluister-bench echo`), like the relay, so both are measured
//! the same way.
//!
//! The load side here drives it the way [`super::load`] drives the relay:
//! closed-loop ping-pong, open-loop sending at a set rate, idle connections
//! for memory, and a surge of new connections.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{BLOB_OFFSET, BenchError, FRAME_LEN, Latencies, frame_with_stamp, stamp_of};
use fluister::tls;

/// Serves the echo until the process is killed; prints its address first.
pub async fn serve_echo(files: tls::ServerFiles) -> Result<(), BenchError> {
    let transport = tls::transport_config(tls::TransportSizes {
        idle_timeout: super::LOAD_LIVENESS.0,
        keep_alive: super::LOAD_LIVENESS.1,
        ..Default::default()
    });
    let mut server = tls::server_config(&files, transport)?.quic;
    server.max_incoming(100_000);
    // The relay's socket buffers, so that the two compare fairly.
    let socket =
        fluister::relay::bind_udp(([127, 0, 0, 1], 0).into()).map_err(BenchError::other)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| BenchError::other(std::io::Error::other("no async runtime")))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(BenchError::other)?;
    println!(
        "echo listening on {}",
        endpoint.local_addr().map_err(BenchError::other)?
    );
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; FRAME_LEN];
                    while recv.read_exact(&mut buf).await.is_ok() {
                        if send.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    Ok(())
}

/// One connection to the echo server with its stream.
pub struct EchoConn {
    pub connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<EchoConn, BenchError> {
    let connection = endpoint
        .connect(addr, "localhost")
        .map_err(BenchError::other)?
        .await
        .map_err(BenchError::other)?;
    let (send, recv) = connection.open_bi().await.map_err(BenchError::other)?;
    Ok(EchoConn {
        connection,
        send,
        recv,
    })
}

/// Closed loop on every connection for `duration`: frames delivered per
/// second (each echo is two deliveries, one each way).
pub async fn closed_loop(
    conns: Vec<EchoConn>,
    duration: Duration,
) -> Result<(f64, Vec<EchoConn>), BenchError> {
    let epoch = Instant::now();
    super::closed_loop(conns, duration, move |mut c: EchoConn, seq| async move {
        let mut buf = [0u8; FRAME_LEN];
        let read = tokio::time::timeout(Duration::from_secs(10), c.recv.read_exact(&mut buf));
        if c.send
            .write_all(&frame_with_stamp(epoch, seq))
            .await
            .is_err()
            || !matches!(read.await, Ok(Ok(())))
        {
            return Err(BenchError::Lost("an echo did not come back".into()));
        }
        Ok(c)
    })
    .await
}

/// Open loop: every connection sends at its share of `rate` frames per
/// second for `duration`; latency is the round trip through the echo
/// process (two hops, like one message through the relay).
pub async fn open_loop(
    conns: Vec<EchoConn>,
    rate: f64,
    duration: Duration,
) -> Result<Latencies, BenchError> {
    let epoch = Instant::now();
    let per_conn = rate / 2.0 / conns.len() as f64; // each echo is two deliveries
    let interval = Duration::from_secs_f64(1.0 / per_conn.max(0.001));
    let mut tasks = Vec::new();
    for c in conns {
        let EchoConn {
            connection,
            mut send,
            mut recv,
        } = c;
        let sends = (duration.as_secs_f64() * per_conn).round().max(1.0) as u64;
        tasks.push(tokio::spawn(async move {
            let reader = tokio::spawn(async move {
                let mut samples = Vec::with_capacity(sends as usize);
                let mut buf = vec![0u8; FRAME_LEN];
                for _ in 0..sends {
                    if recv.read_exact(&mut buf).await.is_err() {
                        break;
                    }
                    samples.push(stamp_of(epoch, &buf[BLOB_OFFSET..]));
                }
                samples
            });
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 0..sends {
                tick.tick().await;
                if send.write_all(&frame_with_stamp(epoch, seq)).await.is_err() {
                    break;
                }
            }
            let samples = tokio::time::timeout(Duration::from_secs(30), reader)
                .await
                .map_err(|_| BenchError::Lost("echo replies did not all arrive".into()))?
                .map_err(BenchError::other)?;
            let _ = send.finish();
            drop(connection);
            Ok::<_, BenchError>((sends, samples))
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        let (sent, samples) = t.await.map_err(BenchError::other)??;
        all.sent += sent;
        all.samples.extend(samples);
    }
    Ok(all)
}

/// Handshakes per second: `count` new clients, each on its own endpoint
/// (as a phone would be), with at most `parallel` at once, each doing one
/// echo round trip.
pub async fn surge(
    addr: SocketAddr,
    client: quinn::ClientConfig,
    count: usize,
    parallel: usize,
) -> Result<f64, BenchError> {
    super::surge(count, parallel, || {
        let client = client.clone();
        async move {
            let endpoint = super::client_endpoint(([127, 0, 0, 1], 0).into(), client)?;
            let mut c = connect(&endpoint, addr).await?;
            let mut buf = vec![0u8; FRAME_LEN];
            c.send
                .write_all(&frame_with_stamp(Instant::now(), 0))
                .await
                .map_err(BenchError::other)?;
            c.recv
                .read_exact(&mut buf)
                .await
                .map_err(BenchError::other)?;
            c.connection.close(0u32.into(), b"");
            Ok(())
        }
    })
    .await
}
