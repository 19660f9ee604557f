//! What a connection may send, as its own task can tell (PROTOCOL.md §7.3):
//! the rules that depend only on who is connecting and on whether it said
//! HELLO, and on nothing the relay shares between connections.
//!
//! A [`Stage`] sees every frame a connection sends, in order, as a
//! [`ToRelay`]: a frame only the relay sends was refused before, when it
//! did not convert. The shell's
//! connection task checks each frame with one before anything reaches the
//! shared driver, so a frame that could never be right closes its
//! connection there; the core checks the same frames with its own
//! [`Stage`] first, so both refuse with one definition. What depends on
//! shared state (a chat that exists, a capability, the queue) the core
//! decides after it.

use super::Credential;
use crate::core::CloseCode;
use crate::core::frame::{EndReason, PROTOCOL_VERSION, Role, ToRelay};

/// One connection's stage: who it is, and whether it said HELLO (or
/// RESUME, whose outcome only the core knows).
#[derive(Debug, Clone)]
pub struct Stage {
    /// The role its credential allows: an anonymous connection is a young
    /// person's, one with a counsellor credential a counsellor's (§3.1).
    role: Role,
    greeted: bool,
    resumed: bool,
}

impl Stage {
    pub fn new(credential: &Credential) -> Stage {
        let role = match credential {
            Credential::Anonymous => Role::Client,
            Credential::Counsellor { .. } => Role::Counsellor,
        };
        Stage {
            role,
            greeted: false,
            resumed: false,
        }
    }

    /// Checks the next frame the connection sent. An error is the code the
    /// connection is closed with; nothing after that frame counts.
    pub fn check(&mut self, frame: &ToRelay) -> Result<(), CloseCode> {
        let unexpected = Err(CloseCode::UnexpectedFrame);
        match frame {
            // After a RESUME only the core knows whether HELLO may follow.
            ToRelay::Hello { .. } if self.resumed => Ok(()),
            ToRelay::Hello { .. } if self.greeted => unexpected,
            ToRelay::Hello { version, role } => {
                if *version != PROTOCOL_VERSION {
                    return Err(CloseCode::UnsupportedVersion);
                }
                // The anonymous role takes no credential, and a counsellor
                // credential cannot take it.
                if *role != self.role {
                    return Err(CloseCode::NotAuthorized);
                }
                self.greeted = true;
                Ok(())
            }
            ToRelay::Resume { .. } => {
                self.resumed = true;
                Ok(())
            }
            _ if !(self.greeted || self.resumed) => unexpected,
            ToRelay::Forward { .. } => Ok(()),
            ToRelay::End { reason, .. } => {
                // §4.2: who may end a chat for which reason.
                let allowed = match self.role {
                    Role::Client => {
                        matches!(reason, EndReason::UserEnded | EndReason::SecurityFailure)
                    }
                    Role::Counsellor => matches!(
                        reason,
                        EndReason::UserEnded | EndReason::SecurityFailure | EndReason::Blocked
                    ),
                };
                if allowed { Ok(()) } else { unexpected }
            }
            ToRelay::Join { .. } | ToRelay::Proof { .. } if self.role == Role::Client => Ok(()),
            ToRelay::Status { .. }
            | ToRelay::Transfer { .. }
            | ToRelay::FormAsk
            | ToRelay::Codings { .. }
                if self.role == Role::Counsellor =>
            {
                Ok(())
            }
            // Frames of the other role (frames only the relay sends are no
            // `ToRelay`).
            _ => unexpected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::frame::Frame;
    use crate::core::frame::{BLOB_LEN, Blob, ChatNumber, ResumeCapability};

    fn hello(role: Role) -> ToRelay {
        ToRelay::Hello {
            version: PROTOCOL_VERSION,
            role,
        }
    }

    fn counsellor() -> Credential {
        Credential::Counsellor {
            pseudonym: "Sam".into(),
        }
    }

    fn end(reason: EndReason) -> ToRelay {
        ToRelay::End {
            chat: ChatNumber::FIRST,
            reason,
        }
    }

    #[test]
    fn hello_first_with_the_version_and_the_role_the_credential_allows() {
        let forward = ToRelay::Forward {
            chat: ChatNumber::FIRST,
            blob: Blob::new([0; BLOB_LEN]),
        };
        let mut young = Stage::new(&Credential::Anonymous);
        assert_eq!(young.check(&forward), Err(CloseCode::UnexpectedFrame));
        let old = ToRelay::Hello {
            version: PROTOCOL_VERSION + 1,
            role: Role::Client,
        };
        assert_eq!(young.check(&old), Err(CloseCode::UnsupportedVersion));
        assert_eq!(
            young.check(&hello(Role::Counsellor)),
            Err(CloseCode::NotAuthorized)
        );
        assert_eq!(young.check(&hello(Role::Client)), Ok(()));
        assert_eq!(young.check(&forward), Ok(()));
        assert_eq!(
            young.check(&hello(Role::Client)),
            Err(CloseCode::UnexpectedFrame)
        );
        let mut sam = Stage::new(&counsellor());
        assert_eq!(
            sam.check(&hello(Role::Client)),
            Err(CloseCode::NotAuthorized)
        );
    }

    #[test]
    fn each_role_sends_its_own_frames_and_ends_chats_for_its_own_reasons() {
        let mut young = Stage::new(&Credential::Anonymous);
        young.check(&hello(Role::Client)).unwrap();
        let status = ToRelay::Status {
            available: true,
            capacity: 1,
            topics: Vec::new(),
            languages: Vec::new(),
        };
        assert_eq!(young.check(&status), Err(CloseCode::UnexpectedFrame));
        assert_eq!(
            young.check(&end(EndReason::Blocked)),
            Err(CloseCode::UnexpectedFrame)
        );
        assert_eq!(young.check(&end(EndReason::UserEnded)), Ok(()));
        // A frame only the relay sends is not even a `ToRelay`.
        assert!(ToRelay::try_from(Frame::ResumeFailed).is_err());
        let mut sam = Stage::new(&counsellor());
        sam.check(&hello(Role::Counsellor)).unwrap();
        assert_eq!(sam.check(&status), Ok(()));
        assert_eq!(sam.check(&end(EndReason::Blocked)), Ok(()));
        let join = ToRelay::Join {
            topic: None,
            language: None,
            pow_solution: [0; 8],
        };
        assert_eq!(sam.check(&join), Err(CloseCode::UnexpectedFrame));
    }

    #[test]
    fn after_a_resume_the_core_decides_about_hello() {
        let mut young = Stage::new(&Credential::Anonymous);
        let resume = ToRelay::Resume {
            capability: ResumeCapability([1; 32]),
        };
        assert_eq!(young.check(&resume), Ok(()));
        assert_eq!(young.check(&hello(Role::Client)), Ok(()));
    }
}
