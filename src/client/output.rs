//! The `--out` folder, checked before any work: it can be created and written, and it does not
//! hold an earlier analysis unless `--overwrite` says to replace it.
use std::path::Path;

use anyhow::Context;

/// The files `analyze` writes.
pub const FILES: [&str; 5] = ["angles.csv", "significance.csv", "analysis.json", "angles.svg", "significance.svg"];
/// Written besides [`FILES`] by `--all-layers`.
pub const ALL_LAYERS_FILES: [&str; 2] = ["all_layers.csv", "all_layers.svg"];
/// Written besides [`FILES`] by `--steps sublayers` and `--norms`.
pub const INSIDE_FILES: [&str; 3] = ["steps.csv", "steps.svg", "norms.csv"];

/// Creates `dir` and proves it writable; refuses a folder with an earlier analysis unless `overwrite`.
/// Returns whether it created the folder (so a failed analysis can take the empty folder away again).
pub fn prepare(dir: &Path, overwrite: bool) -> anyhow::Result<bool> {
    let files: Vec<&str> = FILES.iter().chain(&ALL_LAYERS_FILES).chain(&INSIDE_FILES).copied().collect();
    prepare_for(dir, overwrite, &files)
}

/// As [`prepare`], for a command that writes `files`.
pub fn prepare_for(dir: &Path, overwrite: bool, files: &[&str]) -> anyhow::Result<bool> {
    let earlier: Vec<&str> = files.iter().copied().filter(|f| dir.join(f).exists()).collect();
    if !earlier.is_empty() && !overwrite {
        anyhow::bail!(
            "{} already holds an analysis ({}); pass --overwrite to replace it, or choose another --out",
            dir.display(),
            earlier.join(", ")
        );
    }
    let created = !dir.exists();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    let probe = dir.join(format!(".rotations-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("cannot write into the output folder {}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_an_earlier_analysis_unless_told_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new/nested");
        assert!(prepare(&out, false).unwrap(), "created");
        assert!(out.is_dir());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "the write check leaves nothing behind");
        std::fs::write(out.join("angles.svg"), "<svg/>").unwrap();
        let refused = prepare(&out, false).unwrap_err().to_string();
        assert!(
            refused.contains("already holds an analysis (angles.svg)") && refused.contains("--overwrite"),
            "{refused}"
        );
        assert!(!prepare(&out, true).unwrap(), "already there");
    }

    #[test]
    fn a_folder_that_cannot_be_created_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let e = prepare(&dir.path().join("file/out"), false).unwrap_err();
        assert!(format!("{e:#}").starts_with("cannot create the output folder"), "{e:#}");
    }
}
