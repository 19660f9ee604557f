//! One QUIC endpoint, two TLS configs, chosen by the ALPN the client offers.
//!
//! Native clients offer `fluister/1`; browsers opening WebTransport offer
//! `h3`. The native config asks every client for an optional certificate
//! (counsellors sign in with one); the web config must never ask, because
//! some browsers would show an anonymous young person a certificate picker.
//! rustls decides whether to ask before the application sees the handshake,
//! and quinn gives one crypto config per endpoint, so [`ByAlpn`] is that
//! config: each session it starts reads the ClientHello first (buffering
//! the CRYPTO bytes until the whole message is in), looks at the ALPN
//! extension, and only then starts a rustls session from the config that
//! fits, replaying the bytes into it. A ClientHello it cannot parse goes to
//! the native config, whose rustls refuses it as before.
//!
//! Data flow: quinn → [`ByAlpn::start_session`] → `Choosing` (buffer) →
//! [`client_hello_offers_only_web`] → the chosen rustls session, to which
//! every later call is passed through unchanged.

use std::any::Any;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use quinn_proto::crypto::{
    self, ExportKeyingMaterialError, KeyPair, Keys, PacketKey, ServerConfig as _,
};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError};

/// The ALPN of WebTransport over HTTP/3.
pub const WEB_ALPN: &[u8] = b"h3";

/// The longest ClientHello read before giving up on choosing (browsers
/// send about 2 KB with a post-quantum key share).
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// The endpoint's crypto config: native and web, chosen per handshake.
pub struct ByAlpn {
    pub native: Arc<QuicServerConfig>,
    pub web: Arc<QuicServerConfig>,
}

impl crypto::ServerConfig for ByAlpn {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, quinn_proto::crypto::UnsupportedVersion> {
        // Initial keys depend on the version and connection id only.
        self.native.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.native.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        // A native session stands in (it has read nothing) until the
        // ClientHello decides.
        let stand_in = self.native.clone().start_session(version, params);
        Box::new(ChoosingSession {
            configs: self,
            version,
            params: *params,
            inner: stand_in,
            buffered: Some(Vec::new()),
        })
    }
}

struct ChoosingSession {
    configs: Arc<ByAlpn>,
    version: u32,
    params: TransportParameters,
    inner: Box<dyn crypto::Session>,
    /// The CRYPTO bytes read while choosing; `None` once chosen.
    buffered: Option<Vec<u8>>,
}

impl ChoosingSession {
    /// Buffers `buf`; once the ClientHello is whole (or cannot be), starts
    /// the right session and gives it everything read so far.
    fn choose(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let Some(buffered) = &mut self.buffered else {
            return self.inner.read_handshake(buf);
        };
        buffered.extend_from_slice(buf);
        let web = match handshake_message(buffered) {
            Some(Ok(hello)) => client_hello_offers_only_web(hello),
            Some(Err(())) => false,
            None if buffered.len() < MAX_CLIENT_HELLO => return Ok(false),
            None => false,
        };
        let bytes = self.buffered.take().unwrap_or_default();
        if web {
            self.inner = self
                .configs
                .web
                .clone()
                .start_session(self.version, &self.params);
        }
        self.inner.read_handshake(&bytes)
    }
}

/// The first handshake message in `bytes`: `None` while incomplete, an
/// error if it is not a ClientHello.
fn handshake_message(bytes: &[u8]) -> Option<Result<&[u8], ()>> {
    let header = bytes.get(..4)?;
    if header[0] != 1 {
        return Some(Err(()));
    }
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if len > MAX_CLIENT_HELLO {
        return Some(Err(()));
    }
    bytes.get(4..4 + len).map(Ok)
}

/// Whether a ClientHello body offers `h3` and not the native ALPN. A body
/// that does not parse counts as native: rustls will refuse it.
pub fn client_hello_offers_only_web(hello: &[u8]) -> bool {
    let Some(protocols) = alpn_protocols(hello) else {
        return false;
    };
    protocols.contains(&WEB_ALPN) && !protocols.contains(&crate::core::frame::ALPN)
}

/// The protocol names of a ClientHello body's ALPN extension (RFC 8446
/// §4.1.2, RFC 7301).
fn alpn_protocols(hello: &[u8]) -> Option<Vec<&[u8]>> {
    let mut r = Bytes(hello);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut extensions = Bytes(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let body = extensions.vec16()?;
        if kind == 16 {
            let mut list = Bytes(Bytes(body).vec16()?);
            let mut names = Vec::new();
            while !list.0.is_empty() {
                names.push(list.vec8()?);
            }
            return Some(names);
        }
    }
    Some(Vec::new())
}

/// A cursor over TLS's length-prefixed vectors.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(b[0]) << 8 | usize::from(b[1]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(*self.take(1)?.first()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

impl crypto::Session for ChoosingSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }
    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.inner.handshake_data()
    }
    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }
    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.early_crypto()
    }
    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }
    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }
    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        self.choose(buf)
    }
    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }
    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.inner.write_handshake(buf)
    }
    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.next_1rtt_keys()
    }
    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }
    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body with the given ALPN names (other fields minimal).
    fn hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for name in alpn {
            list.push(name.len() as u8);
            list.extend_from_slice(name);
        }
        let mut ext_body = (list.len() as u16).to_be_bytes().to_vec();
        ext_body.extend_from_slice(&list);
        let mut exts = vec![0, 0, 0, 0]; // server_name, empty
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend_from_slice(&(ext_body.len() as u16).to_be_bytes());
        exts.extend_from_slice(&ext_body);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        body
    }

    #[test]
    fn a_browser_offering_h3_gets_the_web_config() {
        assert!(client_hello_offers_only_web(&hello(&[b"h3"])));
    }

    #[test]
    fn native_and_mixed_offers_get_the_native_config() {
        assert!(!client_hello_offers_only_web(&hello(&[b"fluister/1"])));
        assert!(!client_hello_offers_only_web(&hello(&[
            b"h3",
            b"fluister/1"
        ])));
        assert!(!client_hello_offers_only_web(&hello(&[])));
    }

    #[test]
    fn a_hello_that_does_not_parse_is_native() {
        let whole = hello(&[b"h3"]);
        for cut in 0..whole.len() {
            assert!(!client_hello_offers_only_web(&whole[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn the_first_message_is_whole_only_with_all_its_bytes() {
        let body = hello(&[b"h3"]);
        let mut message = vec![1, 0, 0, body.len() as u8];
        message.extend_from_slice(&body);
        assert!(handshake_message(&message[..message.len() - 1]).is_none());
        assert_eq!(handshake_message(&message), Some(Ok(&body[..])));
        assert_eq!(handshake_message(&[2, 0, 0, 0]), Some(Err(())));
    }
}
