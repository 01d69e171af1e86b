//! Private files: how every lbctl process creates, writes and reads the
//! files of a stack and of the machine-wide address table.
//!
//! The state and the runtime files hold launch-template and function `env`
//! values, which are often secrets, and they tell processes what to run. So:
//!
//! - Directories are created `0700` and files `0600` from the start,
//!   whatever the umask: a file is never created open and tightened later.
//! - A file is replaced atomically through a temporary file created
//!   exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`) beside it and renamed over
//!   it, so a planted symlink is never written through and a reader sees
//!   the old bytes or the new, never a torn file.
//! - A file read to decide what to run or where to send traffic is
//!   *trusted* only when it is not a symlink, is owned by this user and is
//!   writable by nobody else; otherwise the read fails with a message
//!   naming the file and why.
//!
//! **Architecture invariant:** knows paths, modes and owners only; nothing
//! of lbctl's file formats, state or processes.
#![deny(missing_docs)]

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Mode of every directory lbctl creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file lbctl creates.
pub const FILE_MODE: u32 = 0o600;

/// The effective user id of this process.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no failure mode and no preconditions.
    unsafe { libc::geteuid() }
}

/// Creates `dir` and its missing parents, each created one `0700`
/// (parents that exist are left as they are).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => bail!("{} exists and is not a directory", dir.display()),
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("inspecting {}", dir.display())),
    }
    if let Some(parent) = dir.parent().filter(|it| !it.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        // Another process made it meanwhile.
        Err(err) if err.kind() == ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("creating {}", dir.display())),
    }
    // The umask may have taken bits of the owner's own (never added any):
    // the directory is empty and ours, so setting its mode now exposes nothing.
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

/// Opens a new file at `path` for writing, `0600`, failing if anything
/// (a file, a symlink) is already there.
fn create_exclusive(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Replaces `path` with `bytes` atomically, the file `0600`: a temporary
/// file created exclusively in the same directory (created `0700` when
/// missing), synced, then renamed over `path`. A symlink at `path` is
/// replaced, never followed.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|it| !it.as_os_str().is_empty()).unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let name = path.file_name().and_then(|it| it.to_str()).unwrap_or("file");
    let (tmp, mut file) = loop {
        let suffix: u32 = rand::random();
        let tmp = dir.join(format!(".{name}.{}.{suffix:08x}.tmp", std::process::id()));
        match create_exclusive(&tmp) {
            Ok(file) => break (tmp, file),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err).with_context(|| format!("creating {}", tmp.display())),
        }
    };
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    if let Err(err) = written {
        std::fs::remove_file(&tmp).ok();
        return Err(err).with_context(|| format!("writing {}", tmp.display()));
    }
    if let Err(err) = std::fs::rename(&tmp, path) {
        std::fs::remove_file(&tmp).ok();
        return Err(err).with_context(|| format!("replacing {}", path.display()));
    }
    Ok(())
}

/// Opens `path` for appending (a log), creating it `0600` (and its
/// directory `0700`); a symlink at `path` is refused.
pub fn open_private_append(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Opens `path` for reading and writing without truncating it (a lock
/// file), creating it `0600` (and its directory `0700`); a symlink at
/// `path` is refused.
pub fn open_private_rw(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Why a file or directory with this owner and mode may not be trusted:
/// `None` when it is this user's and nobody else may write to it.
fn distrust(uid: u32, mode: u32) -> Option<String> {
    let me = current_uid();
    if uid != me {
        return Some(format!("it is owned by uid {uid}, not by this user (uid {me})"));
    }
    if mode & 0o022 != 0 {
        return Some(format!("it is writable by group or others (mode {:04o})", mode & 0o7777));
    }
    None
}

/// Reads a file lbctl wrote, trusting it only when it is this user's and
/// writable by nobody else; `Ok(None)` when it does not exist. A symlink,
/// a file of another user or a group- or world-writable file is an error
/// naming the file.
pub fn read_trusted(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            bail!("refusing {}: it is a symbolic link", path.display())
        }
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("inspecting {}", path.display()))?;
    if let Some(why) = distrust(meta.uid(), meta.mode()) {
        bail!("refusing {}: {why}", path.display());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(bytes))
}

/// Checks that `dir` is a private directory of this user: a directory (not
/// a symlink to one), owned by this user, with no permission for group or
/// others. The error names the directory and what is wrong.
pub fn verify_private_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    if meta.file_type().is_symlink() {
        bail!("refusing {}: it is a symbolic link", dir.display());
    }
    if !meta.is_dir() {
        bail!("refusing {}: it is not a directory", dir.display());
    }
    let me = current_uid();
    if meta.uid() != me {
        bail!("refusing {}: it is owned by uid {}, not by this user (uid {me})", dir.display(), meta.uid());
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "refusing {}: its mode is {:04o}; it must be private to this user (0700)",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Makes an existing tree private: every directory of this user under
/// `dir` (itself included) `0700`, every file `0600` (`0700` when
/// executable). Symlinks and other users' entries are left alone. For trees
/// written by releases that did not create them private.
pub fn tighten_tree(dir: &Path) -> Result<()> {
    let me = current_uid();
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("inspecting {}", dir.display())),
    };
    if meta.file_type().is_symlink() || meta.uid() != me {
        return Ok(());
    }
    let wanted = if meta.is_dir() {
        DIR_MODE
    } else if meta.mode() & 0o100 != 0 {
        0o700
    } else {
        FILE_MODE
    };
    if meta.mode() & 0o777 != wanted {
        std::fs::set_permissions(dir, Permissions::from_mode(wanted))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?.flatten() {
            tighten_tree(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    /// Runs `f` with umask `mask`, restoring the previous one.
    fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
        // SAFETY: umask has no failure mode; tests touching it run in this one test.
        let old = unsafe { libc::umask(mask) };
        let result = f();
        unsafe { libc::umask(old) };
        result
    }

    #[test]
    fn files_and_directories_are_created_private_and_symlinks_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("a/b/state.json");
        with_umask(0o022, || write_private(&file, b"one").unwrap());
        assert_eq!((mode(&root.path().join("a")), mode(&root.path().join("a/b")), mode(&file)), (0o700, 0o700, 0o600));
        write_private(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("a/b")).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");

        // A symlink planted where a file goes is replaced, and its target untouched.
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let planted = root.path().join("a/b/planted.json");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_private(&planted, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&planted).unwrap().file_type().is_symlink());

        // Logs and lock files refuse a symlink.
        let log = root.path().join("a/b/proxy.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        assert!(open_private_append(&log).is_err());
        assert!(open_private_rw(&log).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let log = root.path().join("a/b/other.log");
        with_umask(0o000, || open_private_append(&log).unwrap());
        assert_eq!(mode(&log), 0o600);
    }

    #[test]
    fn only_own_private_files_are_trusted() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("config.json");
        assert_eq!(read_trusted(&file).unwrap(), None);
        write_private(&file, b"{}").unwrap();
        assert_eq!(read_trusted(&file).unwrap().unwrap(), b"{}");
        std::fs::set_permissions(&file, Permissions::from_mode(0o666)).unwrap();
        let err = read_trusted(&file).unwrap_err().to_string();
        assert!(err.ends_with("config.json: it is writable by group or others (mode 0666)"), "{err}");
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        assert!(read_trusted(&file).is_ok(), "readable by others is not a reason to distrust");
        let link = root.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = read_trusted(&link).unwrap_err().to_string();
        assert!(err.ends_with("link.json: it is a symbolic link"), "{err}");
        assert!(distrust(current_uid() + 1, 0o600).unwrap().starts_with("it is owned by uid"));
    }

    #[test]
    fn private_directories_are_verified_and_trees_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("table");
        create_private_dir(&dir).unwrap();
        verify_private_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let err = verify_private_dir(&dir).unwrap_err().to_string();
        assert!(err.ends_with("table: its mode is 0755; it must be private to this user (0700)"), "{err}");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(verify_private_dir(&link).unwrap_err().to_string().ends_with("link: it is a symbolic link"));

        std::fs::write(dir.join("old.json"), b"{}").unwrap();
        std::fs::set_permissions(dir.join("old.json"), Permissions::from_mode(0o644)).unwrap();
        tighten_tree(&dir).unwrap();
        assert_eq!((mode(&dir), mode(&dir.join("old.json"))), (0o700, 0o600));
    }
}
