//! The Unix domain socket SDS listens on.
//!
//! Whoever can open the socket gets the workload's private key, so it is created with mode
//! 0600 before anyone can connect: bound under a temporary name, restricted, then renamed
//! into place (a rename is atomic, so the final path never names an open socket).

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use super::{SdsError, SdsServer, SecretsReceiver};

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SdsError + '_ {
    move |e| SdsError::Io(path.to_path_buf(), e)
}

/// Binds `path` (mode 0600), replacing a socket left by an earlier run but nothing else;
/// creates the parent directory if needed.
pub fn bind_uds(path: &Path) -> Result<UnixListener, SdsError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io_error(path))?;
        }
        Ok(_) => return Err(SdsError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SdsError::Io(path.to_path_buf(), e)),
    }
    let temporary = temporary_name(path);
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary).map_err(io_error(&temporary))?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(SdsError::Io(path.to_path_buf(), e));
    }
    Ok(listener)
}

fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Serves SDS for `secrets` on `listener` until `shutdown` completes.
pub async fn serve_uds(
    listener: UnixListener,
    secrets: SecretsReceiver,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SdsError> {
    tonic::transport::Server::builder()
        .add_service(SdsServer::new(secrets).into_service())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
