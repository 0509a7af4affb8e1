//! Durable writes, one way: temp file in the same directory → write → fsync →
//! rename → fsync the directory. Every file np-agent persists goes through here.
//!
//! Where many writers rename into the same folder at once (the spool's state
//! folders), the last step is shared: a [`DirSync`] batches their directory
//! fsyncs through [`GroupCommit`], so one fsync of the folder makes every
//! rename made before it durable, and each writer returns only after an
//! fsync that began after its own rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::util::group_commit::GroupCommit;

/// Prefix and suffix of the temp files [`write_atomic`] creates; start-up
/// recovery removes leftovers by this pattern.
pub const TEMP_PREFIX: &str = ".np-";
pub const TEMP_SUFFIX: &str = ".tmp";

/// A failed durable operation, naming the path and the step.
#[derive(Debug)]
pub struct DurableError {
    pub path: PathBuf,
    pub step: &'static str,
    pub source: io::Error,
}

impl std::fmt::Display for DurableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} failed: {}",
            self.path.display(),
            self.step,
            self.source
        )
    }
}

impl std::error::Error for DurableError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn at(path: &Path, step: &'static str) -> impl FnOnce(io::Error) -> DurableError + use<> {
    let path = path.to_path_buf();
    move |source| DurableError { path, step, source }
}

/// Writes `bytes` to `path` so that after return the file is complete and
/// durable, and a crash at any moment leaves either the old file or the new
/// one (plus at most a temp file that [`remove_temp_files`] clears). New files
/// get mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    write_atomic_mode(path, bytes, 0o600)
}

/// Mode of files handed to the EHR (inbox): group-readable, so an EHR import
/// account in the folder's group can read them.
pub const SHARED_FILE_MODE: u32 = 0o640;
/// Mode of folders handed to the EHR (inbox): group may list and enter.
pub const SHARED_DIR_MODE: u32 = 0o750;

/// Writes a file handed to the EHR (an inbox file) durably with
/// [`write_atomic_mode`], creating its folders: group-readable
/// ([`SHARED_FILE_MODE`], folders [`SHARED_DIR_MODE`]), so an import account
/// in the inbox folder's group (setgid, see the README) can read it.
pub fn write_shared(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    if let Some(dir) = path.parent() {
        create_dir_all_mode(dir, SHARED_DIR_MODE)?;
    }
    write_atomic_mode(path, bytes, SHARED_FILE_MODE)
}

/// [`write_atomic`] with an explicit mode for the new file. The mode is set
/// with `fchmod` after creation, so the process umask (systemd `UMask=0077`)
/// cannot narrow it.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    write_atomic_with(path, bytes, mode, sync_dir)
}

/// [`write_atomic`] whose directory fsync is `folder`'s batched one: the
/// file's folder must be `folder`'s.
pub fn write_atomic_in(folder: &DirSync, path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    write_atomic_with(path, bytes, 0o600, |_| folder.sync())
}

/// [`write_atomic`] without the fsync of the folder: the file is complete
/// on disk, its name is not until the caller fsyncs the folder
/// ([`sync_dir`], [`DirSync::sync`]), once for many files.
pub fn write_atomic_folder_unsynced(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    write_atomic_with(path, bytes, 0o600, |_| Ok(()))
}

/// [`rename`] with the batched directory fsyncs of `to`'s folder and
/// `from`'s folder.
pub fn rename_in(
    from_folder: &DirSync,
    from: &Path,
    to_folder: &DirSync,
    to: &Path,
) -> Result<(), DurableError> {
    fs::rename(from, to).map_err(at(to, "rename"))?;
    to_folder.sync()?;
    if !std::ptr::eq(from_folder, to_folder) {
        from_folder.sync()?;
    }
    Ok(())
}

/// The fsync of one folder, shared by the writers that need it at once.
pub struct DirSync {
    dir: PathBuf,
    commit: GroupCommit<()>,
    #[cfg(test)]
    fail_syncs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for DirSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirSync")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DirSync {
    pub fn new(dir: &Path) -> DirSync {
        let d = dir.to_path_buf();
        #[cfg(test)]
        let fail_syncs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        #[cfg(test)]
        let fail = fail_syncs.clone();
        DirSync {
            dir: dir.to_path_buf(),
            commit: GroupCommit::new(Box::new(move |_batch: Vec<()>| {
                #[cfg(test)]
                {
                    use std::sync::atomic::Ordering;
                    let left = fail.load(Ordering::SeqCst);
                    if left > 0 {
                        fail.store(left - 1, Ordering::SeqCst);
                        return Err(format!(
                            "{}: fsync directory: injected failure",
                            d.display()
                        ));
                    }
                }
                sync_dir(&d).map_err(|e| e.to_string())
            })),
            #[cfg(test)]
            fail_syncs,
        }
    }

    /// Returns once an fsync of the folder that began after this call is
    /// done: every rename into or out of it made before the call is durable.
    pub fn sync(&self) -> Result<(), DurableError> {
        self.commit.commit(()).map_err(|reason| DurableError {
            path: self.dir.clone(),
            step: "fsync directory",
            source: io::Error::other(reason),
        })
    }

    /// Folder fsyncs done so far (tests, metrics).
    pub fn batches(&self) -> u64 {
        self.commit.batches()
    }

    /// Makes the next `n` fsyncs of the folder fail, as a failing disk or a
    /// power cut before the flush would.
    #[cfg(test)]
    pub(crate) fn insecure_test_fail_syncs(&self, n: usize) {
        self.fail_syncs
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }
}

fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    sync_parent: impl FnOnce(&Path) -> Result<(), DurableError>,
) -> Result<(), DurableError> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| DurableError {
            path: path.to_path_buf(),
            step: "name",
            source: io::Error::new(io::ErrorKind::InvalidInput, "no usable file name"),
        })?;
    let nonce = crate::util::random::bytes::<6>()
        .map(|b| crate::util::b64::hex(&b))
        .map_err(|e| DurableError {
            path: path.to_path_buf(),
            step: "random",
            source: io::Error::other(e),
        })?;
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}.{nonce}{TEMP_SUFFIX}"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(at(&tmp, "create"))?;
        if mode != 0o600 {
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(at(&tmp, "chmod"))?;
        }
        file.write_all(bytes).map_err(at(&tmp, "write"))?;
        file.sync_all().map_err(at(&tmp, "fsync"))?;
        drop(file);
        fs::rename(&tmp, path).map_err(at(path, "rename"))?;
        sync_parent(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames `from` to `to` and makes the rename durable in both directories.
pub fn rename(from: &Path, to: &Path) -> Result<(), DurableError> {
    fs::rename(from, to).map_err(at(to, "rename"))?;
    sync_dir(parent_of(to))?;
    let from_dir = parent_of(from);
    if from_dir != parent_of(to) {
        sync_dir(from_dir)?;
    }
    Ok(())
}

/// Removes `path` durably; a missing file is not an error.
pub fn remove(path: &Path) -> Result<(), DurableError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent_of(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(at(path, "remove")(e)),
    }
}

/// Creates `dir` (and parents) with mode 0700 when missing, durably.
pub fn create_dir_all(dir: &Path) -> Result<(), DurableError> {
    create_dir_all_mode(dir, 0o700)
}

/// [`create_dir_all`] with an explicit mode for the folders it creates (set
/// after creation, so the umask cannot narrow it). Existing folders are left
/// as they are.
pub fn create_dir_all_mode(dir: &Path, mode: u32) -> Result<(), DurableError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.as_os_str().is_empty() && !cur.exists() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(at(dir, "mkdir"))?;
    if mode != 0o700 {
        for d in &missing {
            fs::set_permissions(d, fs::Permissions::from_mode(mode)).map_err(at(d, "chmod"))?;
        }
    }
    sync_dir(parent_of(dir))
}

/// fsyncs a directory so renames and creations inside it survive power loss.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir, "fsync directory"))
}

/// Removes the temp files a crash inside [`write_atomic`] may have left in
/// `dir` (not recursive). Returns how many were removed.
pub fn remove_temp_files(dir: &Path) -> Result<usize, DurableError> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(at(dir, "read directory")(e)),
    };
    for entry in entries {
        let entry = entry.map_err(at(dir, "read directory"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
            fs::remove_file(entry.path()).map_err(at(&entry.path(), "remove temp file"))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "np-durable-{name}-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_replaces_and_leaves_no_temp() {
        let dir = scratch("write");
        let path = dir.join("item.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn shared_modes_are_set_whatever_the_umask() {
        let dir = scratch("shared");
        let sub = dir.join("inbox/partner/group");
        create_dir_all_mode(&sub, SHARED_DIR_MODE).unwrap();
        for d in [dir.join("inbox"), dir.join("inbox/partner"), sub.clone()] {
            assert_eq!(
                fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o750,
                "{}",
                d.display()
            );
        }
        let f = sub.join("task.json");
        write_atomic_mode(&f, b"{}", SHARED_FILE_MODE).unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o640
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failure_names_the_path_and_step() {
        let dir = scratch("fail");
        let err = write_atomic(&dir.join("missing/sub/item"), b"x").unwrap_err();
        assert_eq!(err.step, "create");
        assert!(err.to_string().contains("missing/sub"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn recovery_removes_only_our_temp_files() {
        let dir = scratch("recover");
        fs::write(dir.join(".np-item.json.abcdef.tmp"), b"half").unwrap();
        fs::write(dir.join("item.json"), b"whole").unwrap();
        fs::write(dir.join(".other.tmp"), b"not ours").unwrap();
        assert_eq!(remove_temp_files(&dir).unwrap(), 1);
        assert!(dir.join("item.json").exists());
        assert!(dir.join(".other.tmp").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rename_and_remove() {
        let dir = scratch("rename");
        let sub = dir.join("done");
        create_dir_all(&sub).unwrap();
        write_atomic(&dir.join("a"), b"x").unwrap();
        rename(&dir.join("a"), &sub.join("a")).unwrap();
        assert!(sub.join("a").exists() && !dir.join("a").exists());
        remove(&sub.join("a")).unwrap();
        remove(&sub.join("a")).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }
}
