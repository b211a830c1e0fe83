//! `analyze --angles-out FILE.npy`: the angle tensor written to disk as chunks arrive, never held
//! (10^7 sentences × 48 layers × 3 angles are 5.8 GB). The layout is the Python `Cluster`'s
//! `angles_out`: angles `[sentences, layers, 3]` float32 in FILE.npy, the shuffled control's draws
//! `[sentences, layers, 4]` int32 (layer_v, position_v, layer_u, position_u) in FILE.draws.npy.
//! Both files are made full-size (zeroed) at the start and filled in place through a memory map,
//! so chunks land in any order.
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use memmap2::MmapMut;
use ndarray::{s, Array3, ArrayView3, ArrayViewMut3};
use ndarray_npy::{write_zeroed_npy, ViewMutNpyExt};

use crate::proto;

pub struct AnglesFile {
    pub path: PathBuf,
    pub draws_path: PathBuf,
    angles: MmapMut,
    draws: MmapMut,
    /// Where the angle values start in `angles` (after the .npy header).
    data_offset: usize,
    pub num_layers: usize,
    pub num_sentences: usize,
}

/// `FILE.draws.npy` beside `FILE.npy`.
pub fn draws_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().map_or_else(Default::default, |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}.draws.npy"))
}

/// A zeroed `.npy` of `shape`, mapped for writing (also the vectors' files).
pub(super) fn zeroed<T: ndarray_npy::WritableElement>(path: &Path, shape: [usize; 3]) -> anyhow::Result<MmapMut> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    write_zeroed_npy::<T, _>(&file, shape).with_context(|| format!("cannot write {}", path.display()))?;
    // SAFETY: the file was just made by us; the map is only read and written through this value.
    unsafe { MmapMut::map_mut(&file) }.with_context(|| format!("cannot map {}", path.display()))
}

impl AnglesFile {
    pub fn create(path: &Path, num_sentences: usize, num_layers: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            path.extension().is_some_and(|e| e == "npy"),
            "--angles-out {}: give a file name ending in .npy",
            path.display()
        );
        let draws_path = draws_path(path);
        let angles = zeroed::<f32>(path, [num_sentences, num_layers, 3])?;
        let draws = zeroed::<i32>(&draws_path, [num_sentences, num_layers, 4])?;
        let data_offset = angles.len() - num_sentences * num_layers * 3 * std::mem::size_of::<f32>();
        Ok(Self { path: path.to_path_buf(), draws_path, angles, draws, data_offset, num_layers, num_sentences })
    }

    /// Writes one streamed chunk (angles `[layers, k, 3]` at corpus index `first_sentence`) in place.
    pub fn write(&mut self, chunk: &proto::RotationChunk) -> anyhow::Result<()> {
        let t = chunk.angles.as_ref().context("a chunk without angles")?;
        let (first, k) = (chunk.first_sentence as usize, t.shape.get(1).copied().unwrap_or(0) as usize);
        anyhow::ensure!(
            t.shape == [self.num_layers as u32, k as u32, 3]
                && first + k <= self.num_sentences
                && chunk.shuffle_draws.len() == self.num_layers * k,
            "chunk shape {:?} at sentence {first} does not fit the file's [{}, {}, 3]",
            t.shape,
            self.num_sentences,
            self.num_layers
        );
        let angles = ArrayView3::from_shape((self.num_layers, k, 3), &t.values)?;
        let draws = Array3::from_shape_fn((self.num_layers, k, 4), |(l, s, field)| {
            let d = &chunk.shuffle_draws[l * k + s];
            [d.layer_v, d.position_v, d.layer_u, d.position_u][field] as i32
        });
        let mut file = ArrayViewMut3::<f32>::view_mut_npy(&mut self.angles)?;
        file.slice_mut(s![first..first + k, .., ..]).assign(&angles.permuted_axes([1, 0, 2]));
        let mut file = ArrayViewMut3::<i32>::view_mut_npy(&mut self.draws)?;
        file.slice_mut(s![first..first + k, .., ..]).assign(&draws.permuted_axes([1, 0, 2]));
        Ok(())
    }

    /// One angle, read back from the map.
    pub fn angle(&self, layer: usize, sentence: usize, condition: usize) -> f32 {
        let at = self.data_offset + ((sentence * self.num_layers + layer) * 3 + condition) * 4;
        f32::from_ne_bytes(self.angles[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Writes the maps out to their files.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.angles.flush().with_context(|| format!("cannot write {}", self.path.display()))?;
        self.draws.flush().with_context(|| format!("cannot write {}", self.draws_path.display()))
    }
}

/// One line of `angles.csv`: the angle of one row (a sentence, or one occurrence in it) at one
/// layer (hidden state layer−1 → layer) for one condition.
#[derive(Clone, Debug, PartialEq)]
pub struct AngleLine {
    pub sentence: u32,
    pub occurrence: u32,
    pub layer: u32,
    pub condition: String,
    pub angle: f32,
}

/// Reads the `angles.csv` that `analyze` writes (`sentence,occurrence,layer,condition,angle`):
/// the one reader of it (the tests compare runs through it). Errors name the line.
pub fn read_angles_csv(path: &Path) -> anyhow::Result<Vec<AngleLine>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    anyhow::ensure!(
        header == super::report::ANGLES_HEADER,
        "{}: header {header:?} is not {:?}",
        path.display(),
        super::report::ANGLES_HEADER
    );
    lines
        .enumerate()
        .map(|(k, line)| parse_line(line).with_context(|| format!("{}:{}", path.display(), k + 2)))
        .collect()
}

fn parse_line(line: &str) -> anyhow::Result<AngleLine> {
    let fields: Vec<&str> = line.split(',').collect();
    let [sentence, occurrence, layer, condition, angle] = fields[..] else {
        anyhow::bail!("{} fields, not 5: {line:?}", fields.len())
    };
    Ok(AngleLine {
        sentence: sentence.parse().context("sentence")?,
        occurrence: occurrence.parse().context("occurrence")?,
        layer: layer.parse().context("layer")?,
        condition: condition.to_string(),
        angle: angle.parse().context("angle")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use ndarray_npy::read_npy;

    fn chunk(first: u32, k: u32, layers: u32) -> proto::RotationChunk {
        let values = (0..layers * k * 3).map(|i| i as f32 + first as f32 * 1000.0).collect();
        let draws =
            (0..layers * k).map(|i| proto::ShuffleDraw { layer_v: i, position_v: first, layer_u: 7, position_u: k });
        proto::RotationChunk {
            first_sentence: first,
            angles: Some(proto::Tensor { shape: vec![layers, k, 3], values }),
            shuffle_draws: draws.collect(),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_in_any_order_land_sentence_major() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("angles.npy");
        let mut file = AnglesFile::create(&path, 5, 2).unwrap();
        file.write(&chunk(3, 2, 2)).unwrap();
        file.write(&chunk(0, 3, 2)).unwrap();
        assert!(file.write(&chunk(4, 2, 2)).is_err(), "past the end");
        file.flush().unwrap();
        let angles: Array3<f32> = read_npy(&path).unwrap();
        let draws: Array3<i32> = read_npy(dir.path().join("angles.draws.npy")).unwrap();
        assert_eq!(angles.shape(), [5, 2, 3]);
        // Sentence 4 is the second of the chunk at 3 (k = 2): layer 1 of it is value (1 * 2 + 1) * 3 + c.
        assert_eq!(angles[[4, 1, 2]], 3000.0 + 11.0);
        assert_eq!(file.angle(1, 4, 2), 3011.0);
        assert_eq!(angles[[1, 0, 0]], 3.0);
        assert_eq!(draws.slice(s![4, 1, ..]).to_vec(), [3, 3, 7, 2]);
        assert_eq!(draws.slice(s![1, 1, ..]).to_vec(), [4, 0, 7, 3]);
        assert!(AnglesFile::create(&dir.path().join("angles.bin"), 1, 1).is_err());
    }

    #[test]
    fn angles_csv_lines_are_read_back_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("angles.csv");
        std::fs::write(&path, "sentence,occurrence,layer,condition,angle\n4,2,1,shuffled,81.25\n").unwrap();
        let want = AngleLine { sentence: 4, occurrence: 2, layer: 1, condition: "shuffled".into(), angle: 81.25 };
        assert_eq!(read_angles_csv(&path).unwrap(), [want]);
        std::fs::write(&path, "sentence,occurrence,layer,condition,angle\n4,2,1,shuffled\n").unwrap();
        let error = format!("{:#}", read_angles_csv(&path).unwrap_err());
        assert!(error.contains("angles.csv:2: 4 fields, not 5"), "{error}");
        std::fs::write(&path, "layer,sentence,target\n").unwrap();
        assert!(read_angles_csv(&path).is_err(), "the old wide header is refused");
    }
}
