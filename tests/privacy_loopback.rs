//! Privacy and abuse control over real QUIC on 127.0.0.1: nothing links two
//! visits (no TLS resumption, no address tokens), a flooding peer is cut off
//! with its close code while another chat carries on, and the per-address
//! limiter refuses attempts past its limit.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use fluister::client::{self, ClientError, ConnectOptions};
use fluister::core::frame::ALPN;
use fluister::tls;
use quinn::crypto::rustls::QuicClientConfig;

/// A token store that remembers whether the server ever sent a token.
#[derive(Default)]
struct RecordingTokens(Mutex<usize>);

impl quinn::TokenStore for RecordingTokens {
    fn insert(&self, _server_name: &str, _token: bytes::Bytes) {
        *self.0.lock().unwrap() += 1;
    }
    fn take(&self, _server_name: &str) -> Option<bytes::Bytes> {
        None
    }
}

/// A client that would resume and keep tokens if the server let it: TLS
/// session cache on, 0-RTT on, a token store.
fn eager_client(
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> (quinn::Endpoint, Arc<RecordingTokens>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = true;
    let tokens = Arc::new(RecordingTokens::default());
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    config.token_store(tokens.clone());
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    (endpoint, tokens)
}

/// Connects twice from one endpoint; true if the second could resume (0-RTT).
async fn second_visit_resumes(endpoint: &quinn::Endpoint, addr: std::net::SocketAddr) -> bool {
    let first = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    // Give the server time to send tickets and tokens after the handshake.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(300), first.accept_uni()).await;
    first.close(0u32.into(), b"");
    match endpoint.connect(addr, "localhost").unwrap().into_0rtt() {
        Ok((conn, _)) => {
            conn.close(0u32.into(), b"");
            true
        }
        Err(connecting) => {
            if let Ok(conn) = connecting.await {
                conn.close(0u32.into(), b"");
            }
            false
        }
    }
}

#[tokio::test]
async fn a_second_visit_gets_no_tls_resumption_and_no_address_token() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let (endpoint, tokens) = eager_client(ca(&org));
    assert!(
        !second_visit_resumes(&endpoint, relay.local_addr()).await,
        "the relay let a client resume"
    );
    assert_eq!(*tokens.0.lock().unwrap(), 0, "the relay sent a NEW_TOKEN");
    relay.shutdown().await;

    // Control: a server with stock settings does both, so the checks above can fail.
    let (chain, key) = org.relay_tls();
    let mut stock = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    stock.alpn_protocols = vec![ALPN.to_vec()];
    stock.max_early_data_size = u32::MAX;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(stock).unwrap(),
    ));
    let mut validation = quinn::ValidationTokenConfig::default();
    validation.sent(2);
    server.validation_token_config(validation);
    let control = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let control_addr = control.local_addr().unwrap();
    let acceptor = tokio::spawn(async move {
        while let Some(incoming) = control.accept().await {
            if let Ok(conn) = incoming.await {
                tokio::spawn(async move { conn.closed().await });
            }
        }
    });
    let (endpoint, tokens) = eager_client(ca(&org));
    assert!(
        second_visit_resumes(&endpoint, control_addr).await,
        "control: stock server resumes"
    );
    assert!(
        *tokens.0.lock().unwrap() > 0,
        "control: stock server sends tokens"
    );
    acceptor.abort();
}

#[tokio::test]
async fn attempts_past_the_per_address_limit_are_refused() {
    let org = Org::new();
    let mut config = org.config();
    config.transport.per_address_attempts = 2;
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    let connect = || {
        client::connect(ConnectOptions {
            relay: relay.local_addr().to_string(),
            ca: Some(ca(&org)),
            credential: None,
            connect_timeout: std::time::Duration::from_secs(3),
            bind: None,
        })
    };
    let first = connect().await.unwrap();
    let second = connect().await.unwrap();
    let third = connect().await;
    assert!(
        matches!(
            third,
            Err(ClientError::Unreachable { .. }) | Err(ClientError::Lost(_))
        ),
        "{:?}",
        third.err()
    );
    drop((first, second));
    relay.shutdown().await;
}
