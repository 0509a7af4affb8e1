//! Durable writes, one way: temp file in the same directory → write → fsync →
//! rename → fsync the directory. Every file np-agent persists goes through here.
//!
//! Where many writers rename into the same folder at once (the spool's state
//! folders), the last step is shared: a [`DirSync`] batches their directory
//! fsyncs through [`GroupCommit`], so one fsync of the folder makes every
//! rename made before it durable, and each writer returns only after an
//! fsync that began after its own rename.
//!
//! Where one writer stores many files at once (the outbox intake), a
//! [`Batch`] takes the flushes out of the per-file path: every file is
//! written under a temp name without a flush, one barrier flushes them all,
//! and only then are they renamed into place, layer by layer, each layer's
//! folders fsynced before the next layer is renamed. So a file is never
//! visible under its name before its content is on disk, and a later layer
//! never becomes durable before an earlier one.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

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
        self.commit
            .submit(())
            .at(&self.dir, "fsync directory")
            .wait()
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
    let tmp = temp_path(path)?;
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

/// A fresh temp name beside `path`, of the pattern [`remove_temp_files`]
/// clears.
fn temp_path(path: &Path) -> Result<PathBuf, DurableError> {
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
    Ok(parent_of(path).join(format!("{TEMP_PREFIX}{name}.{nonce}{TEMP_SUFFIX}")))
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

/// Removes `path` without the fsync of its folder; a missing file is not an
/// error. Only for a file whose coming back after a crash is harmless: the
/// caller says why at the call.
pub fn remove_folder_unsynced(path: &Path) -> Result<(), DurableError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(at(path, "remove")(e)),
    }
}

/// Renames `from` to `to` without an fsync of either folder. Only where a
/// rename lost in a crash is harmless: the caller says why at the call.
pub fn rename_folders_unsynced(from: &Path, to: &Path) -> Result<(), DurableError> {
    fs::rename(from, to).map_err(at(to, "rename"))
}

/// Threads a [`Batch`] issues its flushes from at once. The filesystem's
/// journal merges flushes that wait at the same time into one commit, so a
/// few in parallel cost little more than one.
///
/// Not `syncfs(2)`, one call for the whole file system: it also writes
/// back every other program's dirty data there, and an appliance shares
/// its disk with the EHR and the backups. Its cost is then theirs, and
/// ours depends on what they have written: measured beside other writers
/// it flushed fewer files a second than these threads, on a quiet disk
/// three to four times more.
pub const BATCH_SYNC_THREADS: usize = 8;

/// Files written together and made durable by one barrier.
///
/// [`Batch::write`] writes a file under a temp name in its folder, without
/// a flush, into a numbered layer. [`Batch::flush`] is the barrier: the
/// content of every file written so far is flushed (`fdatasync` of each,
/// from [`BATCH_SYNC_THREADS`] threads at once). [`Batch::install`] then
/// renames one layer's files into place and fsyncs every folder the layer
/// changed (the same way). Until its layer is installed a file exists only
/// under a temp name, which readers skip and start-up recovery removes
/// ([`remove_temp_files`]): a crash or a failed flush leaves either the old
/// file or the new one, complete, and never a layer's file durable while an
/// earlier layer's is not. Dropping a batch removes the temp files of the
/// layers it did not install.
#[derive(Debug, Default)]
pub struct Batch {
    layers: Vec<Layer>,
    /// Every file written so far has its content on disk.
    flushed: bool,
    /// Flushes and folder fsyncs issued (tests, metrics).
    syncs: usize,
    /// Why a flush or install failed: the batch stays failed.
    failed: Option<String>,
    #[cfg(test)]
    fail_flushes: usize,
}

#[derive(Debug, Default)]
struct Layer {
    /// `(temp path, final path)` of each file, in the order written.
    files: Vec<(PathBuf, PathBuf)>,
    /// Folders whose entries change when the layer is installed, and the
    /// parents of folders created for it.
    dirs: BTreeSet<PathBuf>,
    installed: bool,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Files written and not yet installed.
    pub fn pending(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| !l.installed)
            .map(|l| l.files.len())
            .sum()
    }

    /// Flushes and folder fsyncs issued so far.
    pub fn syncs(&self) -> usize {
        self.syncs
    }

    fn layer(&mut self, layer: usize) -> &mut Layer {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, Layer::default);
        }
        &mut self.layers[layer]
    }

    /// Creates `dir` (and its missing parents, mode 0700) now, without a
    /// flush; installing `layer` fsyncs the folders that hold them.
    pub fn create_dir_all(&mut self, layer: usize, dir: &Path) -> Result<(), DurableError> {
        if dir.is_dir() {
            return Ok(());
        }
        let missing = make_dirs(dir)?;
        let l = self.layer(layer);
        for d in &missing {
            l.dirs.insert(parent_of(d).to_path_buf());
            l.dirs.insert(d.clone());
        }
        Ok(())
    }

    /// Writes `bytes` (mode 0600) under a temp name beside `path`, without a
    /// flush. The file takes its name when `layer` is installed.
    pub fn write(&mut self, layer: usize, path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
        if self.layers.get(layer).is_some_and(|l| l.installed) {
            return Err(DurableError {
                path: path.to_path_buf(),
                step: "write into a batch",
                source: io::Error::other(format!("layer {layer} is already installed")),
            });
        }
        let tmp = temp_path(path)?;
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(at(&tmp, "create"))
            .and_then(|mut f| f.write_all(bytes).map_err(at(&tmp, "write")));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.flushed = false;
        let l = self.layer(layer);
        l.dirs.insert(parent_of(path).to_path_buf());
        l.files.push((tmp, path.to_path_buf()));
        Ok(())
    }

    /// The barrier: returns once the content of every file written so far
    /// is on disk. A failure fails the batch: nothing of it may be taken
    /// as stored, and dropping it removes its temp files.
    pub fn flush(&mut self) -> Result<(), DurableError> {
        self.check()?;
        let result = self.flush_all();
        self.fail_on(result)
    }

    fn flush_all(&mut self) -> Result<(), DurableError> {
        if self.flushed {
            return Ok(());
        }
        #[cfg(test)]
        if self.fail_flushes > 0 {
            self.fail_flushes -= 1;
            let path = self
                .layers
                .iter()
                .flat_map(|l| l.files.first())
                .map(|(tmp, _)| tmp.clone())
                .next()
                .unwrap_or_default();
            return Err(DurableError {
                path,
                step: "fdatasync",
                source: io::Error::other("injected failure"),
            });
        }
        let files: Vec<&Path> = self
            .layers
            .iter()
            .filter(|l| !l.installed)
            .flat_map(|l| l.files.iter().map(|(tmp, _)| tmp.as_path()))
            .collect();
        self.syncs += files.len();
        in_parallel(&files, "fdatasync", |p| File::open(p)?.sync_data())?;
        self.flushed = true;
        Ok(())
    }

    /// Renames `layer`'s files into place and fsyncs the folders it
    /// changed; flushes first when [`Batch::flush`] has not run since the
    /// last write. Install layers in order: on return this layer is durable.
    pub fn install(&mut self, layer: usize) -> Result<(), DurableError> {
        self.flush()?;
        let result = self.rename_and_sync(layer);
        self.fail_on(result)
    }

    fn rename_and_sync(&mut self, layer: usize) -> Result<(), DurableError> {
        let Some(l) = self.layers.get_mut(layer) else {
            return Ok(());
        };
        if l.installed {
            return Ok(());
        }
        for (tmp, path) in &l.files {
            fs::rename(tmp, path).map_err(at(path, "rename"))?;
        }
        l.installed = true;
        let dirs: Vec<&Path> = l.dirs.iter().map(PathBuf::as_path).collect();
        self.syncs += dirs.len();
        in_parallel(&dirs, "fsync directory", |d| File::open(d)?.sync_all())
    }

    /// An error when an earlier flush or install of the batch failed.
    fn check(&self) -> Result<(), DurableError> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => Err(DurableError {
                path: self
                    .layers
                    .iter()
                    .flat_map(|l| l.dirs.first())
                    .next()
                    .cloned()
                    .unwrap_or_default(),
                step: "batch",
                source: io::Error::other(format!("an earlier flush failed: {reason}")),
            }),
        }
    }

    fn fail_on(&mut self, result: Result<(), DurableError>) -> Result<(), DurableError> {
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    /// [`Batch::flush`], then every layer installed in order.
    pub fn commit(mut self) -> Result<(), DurableError> {
        self.flush()?;
        for layer in 0..self.layers.len() {
            self.install(layer)?;
        }
        Ok(())
    }

    /// Makes the next `n` flushes fail, as a failing disk would (its
    /// files stay written, unflushed, as after a power cut).
    #[cfg(test)]
    pub(crate) fn insecure_test_fail_flushes(&mut self, n: usize) {
        self.fail_flushes = n;
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for l in self.layers.iter().filter(|l| !l.installed) {
            for (tmp, _) in &l.files {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

/// Runs `op` on every path, from up to [`BATCH_SYNC_THREADS`] threads;
/// the first failure is returned (the others still run).
fn in_parallel(
    paths: &[&Path],
    step: &'static str,
    op: fn(&Path) -> io::Result<()>,
) -> Result<(), DurableError> {
    let threads = BATCH_SYNC_THREADS.min(paths.len());
    if threads <= 1 {
        for p in paths {
            op(p).map_err(at(p, step))?;
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let work = || -> Result<(), DurableError> {
        let mut first = Ok(());
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = paths.get(i) else {
                return first;
            };
            if let Err(e) = op(p) {
                if first.is_ok() {
                    first = Err(at(p, step)(e));
                }
            }
        }
    };
    std::thread::scope(|s| {
        let workers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut result = work();
        for w in workers {
            let r = w.join().unwrap_or_else(|_| {
                Err(DurableError {
                    path: PathBuf::new(),
                    step,
                    source: io::Error::other("flush thread panicked"),
                })
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
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
    let missing = make_dirs(dir)?;
    if mode != 0o700 {
        for d in &missing {
            fs::set_permissions(d, fs::Permissions::from_mode(mode)).map_err(at(d, "chmod"))?;
        }
    }
    sync_dir(parent_of(dir))
}

/// Creates `dir` and its missing parents (mode 0700) without a flush, and
/// returns the folders it created, deepest first.
fn make_dirs(dir: &Path) -> Result<Vec<PathBuf>, DurableError> {
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
    Ok(missing)
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

    fn visible(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Nothing of a layer is visible under its name before the barrier and
    /// its install; a later layer not before its own install.
    #[test]
    fn a_batch_shows_each_layer_only_once_installed() {
        let dir = scratch("batch-layers");
        let queue = dir.join("queue");
        let mut batch = Batch::new();
        batch.create_dir_all(0, &dir.join("case")).unwrap();
        batch.write(0, &dir.join("case/data"), b"data").unwrap();
        batch.write(0, &dir.join("case/record"), b"record").unwrap();
        create_dir_all(&queue).unwrap();
        batch.write(1, &queue.join("item"), b"item").unwrap();
        assert_eq!(batch.pending(), 3);
        assert!(!dir.join("case/data").exists() && !queue.join("item").exists());
        batch.flush().unwrap();
        assert!(
            !dir.join("case/record").exists(),
            "flushed, not yet installed"
        );
        batch.install(0).unwrap();
        assert_eq!(visible(&dir.join("case")), ["data", "record"]);
        assert_eq!(visible(&queue).len(), 1, "the item still has its temp name");
        assert!(!queue.join("item").exists());
        batch.install(1).unwrap();
        assert_eq!(fs::read(queue.join("item")).unwrap(), b"item");
        // Three files flushed; the folders: `case` (new, and its parent) and `queue`.
        assert_eq!(batch.syncs(), 3 + 3);
        assert_eq!(batch.pending(), 0);
        drop(batch);
        assert_eq!(visible(&queue), ["item"]);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A file written after the barrier is flushed by the next one: the
    /// install that follows does not rename it unflushed.
    #[test]
    fn a_write_after_the_barrier_is_flushed_before_its_install() {
        let dir = scratch("batch-boundary");
        let mut batch = Batch::new();
        batch.write(0, &dir.join("a"), b"a").unwrap();
        batch.flush().unwrap();
        assert_eq!(batch.syncs(), 1);
        batch.flush().unwrap();
        assert_eq!(batch.syncs(), 1, "nothing new to flush");
        batch.write(0, &dir.join("b"), b"b").unwrap();
        batch.install(0).unwrap();
        assert_eq!(
            batch.syncs(),
            1 + 2 + 1,
            "both files flushed again, one folder"
        );
        assert_eq!(visible(&dir), ["a", "b"]);
        let err = batch.write(0, &dir.join("c"), b"c").unwrap_err();
        assert_eq!(err.step, "write into a batch");
        fs::remove_dir_all(dir).unwrap();
    }

    /// More files than flush threads, replacing some: every file complete
    /// under its name, no temp file left.
    #[test]
    fn a_large_batch_commits_every_file() {
        let dir = scratch("batch-large");
        for i in 0..10 {
            write_atomic(&dir.join(format!("f{i}")), b"old").unwrap();
        }
        let mut batch = Batch::new();
        for i in 0..100 {
            batch
                .write(
                    i % 2,
                    &dir.join(format!("f{i}")),
                    format!("new {i}").as_bytes(),
                )
                .unwrap();
        }
        batch.commit().unwrap();
        let names = visible(&dir);
        assert_eq!(names.len(), 100, "{names:?}");
        for i in 0..100 {
            assert_eq!(
                fs::read_to_string(dir.join(format!("f{i}"))).unwrap(),
                format!("new {i}")
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }

    /// A failed barrier fails the whole batch: no file of it takes its
    /// name, the files it would have replaced keep their content, and
    /// dropping it leaves no temp file.
    #[test]
    fn a_failed_flush_fails_the_whole_batch() {
        let dir = scratch("batch-fail");
        write_atomic(&dir.join("kept"), b"old").unwrap();
        let mut batch = Batch::new();
        batch.write(0, &dir.join("kept"), b"new").unwrap();
        batch.write(0, &dir.join("fresh"), b"new").unwrap();
        batch.write(1, &dir.join("later"), b"new").unwrap();
        batch.insecure_test_fail_flushes(1);
        let err = batch.install(0).unwrap_err();
        assert_eq!(err.step, "fdatasync");
        assert_eq!(batch.pending(), 3, "nothing installed");
        let err = batch.flush().unwrap_err();
        assert_eq!(err.step, "batch", "a failed batch stays failed: {err}");
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert_eq!(batch.commit().unwrap_err().step, "batch");
        assert_eq!(visible(&dir), ["kept"]);
        assert_eq!(fs::read(dir.join("kept")).unwrap(), b"old");
        fs::remove_dir_all(dir).unwrap();
    }

    /// A power cut before the barrier (the process gone, its batch never
    /// dropped): only temp files are left, and recovery removes them.
    #[test]
    fn a_power_cut_before_the_barrier_leaves_only_temp_files() {
        let dir = scratch("batch-cut");
        let mut batch = Batch::new();
        batch.write(0, &dir.join("record"), b"new").unwrap();
        batch.write(1, &dir.join("item"), b"new").unwrap();
        std::mem::forget(batch);
        assert!(!dir.join("record").exists() && !dir.join("item").exists());
        assert_eq!(remove_temp_files(&dir).unwrap(), 2);
        assert!(visible(&dir).is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
