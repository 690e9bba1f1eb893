//! CA files in a folder (the no-cluster mode).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use capstan_ca::CaFiles;

use super::{StoreError, Stored};

pub(super) fn read(dir: &Path, names: &[&str]) -> Result<Option<Stored>, StoreError> {
    let files = CaFiles::read_dir(dir, names)?;
    if files.iter().next().is_none() {
        return Ok(None);
    }
    Ok(Some(Stored {
        files,
        version: None,
    }))
}

/// Writes every file (mode 0600: some are keys), each whole (a temporary file renamed into
/// place), and removes the files of `names` that `files` no longer has.
pub(super) fn write(dir: &Path, files: &CaFiles) -> Result<(), StoreError> {
    let io = |path: &Path, e| StoreError::Io(path.to_path_buf(), e);
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, text) in files.iter() {
        let path = dir.join(name);
        let staged = dir.join(format!(".{name}.tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staged)
            .map_err(|e| io(&staged, e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io(&staged, e))?;
        file.sync_all().map_err(|e| io(&staged, e))?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))
            .map_err(|e| io(&staged, e))?;
        fs::rename(&staged, &path).map_err(|e| io(&path, e))?;
    }
    for name in capstan_ca::ROOT_FILES {
        let path = dir.join(name);
        if files.get(name).is_none() && path.exists() {
            fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}
