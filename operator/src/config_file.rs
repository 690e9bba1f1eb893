//! The small configuration files `capstan run` reads at start (the mesh config, the Cloud Map
//! config): read whole, up to a bound; a larger file is refused, never truncated.

use std::io::Read;
use std::path::Path;

#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// The file's size, over the bound.
    TooLarge(u64),
}

/// The UTF-8 text of `path`, at most `max` bytes of it. What is read is bounded, whatever the
/// file does between a size check and the read.
pub fn read_to_string(path: &Path, max: u64) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > max {
        let size = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(ReadError::TooLarge(size));
    }
    String::from_utf8(bytes)
        .map_err(|e| ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_bound_and_refuses_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "a: 1\n").expect("write");
        assert_eq!(read_to_string(&path, 5).expect("fits"), "a: 1\n");
        assert!(matches!(
            read_to_string(&path, 4),
            Err(ReadError::TooLarge(5))
        ));
        std::fs::write(&path, [0xff, 0xfe]).expect("write");
        assert!(matches!(read_to_string(&path, 5), Err(ReadError::Io(_))));
        let missing = dir.path().join("missing.yaml");
        assert!(matches!(read_to_string(&missing, 5), Err(ReadError::Io(_))));
    }
}
