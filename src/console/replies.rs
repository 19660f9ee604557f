//! The counsellor's canned replies: short texts kept in a local file,
//! never on the relay.
//!
//! The file is plain text, one reply per line; blank lines and lines that
//! start with `#` are skipped, so that a counsellor can edit it by hand.
//! The console reads it at start (a missing file gives the defaults below)
//! and writes it when the counsellor edits the list in the page: the whole
//! list, to a temporary file beside it that then replaces it, mode 0600.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::files::{self, FileError};

/// At most this many replies.
pub const MAX_REPLIES: usize = 50;
/// At most this many characters in one reply.
pub const MAX_REPLY_CHARS: usize = 500;

/// The replies a new counsellor starts with.
pub const DEFAULT_REPLIES: &[&str] = &[
    "Fijn dat je ons schrijft. Ik ben er voor je.",
    "Neem gerust de tijd om te typen.",
    "Ben je nu op een veilige plek?",
    "Ben je in direct gevaar? Bel dan 112.",
    "Wil je me vertellen wat er is gebeurd?",
];

/// Why the replies could not be read or written.
#[derive(Debug, Error)]
pub enum RepliesError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: FileError },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("at most {MAX_REPLIES} replies")]
    TooMany,
    #[error("a reply has at most {MAX_REPLY_CHARS} characters and one line")]
    BadReply,
}

/// The replies in `path`, or the defaults if there is no such file.
pub fn load(path: &Path) -> Result<Vec<String>, RepliesError> {
    let text = match files::read_text(
        path,
        (MAX_REPLIES * (MAX_REPLY_CHARS * 4 + 1)) as u64 + 64 * 1024,
    ) {
        Ok(text) => text,
        Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DEFAULT_REPLIES.iter().map(|s| s.to_string()).collect());
        }
        Err(source) => {
            return Err(RepliesError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let replies: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    check(&replies)?;
    Ok(replies)
}

/// Refuses a list the page could not have meant.
pub fn check(replies: &[String]) -> Result<(), RepliesError> {
    if replies.len() > MAX_REPLIES {
        return Err(RepliesError::TooMany);
    }
    if replies.iter().any(|r| {
        r.trim().is_empty() || r.chars().count() > MAX_REPLY_CHARS || r.contains(['\n', '\r'])
    }) {
        return Err(RepliesError::BadReply);
    }
    Ok(())
}

/// Writes `replies` to `path`, replacing it whole.
pub fn save(path: &Path, replies: &[String]) -> Result<(), RepliesError> {
    check(replies)?;
    let write = |source| RepliesError::Write {
        path: path.to_owned(),
        source,
    };
    let mut text = String::from("# Fluister console: canned replies, one per line.\n");
    for reply in replies {
        text.push_str(reply.trim());
        text.push('\n');
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".replies-")
        .tempfile_in(dir)
        .map_err(write)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(write)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write)?;
    }
    file.persist(path).map_err(|e| write(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replies.txt");
        assert_eq!(load(&path).unwrap().len(), DEFAULT_REPLIES.len());
        let mine = vec!["Hoi!".to_string(), "Ik ben er.".to_string()];
        save(&path, &mine).unwrap();
        assert_eq!(load(&path).unwrap(), mine);
        std::fs::write(&path, "# mine\n\n  Een  \nTwee\n").unwrap();
        assert_eq!(load(&path).unwrap(), ["Een", "Twee"]);
        assert!(save(&path, &["a\nb".into()]).is_err());
        assert!(save(&path, &["x".repeat(MAX_REPLY_CHARS + 1)]).is_err());
        assert!(save(&path, &vec!["a".to_string(); MAX_REPLIES + 1]).is_err());
        assert!(load(Path::new("/dev/zero")).is_err());
        assert_eq!(
            load(&path).unwrap(),
            ["Een", "Twee"],
            "a refused save changes nothing"
        );
    }
}
