//! The first root key: on an empty database, a root key with every
//! permission is minted, written to `<data dir>/bootstrap-root-key`
//! (readable only by its owner), and committed to the database only once
//! the file is safely on disk, so a start that fails halfway never leaves a
//! root key nobody holds.
//!
//! The file is written the careful way: a new temporary file beside it
//! (`create_new`, `O_NOFOLLOW`, mode 0600), fsynced, then linked into place
//! (a rename that never replaces: an existing file or symlink is an error),
//! and the directory fsynced. If the commit then fails, the file is removed.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand_core::{OsRng, RngCore};
use sea_orm::DatabaseConnection;

use crate::domain::audit::AuditEvent;
use crate::domain::key_settings::ExpiryChange;
use crate::domain::{self, OwnerScope, PermissionSet};
use crate::root_keys::{self, NewRootKey};
use crate::secrets::SecretHasher;
use crate::store;

/// The file the bootstrap root key is written to, inside the data directory.
pub const BOOTSTRAP_FILE: &str = "bootstrap-root-key";

/// Creates the first root key if the database has none, and returns the
/// file that holds it. Replicas starting together on an empty database
/// create one between them (the store checks again under its lock); a
/// replica whose key lost that race removes its file.
pub async fn bootstrap_root_key(
    db: &DatabaseConnection,
    hasher: &SecretHasher,
    data_dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    if store::count_root_keys(db).await? != 0 {
        return Ok(None);
    }
    let path = data_dir.join(BOOTSTRAP_FILE);
    refuse_existing(&path)?;
    let now = domain::now();
    let new = NewRootKey {
        name: "bootstrap".to_owned(),
        permissions: PermissionSet::everything(),
        owner_scope: OwnerScope::All,
        expiry: ExpiryChange::Never,
    };
    let (key, row) = root_keys::mint(hasher, new, None, now).await?;
    let mut event = AuditEvent::new("bootstrap", "local", now);
    root_keys::describe_new(&mut event, &row);
    let committed = write_then_commit(&path, &key, async {
        store::prepare(db, Some((row, &event)))
            .await
            .context("cannot store the bootstrap root key")
    })
    .await?;
    if committed {
        crate::audit::log(&event, true);
    }
    Ok(committed.then_some(path))
}

/// Writes `key` to `path`, then runs `commit`; removes the file again if
/// the commit fails or reports that it stored nothing. Returns what
/// `commit` returned.
pub async fn write_then_commit(
    path: &Path,
    key: &str,
    commit: impl Future<Output = anyhow::Result<bool>>,
) -> anyhow::Result<bool> {
    write_new_file(path, &format!("{key}\n"))?;
    let outcome = commit.await;
    if !matches!(outcome, Ok(true)) {
        if let Err(e) = remove_durably(path) {
            tracing::error!(path = %path.display(), error = %e, "could not remove the bootstrap root key file of a root key that was not stored; delete it");
        }
    }
    outcome
}

fn refuse_existing(path: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        anyhow::bail!(already_there(path));
    }
    Ok(())
}

fn already_there(path: &Path) -> String {
    format!(
        "{} already exists, but the database has no root key: it is left from an earlier \
         start (or is not ours). apikeyd never overwrites it. If it holds a key you still \
         need, keep it elsewhere; then move it away or delete it and start again",
        path.display()
    )
}

/// Creates `path` holding `contents`, mode 0600, never replacing what is
/// there and never following a symlink; durable once this returns.
fn write_new_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .context("the bootstrap file needs a directory")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let name = path
        .file_name()
        .context("the bootstrap file needs a name")?
        .to_string_lossy();
    let temporary = dir.join(format!(".{name}.{:016x}.tmp", OsRng.next_u64()));
    let written =
        write_temporary(&temporary, contents).and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match written {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => anyhow::bail!(already_there(path)),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot write the bootstrap root key to {}", path.display())
            });
        }
        Ok(()) => {}
    }
    sync_directory(dir).with_context(|| format!("cannot sync the data directory {}", dir.display()))
}

fn write_temporary(path: &Path, contents: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

fn remove_durably(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    match path.parent() {
        Some(dir) => sync_directory(dir),
        None => Ok(()),
    }
}

fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect()
    }

    #[tokio::test]
    async fn a_committed_key_stays_in_an_owner_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BOOTSTRAP_FILE);

        let committed = write_then_commit(&path, "rk_x", async { Ok(true) })
            .await
            .unwrap();

        assert!(committed);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "rk_x\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_failed_commit_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BOOTSTRAP_FILE);

        let outcome =
            write_then_commit(&path, "rk_x", async { anyhow::bail!("database went away") }).await;

        assert!(outcome.is_err());
        assert!(!path.exists());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_commit_that_stored_nothing_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BOOTSTRAP_FILE);

        let committed = write_then_commit(&path, "rk_x", async { Ok(false) })
            .await
            .unwrap();

        assert!(!committed);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn an_existing_file_or_symlink_is_never_replaced_nor_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BOOTSTRAP_FILE);
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let mut committed = false;

        let outcome = write_then_commit(&path, "rk_x", async {
            committed = true;
            Ok(true)
        })
        .await;

        let message = format!("{:#}", outcome.unwrap_err());
        assert!(
            message.contains("already exists") && message.contains("move it away"),
            "{message}"
        );
        assert!(!committed, "the key was committed without its file");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(leftovers(dir.path()).is_empty());
    }
}
