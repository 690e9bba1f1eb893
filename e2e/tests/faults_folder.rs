//! Folder-mode faults against a real capstan and a real Envoy routing real traffic: files
//! written in place (truncated, emptied), renamed over, a git-sync style symlink swap, the
//! folder deleted and recreated, and the folder emptied of every object with and without
//! `--allow-empty-config`. Each test checks what Envoy routes, and where the last good config
//! must be kept, that capstan pushed nothing new (its snapshot version did not move).
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::fixtures::{reviews_vs_header_match, reviews_vs_weighted};
use capstan_e2e::folder_mesh::{DR_FILE, FolderMesh, Layout, SE_FILE, VS_FILE};
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::wait_until;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const JASON: &[(&str, &str)] = &[("end-user", "jason")];
const NO_HEADERS: &[(&str, &str)] = &[];
/// Long enough for capstan to read a change and push it (debounce 50 ms, push queue 10 ms),
/// were it going to: a test that checks that nothing was pushed waits this long first.
const WOULD_HAVE_PUSHED: Duration = Duration::from_secs(1);
/// How often a "still writing" writer touches its file: well inside capstan's settle window.
const WRITER_EVERY: Duration = Duration::from_millis(100);

async fn start(name: &str, layout: Layout, flags: &[&str]) -> anyhow::Result<FolderMesh> {
    let vs = reviews_vs_header_match("jason", "v2", "v1");
    let mut mesh = FolderMesh::start(name, Path::new(UPSTREAM_BIN), layout, flags, &vs).await?;
    mesh.wait_for_all(JASON, "v2", 10).await?;
    mesh.expect_all(NO_HEADERS, "v1", 10).await?;
    Ok(mesh)
}

/// The mesh's routes still hold (jason → v2, the rest → v1) and capstan pushed nothing since
/// `version`.
async fn expect_last_good_config(mesh: &mut FolderMesh, version: u64) -> anyhow::Result<()> {
    mesh.expect_all(JASON, "v2", 20)
        .await
        .context("the last good routes must hold")?;
    mesh.expect_all(NO_HEADERS, "v1", 20)
        .await
        .context("the last good routes must hold")?;
    let now = mesh.snapshot_version().await?;
    ensure!(
        now == version,
        "capstan pushed a new config (snapshot version {version} → {now})"
    );
    mesh.capstan.ensure_running()
}

/// Waits for capstan to log a line naming `file` and containing `words`.
async fn wait_for_log(mesh: &mut FolderMesh, file: &str, words: &str) -> anyhow::Result<String> {
    let what = format!("a log line about {file} saying {words:?}");
    mesh.capstan
        .wait_for_log(&what, CONFIG_TIMEOUT, |l| {
            l.contains(file) && l.contains(words)
        })
        .await
}

/// The header-match VirtualService cut after its first route: valid YAML, with the default
/// route missing (requests without `end-user: jason` would find no route).
fn truncated_vs() -> String {
    let full = reviews_vs_header_match("jason", "v2", "v1");
    let cut = full.find("  - name: default").unwrap_or(full.len());
    full[..cut].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_file_keeps_the_last_good_routes_until_writes_settle() -> anyhow::Result<()>
{
    let mut mesh = start("folder_half_written", Layout::Plain, &[]).await?;
    let version = mesh.snapshot_version().await?;

    // A writer truncated the file, wrote its first half, and is still busy with it.
    mesh.write_in_place(VS_FILE, &truncated_vs())?;
    let writer = mesh.slow_writer(VS_FILE, "#\n", WRITER_EVERY);
    tokio::time::sleep(WOULD_HAVE_PUSHED).await;
    expect_last_good_config(&mut mesh, version).await?;
    wait_for_log(&mut mesh, VS_FILE, "settle").await?;
    expect_last_good_config(&mut mesh, version).await?;

    // The writer finishes: the complete new content is served.
    writer.stop();
    mesh.write_in_place(VS_FILE, &reviews_vs_header_match("jason", "v3", "v1"))?;
    mesh.wait_for_all(JASON, "v3", 10).await?;
    mesh.expect_all(NO_HEADERS, "v1", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_file_keeps_its_routes_until_writes_settle() -> anyhow::Result<()> {
    let mut mesh = start("folder_emptied_file", Layout::Plain, &[]).await?;
    let version = mesh.snapshot_version().await?;

    mesh.write_in_place(VS_FILE, "")?;
    let writer = mesh.slow_writer(VS_FILE, "\n", WRITER_EVERY);
    tokio::time::sleep(WOULD_HAVE_PUSHED).await;
    expect_last_good_config(&mut mesh, version).await?;

    // Left empty once writes settle: the VirtualService is gone, all versions answer.
    writer.stop();
    wait_until("every version answering", CONFIG_TIMEOUT, async || {
        let counts = mesh.versions(NO_HEADERS, 30).await?;
        ensure!(counts.len() == 3, "{counts:?}");
        Ok(())
    })
    .await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_over_from_inside_the_folder_is_served_whole() -> anyhow::Result<()> {
    let mut mesh = start("folder_renamed_over", Layout::Plain, &[]).await?;
    let version = mesh.snapshot_version().await?;

    // An editor's save: a hidden temp file in the folder, written slowly, renamed over.
    let temp = format!(".{VS_FILE}.tmp.yaml");
    mesh.write_in_place(&temp, &truncated_vs())?;
    tokio::time::sleep(WOULD_HAVE_PUSHED).await;
    expect_last_good_config(&mut mesh, version).await?;
    std::fs::write(
        mesh.config_dir.join(&temp),
        reviews_vs_weighted(&[("v3", 100)]),
    )?;
    std::fs::rename(mesh.config_dir.join(&temp), mesh.config_dir.join(VS_FILE))?;
    mesh.wait_for_all(NO_HEADERS, "v3", 10).await?;
    mesh.expect_all(JASON, "v3", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_symlinked_folder_is_followed() -> anyhow::Result<()> {
    let mut mesh = start("folder_symlink_swap", Layout::Symlinked, &[]).await?;
    let files = mesh.files()?;
    let (se, dr) = (&files[SE_FILE], &files[DR_FILE]);

    let all_v3 = reviews_vs_weighted(&[("v3", 100)]);
    mesh.swap_revision(&[(SE_FILE, se), (DR_FILE, dr), (VS_FILE, &all_v3)])?;
    mesh.wait_for_all(NO_HEADERS, "v3", 10).await?;
    mesh.remove_revision(1)?;

    // And again: the watch follows every swap, not just the first.
    let all_v2 = reviews_vs_weighted(&[("v2", 100)]);
    mesh.swap_revision(&[(SE_FILE, se), (DR_FILE, dr), (VS_FILE, &all_v2)])?;
    mesh.wait_for_all(NO_HEADERS, "v2", 10).await?;
    mesh.expect_all(JASON, "v2", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A swap no watch sees (the symlink is above the folder's parent, and the old revision is
/// kept) is picked up by the periodic rescan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_no_watch_sees_is_picked_up_by_the_periodic_rescan() -> anyhow::Result<()> {
    let mut mesh = start("folder_swap_above", Layout::SymlinkedAbove, &[]).await?;
    let files = mesh.files()?;
    let all_v3 = reviews_vs_weighted(&[("v3", 100)]);
    mesh.swap_revision(&[
        (SE_FILE, &files[SE_FILE]),
        (DR_FILE, &files[DR_FILE]),
        (VS_FILE, &all_v3),
    ])?;
    // The rescan interval (10 s) is within the wait (CONFIG_TIMEOUT, 20 s).
    mesh.wait_for_all(NO_HEADERS, "v3", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_and_recreated_folder_resumes_updates() -> anyhow::Result<()> {
    let mut mesh = start("folder_deleted_recreated", Layout::Plain, &[]).await?;
    let version = mesh.snapshot_version().await?;
    let files = mesh.files()?;
    let dir_name = mesh.config_dir.display().to_string();

    std::fs::remove_dir_all(&mesh.config_dir)?;
    // Not ready, naming the folder, while the last good config keeps routing.
    let readyz = wait_until(
        "/readyz to fail naming the folder",
        CONFIG_TIMEOUT,
        async || {
            let resp = mesh.monitoring_get("/readyz").await?;
            let body = resp.text();
            ensure!(
                resp.status.as_u16() == 503 && body.contains(&dir_name),
                "{}: {body}",
                resp.status
            );
            Ok(body)
        },
    )
    .await?;
    eprintln!("while deleted: {readyz}");
    expect_last_good_config(&mut mesh, version).await?;

    std::fs::create_dir(&mesh.config_dir)?;
    for (file, contents) in &files {
        let contents = if file == VS_FILE {
            reviews_vs_weighted(&[("v3", 100)])
        } else {
            contents.clone()
        };
        mesh.write_atomic(file, &contents)?;
    }
    mesh.wait_for_all(NO_HEADERS, "v3", 10).await?;
    wait_until("/readyz to answer 200 again", CONFIG_TIMEOUT, async || {
        let resp = mesh.monitoring_get("/readyz").await?;
        ensure!(resp.status.is_success(), "{}: {}", resp.status, resp.text());
        Ok(())
    })
    .await?;
    // Later edits land too: the new folder is watched.
    mesh.write_atomic(VS_FILE, &reviews_vs_weighted(&[("v1", 100)]))?;
    mesh.wait_for_all(JASON, "v1", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// Removes every file of the folder.
fn empty_the_folder(mesh: &FolderMesh) -> anyhow::Result<()> {
    for file in [SE_FILE, DR_FILE, VS_FILE] {
        std::fs::remove_file(mesh.config_dir.join(file))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_the_folder_is_refused_without_the_flag() -> anyhow::Result<()> {
    let mut mesh = start("folder_emptied_refused", Layout::Plain, &[]).await?;
    let version = mesh.snapshot_version().await?;
    let files = mesh.files()?;

    empty_the_folder(&mesh)?;
    tokio::time::sleep(WOULD_HAVE_PUSHED).await;
    expect_last_good_config(&mut mesh, version).await?;
    wait_for_log(
        &mut mesh,
        "--allow-empty-config",
        "keeping the last good config",
    )
    .await?;
    expect_last_good_config(&mut mesh, version).await?;

    // Config coming back is served as usual.
    for file in [SE_FILE, DR_FILE] {
        mesh.write_atomic(file, &files[file])?;
    }
    mesh.write_atomic(VS_FILE, &reviews_vs_weighted(&[("v3", 100)]))?;
    mesh.wait_for_all(NO_HEADERS, "v3", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_the_folder_is_served_with_the_flag() -> anyhow::Result<()> {
    let mut mesh = start(
        "folder_emptied_allowed",
        Layout::Plain,
        &["--allow-empty-config"],
    )
    .await?;
    let version = mesh.snapshot_version().await?;

    empty_the_folder(&mesh)?;
    // Envoy is told there is no reviews any more: requests stop reaching it.
    wait_until("reviews to stop answering", CONFIG_TIMEOUT, async || {
        let reply = mesh.proxy.reviews("reviews", NO_HEADERS).await;
        ensure!(reply.is_err(), "still routed: {reply:?}");
        Ok(())
    })
    .await?;
    let now = mesh.snapshot_version().await?;
    ensure!(now > version, "no new config pushed ({version} → {now})");
    mesh.envoy.ensure_no_rejected_updates().await
}
