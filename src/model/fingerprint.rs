//! The weights fingerprint that replicas compare (GetModelInfo.weights_sha256): a SHA-256 over the
//! weight files, recorded in model.json by tools/export_model.py so a server need not read 6 GB
//! at every start; computed once at load for directories without it.
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::ModelFiles;
use super::ModelError;

/// The weight files: `model.onnx` and its external data (`model.onnx.*`), in name order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let unreadable = |e: std::io::Error| ModelError::Manifest { path: dir.to_path_buf(), reason: e.to_string() };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            p.is_file() && (name == ModelFiles::ONNX || name.starts_with("model.onnx."))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// SHA-256 (lower-case hex) of the weight files, each hashed as its file name, a NUL byte, its
/// length as 8 little-endian bytes, then its bytes (tools/export_model.py computes the same).
pub fn weights_sha256(dir: &Path) -> Result<String, ModelError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    for path in weight_files(dir)? {
        let unreadable = |e: std::io::Error| ModelError::Manifest { path: path.clone(), reason: e.to_string() };
        let mut file = std::fs::File::open(&path).map_err(unreadable)?;
        let len = file.metadata().map_err(unreadable)?.len();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        hasher.update(name.as_bytes());
        hasher.update([0u8]);
        hasher.update(len.to_le_bytes());
        loop {
            let read = file.read(&mut buffer).map_err(unreadable)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
