//! `analyze --vectors-out FILE.npy`: the rows' vectors themselves (RotationRequest.vectors) written to
//! disk as chunks arrive, never held (10^5 sentences × 49 states × 1600 values are 31 GB in float32).
//! One file per condition, each `[sentences, states, hidden_size]` (rows in the order of the angles
//! file: one per sentence of the corpus file), `<f4` or `<f2`: the target's in FILE.npy, the
//! non-target's in FILE.non_target.npy. Each is made full-size (zeroed) at the start and filled in
//! place through a memory map, so chunks from any replica land in any order; a chunk's wire bytes are
//! the file's bytes (little-endian, the same layout), copied as they are.
use std::path::{Path, PathBuf};

use anyhow::Context;
use memmap2::MmapMut;
use ndarray_npy::{WritableElement, WriteDataError};

use super::angles_file::zeroed;

use crate::proto;

/// A little-endian float of `N` bytes, as the wire carries it: the element type of the files' headers
/// (`<f4`, `<f2`), whatever the host's byte order; ndarray-npy has no float16 of its own.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct LeFloat<const N: usize>([u8; N]);

impl<const N: usize> WritableElement for LeFloat<N> {
    fn type_descriptor() -> py_literal::Value {
        py_literal::Value::String(format!("<f{N}"))
    }

    fn write<W: std::io::Write>(&self, mut writer: W) -> Result<(), WriteDataError> {
        Ok(writer.write_all(&self.0)?)
    }

    fn write_slice<W: std::io::Write>(slice: &[Self], mut writer: W) -> Result<(), WriteDataError> {
        slice.iter().try_for_each(|x| Ok(writer.write_all(&x.0)?))
    }
}

/// What every chunk's vectors must be: the request's states (resolved), conditions and dtype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorLayout {
    pub states: Vec<u32>,
    pub conditions: Vec<u32>,
    pub dtype: proto::VectorDtype,
    pub hidden_size: usize,
}

impl VectorLayout {
    /// The layout `request.vectors` asks of `model`: its states, or every state the model returns.
    pub fn of(request: &proto::RotationRequest, model: &proto::ModelInfo) -> Option<Self> {
        let v = request.vectors.as_ref()?;
        let every = model.num_hidden_states * if model.sublayers { 2 } else { 1 };
        Some(Self {
            states: if v.states.is_empty() { (0..every).collect() } else { v.states.clone() },
            conditions: if v.conditions.is_empty() { vec![0, 1] } else { v.conditions.clone() },
            dtype: match v.dtype() {
                proto::VectorDtype::Unspecified => proto::VectorDtype::Float32,
                other => other,
            },
            hidden_size: model.hidden_size as usize,
        })
    }

    fn value_bytes(&self) -> usize {
        if self.dtype == proto::VectorDtype::Float16 {
            2
        } else {
            4
        }
    }

    /// Bytes of one row of one condition: `[states, hidden_size]` values.
    fn row_bytes(&self) -> usize {
        self.states.len() * self.hidden_size * self.value_bytes()
    }
}

/// The file of each condition: the target's at `path`, the non-target's at `STEM.non_target.npy`.
pub fn condition_path(path: &Path, condition: u32) -> PathBuf {
    if condition == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map_or_else(Default::default, |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}.non_target.npy"))
}

pub struct VectorsFile {
    pub layout: VectorLayout,
    /// Per condition of the layout: its path, its map, where its values start (after the header).
    files: Vec<(PathBuf, MmapMut, usize)>,
    pub num_rows: usize,
}

impl VectorsFile {
    /// Zeroed files for `num_rows` rows, mapped for writing.
    pub fn create(path: &Path, num_rows: usize, layout: VectorLayout) -> anyhow::Result<Self> {
        anyhow::ensure!(
            path.extension().is_some_and(|e| e == "npy"),
            "--vectors-out {}: give a file name ending in .npy",
            path.display()
        );
        let shape = [num_rows, layout.states.len(), layout.hidden_size];
        let mut files = Vec::new();
        for &condition in &layout.conditions {
            let path = condition_path(path, condition);
            let map = if layout.value_bytes() == 2 {
                zeroed::<LeFloat<2>>(&path, shape)?
            } else {
                zeroed::<LeFloat<4>>(&path, shape)?
            };
            let offset = map.len() - num_rows * layout.row_bytes();
            files.push((path, map, offset));
        }
        Ok(Self { layout, files, num_rows })
    }

    /// The files written, in the layout's condition order.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|(path, _, _)| path.as_path()).collect()
    }

    /// Copies one streamed chunk's vectors (its rows: the sentences from `first_sentence`, one row
    /// each) to their rows, after checking they are what the request asked for.
    pub fn write(&mut self, chunk: &proto::RotationChunk) -> anyhow::Result<()> {
        let rows = chunk.sentences.len();
        let Some(v) = chunk.vectors.as_ref() else {
            anyhow::ensure!(rows == 0, "a chunk of {rows} rows at sentence {} without vectors", chunk.first_sentence);
            return Ok(());
        };
        let first = chunk.first_sentence as usize;
        self.check(v, first, rows)?;
        for (k, report) in chunk.sentences.iter().enumerate() {
            anyhow::ensure!(
                report.index as usize == first + k,
                "row {k} of the chunk at {first} is sentence {}",
                report.index
            );
        }
        let row_bytes = self.layout.row_bytes();
        for ((_, map, offset), data) in self.files.iter_mut().zip(&v.data) {
            let at = *offset + first * row_bytes;
            map[at..at + data.len()].copy_from_slice(data);
        }
        Ok(())
    }

    /// A chunk's vectors have the layout's states, conditions and dtype, one row per sentence inside
    /// the file, and the bytes their shape says.
    fn check(&self, v: &proto::Vectors, first: usize, rows: usize) -> anyhow::Result<()> {
        let l = &self.layout;
        let shape = [rows as u32, l.states.len() as u32, l.hidden_size as u32];
        anyhow::ensure!(
            v.shape == shape && v.states == l.states && v.conditions == l.conditions && v.dtype() == l.dtype,
            "vectors {:?} of states {:?}, conditions {:?}, {:?} at sentence {first}; expected {shape:?}, {:?}, {:?}, {:?}",
            v.shape,
            v.states,
            v.conditions,
            v.dtype(),
            l.states,
            l.conditions,
            l.dtype
        );
        anyhow::ensure!(
            first + rows <= self.num_rows,
            "rows {first}..{} past the file's {}",
            first + rows,
            self.num_rows
        );
        let bytes = rows * l.row_bytes();
        anyhow::ensure!(
            v.data.len() == l.conditions.len() && v.data.iter().all(|d| d.len() == bytes),
            "vectors at sentence {first}: {:?} bytes per condition, expected {bytes}",
            v.data.iter().map(Vec::len).collect::<Vec<_>>()
        );
        Ok(())
    }

    /// Writes the maps out to their files.
    pub fn flush(&self) -> anyhow::Result<()> {
        for (path, map, _) in &self.files {
            map.flush().with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use ndarray_npy::read_npy;

    fn layout(dtype: proto::VectorDtype) -> VectorLayout {
        VectorLayout { states: vec![2, 0], conditions: vec![0, 1], dtype, hidden_size: 3 }
    }

    /// Rows `first..first + k`, value = 1000 condition + 100 row + 10 state + component.
    fn chunk(first: u32, k: u32) -> proto::RotationChunk {
        let values = |c: u32| -> Vec<u8> {
            (first..first + k)
                .flat_map(|r| (0..2).flat_map(move |s| (0..3).map(move |h| (1000 * c + 100 * r + 10 * s + h) as f32)))
                .flat_map(f32::to_le_bytes)
                .collect()
        };
        proto::RotationChunk {
            first_sentence: first,
            sentences: (first..first + k).map(|index| proto::SentenceReport { index, ..Default::default() }).collect(),
            vectors: Some(proto::Vectors {
                shape: vec![k, 2, 3],
                dtype: proto::VectorDtype::Float32 as i32,
                states: vec![2, 0],
                conditions: vec![0, 1],
                data: vec![values(0), values(1)],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_in_any_order_land_at_their_rows_one_file_per_condition() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.npy");
        let mut file = VectorsFile::create(&path, 5, layout(proto::VectorDtype::Float32)).unwrap();
        file.write(&chunk(3, 2)).unwrap();
        file.write(&chunk(0, 3)).unwrap();
        assert!(file.write(&chunk(4, 2)).is_err(), "past the end");
        let mut misshapen = chunk(0, 1);
        misshapen.vectors.as_mut().unwrap().states = vec![0, 2];
        assert!(file.write(&misshapen).is_err(), "other states");
        file.flush().unwrap();
        let target: Array3<f32> = read_npy(&path).unwrap();
        let non_target: Array3<f32> = read_npy(dir.path().join("v.non_target.npy")).unwrap();
        assert_eq!(target.shape(), [5, 2, 3]);
        assert_eq!(target[[4, 1, 2]], 412.0);
        assert_eq!(non_target[[1, 0, 1]], 1101.0);
        assert!(VectorsFile::create(&dir.path().join("v.bin"), 1, layout(proto::VectorDtype::Float32)).is_err());
    }

    #[test]
    fn float16_files_have_a_little_endian_half_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.npy");
        let file =
            VectorsFile::create(&path, 2, VectorLayout { conditions: vec![1], ..layout(proto::VectorDtype::Float16) });
        assert_eq!(file.unwrap().paths(), [dir.path().join("h.non_target.npy")]);
        let bytes = std::fs::read(dir.path().join("h.non_target.npy")).unwrap();
        let header = String::from_utf8_lossy(&bytes[..bytes.len() - 2 * 2 * 3 * 2]);
        assert!(header.contains("'descr': '<f2'") && header.contains("(2, 2, 3)"), "{header}");
    }
}
