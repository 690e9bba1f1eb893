//! `capstan-crdgen [DIR]`: writes the CRD manifests (one file per CRD and `all.yaml`)
//! to DIR, by default `crds/generated` of this source tree. Run by `make crds`.

use std::path::PathBuf;
use std::process::ExitCode;

use capstan_crds::crd;

fn main() -> ExitCode {
    let dir = std::env::args_os().nth(1).map_or_else(
        || {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
                .join(crd::GENERATED_DIR)
        },
        PathBuf::from,
    );
    let manifests = match crd::manifests() {
        Ok(manifests) => manifests,
        Err(err) => {
            eprintln!("capstan-crdgen: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("capstan-crdgen: {}: {err}", dir.display());
        return ExitCode::FAILURE;
    }
    for manifest in &manifests {
        let path = dir.join(&manifest.file_name);
        let unchanged = std::fs::read_to_string(&path).is_ok_and(|old| old == manifest.contents);
        if unchanged {
            continue;
        }
        if let Err(err) = std::fs::write(&path, &manifest.contents) {
            eprintln!("capstan-crdgen: {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
