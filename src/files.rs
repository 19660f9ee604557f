//! Reading the operator's and the counsellor's files with a size limit.
//!
//! Every file Fluister reads (config, certificates, keys, revocation list,
//! identity files, the organisation's register) comes through
//! [`read_text`], which stops at a limit instead of reading until memory
//! runs out: `/dev/zero` given as a certificate is an error, not a hang.

use std::io::Read;
use std::path::Path;

use thiserror::Error;

/// Largest config file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest PEM file of certificates or a key.
pub const MAX_PEM_BYTES: u64 = 1 << 20;
/// Largest revocation list or register of issued credentials.
pub const MAX_LIST_BYTES: u64 = 16 << 20;
/// Largest small key file: an identity, `org.key`, `org.pub`.
pub const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

/// Why a file could not be read.
#[derive(Debug, Error)]
pub enum FileError {
    /// The operating system refused (missing, permissions, a folder...).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is larger than anything of its kind can be.
    #[error("larger than {limit} bytes; not a file of this kind")]
    TooLarge { limit: u64 },
    /// The file is not text.
    #[error("not UTF-8 text")]
    NotText,
}

/// Reads a whole text file of at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    String::from_utf8(bytes).map_err(|_| FileError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_at_its_limit() {
        let e = read_text(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { limit: 1024 }), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.txt");
        std::fs::write(&path, "hallo").unwrap();
        assert_eq!(read_text(&path, 5).unwrap(), "hallo");
        assert!(read_text(&path, 4).is_err());
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_text(&path, 5), Err(FileError::NotText)));
    }
}
