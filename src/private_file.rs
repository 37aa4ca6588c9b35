//! Files that hold conversations or credentials (the SQLite database with its `-wal` and `-shm`,
//! exports, backups, the keys file) are readable and writable by their owner only (0600), whatever
//! the umask, and also when they existed already with a wider mode.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Creates (or truncates) `path`, owner-only.
pub fn create(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    // The mode above applies only to a file this call creates.
    restrict(&file)?;
    Ok(file)
}

/// Creates `path` empty when it does not exist yet, and makes it owner-only either way (SQLite then
/// gives the WAL and shared-memory files it creates the same permissions).
pub fn create_if_absent(path: &Path) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    restrict(&options.open(path)?)
}

/// Makes `path` owner-only if it exists (a database's `-wal` and `-shm` from an earlier run).
pub fn restrict_if_present(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(metadata) if narrowable(&metadata) => std::fs::set_permissions(path, owner_only()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Only regular files are narrowed: `--out /dev/stdout` (a terminal) or `/dev/null` keep theirs.
fn restrict(file: &File) -> io::Result<()> {
    if narrowable(&file.metadata()?) { file.set_permissions(owner_only()) } else { Ok(()) }
}

#[cfg(unix)]
fn narrowable(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.is_file() && metadata.permissions().mode() & 0o077 != 0
}

#[cfg(not(unix))]
fn narrowable(_: &std::fs::Metadata) -> bool {
    false
}

#[cfg(unix)]
fn owner_only() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o600)
}

#[cfg(not(unix))]
fn owner_only() -> std::fs::Permissions {
    unreachable!("only narrowed on unix")
}
