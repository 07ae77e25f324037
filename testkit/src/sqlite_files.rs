//! What a SQLite database left beside itself in a directory: after a clean stop there must be
//! no `-wal` or `-shm` file (the last connection closed checkpoints and removes them).

use std::path::Path;

/// The names of the `-wal` and `-shm` files in `dir` (none when `dir` does not exist).
pub fn wal_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-wal") || n.ends_with("-shm"))
        .collect()
}
