//! The real disk: `std::fs` under a root directory, with real `File::sync_all` and a fsync of
//! the parent directory after every create, rename and remove (so the directory entry is
//! durable too, as the [`Disk`] contract requires).
//!
//! Paths are checked by [`check_path`]: `..`, empty components and a leading `/` are refused
//! with `InvalidInput`, so nothing escapes the root. Subdirectories are created on demand.
//! The calls are blocking and short; `tokio::fs` cannot be used because it panics under madsim.

use super::{check_path, Disk};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A disk rooted at a directory of the real file system.
#[derive(Debug, Clone)]
pub struct RealDisk {
    root: PathBuf,
}

impl RealDisk {
    /// A disk whose files live under `root` (created if absent on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn resolve(&self, path: &str) -> io::Result<PathBuf> {
        check_path(path)?;
        Ok(self.root.join(path))
    }

    /// Creates the parent directories of `full` (durably) if needed.
    fn ensure_parent(&self, full: &Path) -> io::Result<()> {
        if let Some(parent) = full.parent() {
            if !parent.exists() {
                std::fs::create_dir_all(parent)?;
                // Make the new directories' entries durable, from the root down.
                let mut dir = parent.to_path_buf();
                while dir.starts_with(&self.root) && dir != self.root {
                    let Some(up) = dir.parent() else { break };
                    sync_dir(up)?;
                    dir = up.to_path_buf();
                }
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(full: &Path) -> &Path {
    full.parent().unwrap_or(Path::new("."))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

impl Disk for RealDisk {
    async fn create(&self, path: &str) -> io::Result<()> {
        let full = self.resolve(path)?;
        self.ensure_parent(&full)?;
        File::create(&full)?;
        sync_dir(parent_of(&full))
    }

    async fn append(&self, path: &str, data: &[u8]) -> io::Result<u64> {
        let full = self.resolve(path)?;
        self.ensure_parent(&full)?;
        let existed = full.exists();
        let mut file = OpenOptions::new().create(true).append(true).open(&full)?;
        let offset = file.seek(SeekFrom::End(0))?;
        file.write_all(data)?;
        if !existed {
            sync_dir(parent_of(&full))?;
        }
        Ok(offset)
    }

    async fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let full = self.resolve(path)?;
        self.ensure_parent(&full)?;
        let existed = full.exists();
        let mut file = OpenOptions::new().create(true).truncate(false).write(true).open(&full)?;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(data)?;
        if !existed {
            sync_dir(parent_of(&full))?;
        }
        Ok(())
    }

    async fn read(&self, path: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let full = self.resolve(path)?;
        let mut file = File::open(full)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut out = Vec::new();
        file.take(len as u64).read_to_end(&mut out)?;
        Ok(out)
    }

    async fn read_all(&self, path: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.resolve(path)?)
    }

    async fn len(&self, path: &str) -> io::Result<u64> {
        Ok(std::fs::metadata(self.resolve(path)?)?.len())
    }

    async fn fsync(&self, path: &str) -> io::Result<()> {
        File::open(self.resolve(path)?)?.sync_all()
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out)?;
        out.retain(|p| p.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    async fn remove(&self, path: &str) -> io::Result<()> {
        let full = self.resolve(path)?;
        std::fs::remove_file(&full)?;
        sync_dir(parent_of(&full))
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let from_full = self.resolve(from)?;
        let to_full = self.resolve(to)?;
        self.ensure_parent(&to_full)?;
        std::fs::rename(&from_full, &to_full)?;
        sync_dir(parent_of(&to_full))?;
        if parent_of(&from_full) != parent_of(&to_full) {
            sync_dir(parent_of(&from_full))?;
        }
        Ok(())
    }
}
