use std::fs;
use std::time::Duration;

use super::FolderWatch;

const QUIET: Duration = Duration::from_millis(20);
/// Bounds a hang only: a wake-up that never comes fails the test after this.
const NO_WAKE_AFTER: Duration = Duration::from_secs(5);

async fn wakes(watch: &mut FolderWatch) -> bool {
    tokio::time::timeout(NO_WAKE_AFTER, watch.changed())
        .await
        .is_ok()
}

#[tokio::test]
async fn a_deleted_and_recreated_folder_is_watched_again() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("config");
    fs::create_dir(&dir).expect("mkdir");
    let mut watch = FolderWatch::new(&dir, QUIET).expect("watch");

    fs::remove_dir(&dir).expect("rmdir");
    fs::create_dir(&dir).expect("mkdir");
    assert!(
        wakes(&mut watch).await,
        "no wake-up for the folder's removal"
    );
    fs::write(dir.join("a.yaml"), "x: 1\n").expect("write");
    assert!(
        wakes(&mut watch).await,
        "a file written in the recreated folder went unnoticed"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_repointed_symlink_is_followed() {
    let root = tempfile::tempdir().expect("tempdir");
    for worktree in ["rev-1", "rev-2"] {
        fs::create_dir(root.path().join(worktree)).expect("mkdir");
    }
    let dir = root.path().join("current");
    std::os::unix::fs::symlink("rev-1", &dir).expect("symlink");
    let mut watch = FolderWatch::new(&dir, QUIET).expect("watch");

    // git-sync style: a new link next to the old one, renamed over it.
    std::os::unix::fs::symlink("rev-2", root.path().join("current.tmp")).expect("symlink");
    fs::rename(root.path().join("current.tmp"), &dir).expect("rename");
    assert!(wakes(&mut watch).await, "the swap went unnoticed");
    fs::write(root.path().join("rev-2/a.yaml"), "x: 1\n").expect("write");
    assert!(
        wakes(&mut watch).await,
        "a file written in the new target went unnoticed"
    );
}

/// The quiet spell matters only within a burst: the first change wakes the watch long before
/// a quiet spell (here 30 s) could pass, and the changes right after it wait for one.
#[tokio::test]
async fn a_change_after_a_quiet_spell_wakes_at_once_and_its_burst_waits() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut watch = FolderWatch::new(root.path(), Duration::from_secs(30)).expect("watch");
    fs::write(root.path().join("a.yaml"), "x: 1\n").expect("write");
    assert!(
        wakes(&mut watch).await,
        "the first change waited for a quiet spell"
    );
    fs::write(root.path().join("b.yaml"), "x: 2\n").expect("write");
    let early = tokio::time::timeout(Duration::from_millis(500), watch.changed()).await;
    assert!(early.is_err(), "a change within the burst did not wait");
}
