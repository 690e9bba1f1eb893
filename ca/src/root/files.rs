//! The CA's PEM files as one unit, wherever they are kept: a folder in the no-cluster mode, a
//! Secret's keys in a cluster. Errors name the file (or the Secret and key) at fault.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::CaError;
use super::store::io;

/// Largest CA file read: a chain of a few RSA 4096 certificates is a few KiB.
pub const MAX_CA_FILE: usize = 256 * 1024;

/// Named PEM texts and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    origin: Origin,
    files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Folder(PathBuf),
    /// e.g. `Secret istio-system/cacerts`
    Named(String),
}

impl CaFiles {
    /// Files held in memory (a Secret's data), described as `origin` in errors.
    pub fn named(origin: impl Into<String>, files: BTreeMap<String, String>) -> Self {
        Self {
            origin: Origin::Named(origin.into()),
            files,
        }
    }

    /// Those of `names` present in `dir` (absent ones are left out; a present one that cannot
    /// be read, or is larger than [`MAX_CA_FILE`], is an error).
    pub fn read_dir(dir: &Path, names: &[&str]) -> Result<Self, CaError> {
        let mut files = BTreeMap::new();
        for name in names {
            let path = dir.join(name);
            match fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path, e)),
                Ok(meta) if meta.len() > MAX_CA_FILE as u64 => {
                    return Err(CaError::BrokenChain(
                        path,
                        format!("larger than {MAX_CA_FILE} bytes"),
                    ));
                }
                Ok(_) => {}
            }
            let text = fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            files.insert((*name).to_string(), text);
        }
        Ok(Self {
            origin: Origin::Folder(dir.to_path_buf()),
            files,
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.files.get(name).map(String::as_str)
    }

    /// The file `name`, or an error naming where it was expected.
    pub fn require(&self, name: &str) -> Result<&str, CaError> {
        self.get(name).ok_or_else(|| {
            CaError::Io(
                self.label(name),
                std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
            )
        })
    }

    pub fn insert(&mut self, name: &str, text: String) {
        self.files.insert(name.to_string(), text);
    }

    pub fn remove(&mut self, name: &str) {
        self.files.remove(name);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How errors name the file `name`: its path, or `Secret ns/name key name`.
    pub fn label(&self, name: &str) -> PathBuf {
        match &self.origin {
            Origin::Folder(dir) => dir.join(name),
            Origin::Named(origin) => PathBuf::from(format!("{origin} key {name}")),
        }
    }
}

/// PEM with `\n` line ends (the `pem` crate's default is `\r\n`), as every other PEM capstan
/// writes, so equal certificates compare equal as text.
pub(crate) fn encode_pem(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_files_are_left_out_and_errors_name_the_place() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.pem"), "A").unwrap();
        let files = CaFiles::read_dir(dir.path(), &["a.pem", "b.pem"]).unwrap();
        assert_eq!(files.get("a.pem"), Some("A"));
        assert_eq!(files.get("b.pem"), None);
        let err = files.require("b.pem").unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().join("b.pem").display().to_string()),
            "{err}"
        );

        let named = CaFiles::named("Secret istio-system/cacerts", BTreeMap::new());
        let err = named.require("ca-key.pem").unwrap_err().to_string();
        assert!(
            err.contains("Secret istio-system/cacerts key ca-key.pem"),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("big.pem"), vec![b'x'; MAX_CA_FILE + 1]).unwrap();
        let err = CaFiles::read_dir(dir.path(), &["big.pem"]).unwrap_err();
        assert!(err.to_string().contains("big.pem"), "{err}");
    }
}
