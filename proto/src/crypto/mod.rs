//! End-to-end cryptography: what makes the relay unable to read a chat or to
//! pose as a counsellor.
//!
//! [`content`] is the message format only the two ends ever see in
//! plaintext; [`noise`] is the `Noise_NX_25519_ChaChaPoly_SHA256` handshake
//! and transport; [`cert`] the organisation-signed counsellor certificate
//! carried in handshake message 2; [`padding`] the fixed-size padding of
//! every payload; [`e2e`] ties them into the session both chat roles use.
//! Data flows: content → padding → Noise → fixed-size blob → relay, and
//! back.
//! Secrets are zeroized on drop and never appear in `Debug` output.

pub mod cert;
pub mod content;
pub mod e2e;
pub mod noise;
pub mod padding;
