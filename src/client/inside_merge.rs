//! Inside the layer over several chunks (`--steps sublayers`, `--norms`, streamed or sharded): each
//! chunk's step angles, norms and growth ratios put back in row order, and the exact sums of its
//! final message (step tests' differences, step angles and norms per condition) merged by integer
//! addition. The means come from the merged sums through the server's own functions
//! (`convert::step_summary`, `convert::norm_summary`), so they equal one `Analyze`'s bit for bit
//! however the corpus was split; the step tests are asked of a replica from the merged sums.
use anyhow::{ensure, Context};

use crate::analysis::{merge_conditions, merge_layers, ExactMoments, PairedStats};
use crate::proto;
use crate::service::convert::{
    condition_moments_from_proto, layer_statistics, norm_summary, paired_stats_from_proto, step_summary,
};

/// The merged exact sums of the chunks' steps and norms (empty for what the run did not ask).
#[derive(Default)]
pub struct InsideSums {
    /// Per step: target − non_target (the step tests' statistics).
    pub steps: Vec<PairedStats>,
    /// Per condition, per step: the step angles.
    step_conditions: Vec<Vec<ExactMoments>>,
    /// Per condition, per state and per layer: the norms and growth ratios.
    norms: Vec<Vec<ExactMoments>>,
    growth: Vec<Vec<ExactMoments>>,
}

fn wire(e: crate::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl InsideSums {
    /// Adds a validated chunk's final message.
    pub fn add(&mut self, last: &proto::RotationChunk) -> anyhow::Result<()> {
        merge_layers(&mut self.steps, &paired_stats_from_proto(&last.step_statistics).map_err(wire)?);
        if let Some(sub) = &last.sublayers {
            merge_conditions(
                &mut self.step_conditions,
                &condition_moments_from_proto(&sub.condition_statistics).map_err(wire)?,
            );
        }
        if let Some(norms) = &last.norms {
            merge_conditions(&mut self.norms, &condition_moments_from_proto(&norms.norm_statistics).map_err(wire)?);
            merge_conditions(&mut self.growth, &condition_moments_from_proto(&norms.growth_statistics).map_err(wire)?);
        }
        Ok(())
    }

    /// The merge covers the corpus: `steps` (2 per layer) and `norms` (`states`, `layers`) merged
    /// when asked for, each of `rows` values.
    pub fn check(&self, rows: u64, steps: Option<usize>, norms: Option<(usize, usize)>) -> anyhow::Result<()> {
        let counts = |m: &[Vec<ExactMoments>]| m.iter().map(Vec::len).collect::<Vec<_>>();
        let want = |count: Option<usize>| count.map_or(Vec::new(), |k| vec![k; 2]);
        ensure!(self.steps.len() == steps.unwrap_or(0), "{} steps' statistics merged", self.steps.len());
        ensure!(counts(&self.step_conditions) == want(steps), "step sums {:?} merged", counts(&self.step_conditions));
        ensure!(counts(&self.norms) == want(norms.map(|n| n.0)), "norm sums {:?} merged", counts(&self.norms));
        ensure!(counts(&self.growth) == want(norms.map(|n| n.1)), "growth sums {:?} merged", counts(&self.growth));
        let all = [&self.step_conditions, &self.norms, &self.growth].into_iter().flatten().flatten();
        let ns: Vec<u64> = self.steps.iter().chain(all).map(ExactMoments::n).filter(|&n| n != rows).collect();
        ensure!(ns.is_empty(), "merged step or norm sums of n {ns:?} for {rows} rows");
        Ok(())
    }

    /// Puts the merged sums and their means into `last` (the run's final message), as a stream's
    /// final chunk carries them; the step tests are set apart ([`step_options`]).
    pub fn summarize(&self, last: &mut proto::RotationChunk, steps: bool, norms: bool) {
        (last.sublayers, last.step_statistics) = match steps {
            true => (Some(step_summary(&self.step_conditions)), layer_statistics(&self.steps)),
            false => (None, Vec::new()),
        };
        last.norms = norms.then(|| norm_summary(&self.norms, &self.growth));
    }
}

/// The options of the step tests asked of a replica from merged step statistics: target against
/// non-target, the request's level and correction, one test per step (as Analyze's step tests).
pub fn step_options(request: Option<proto::SignificanceOptions>) -> proto::SignificanceOptions {
    proto::SignificanceOptions {
        condition_a: Some(0),
        condition_b: Some(1),
        num_tests: None,
        ..request.unwrap_or_default()
    }
}

/// Tensors `[outer…, k, inner]` of consecutive chunks (their rows axis second to last) as one
/// `[outer…, rows, inner]`: the rows in order.
fn concat_rows(what: &str, parts: &[&proto::Tensor], rows: usize) -> anyhow::Result<proto::Tensor> {
    let first = parts.first().context("no chunk")?;
    let n = first.shape.len();
    ensure!(n >= 2, "{what} of shape {:?}", first.shape);
    let (outer, inner) = (first.shape[..n - 2].iter().product::<u32>() as usize, first.shape[n - 1] as usize);
    let mut values = vec![0f32; outer * rows * inner];
    let mut at = 0;
    for t in parts {
        let k = t.shape.get(n - 2).copied().unwrap_or(0) as usize;
        let fits =
            t.shape.len() == n && t.shape[..n - 2] == first.shape[..n - 2] && t.shape[n - 1] == first.shape[n - 1];
        ensure!(
            fits && t.values.len() == outer * k * inner && at + k <= rows,
            "{what} of shape {:?} do not fit",
            t.shape
        );
        for o in 0..outer {
            let to = (o * rows + at) * inner;
            values[to..to + k * inner].copy_from_slice(&t.values[o * k * inner..(o + 1) * k * inner]);
        }
        at += k;
    }
    ensure!(at == rows, "{what} for {at} of {rows} rows");
    let mut shape = first.shape.clone();
    shape[n - 2] = rows as u32;
    Ok(proto::Tensor { shape, values })
}

/// The chunks that hold rows (one whose every sentence was skipped holds none).
fn with_rows(chunks: &[proto::RotationChunk]) -> impl Iterator<Item = &proto::RotationChunk> {
    chunks.iter().filter(|c| !c.sentences.is_empty())
}

/// The chunks' step angles (`[L, 2, k, 2]` each, in corpus order) as one `[L, 2, rows, 2]`, with
/// the final message's merged means and sums; `None` for a run without steps.
pub fn assemble_steps(
    chunks: &[proto::RotationChunk],
    rows: usize,
    last: &proto::RotationChunk,
) -> anyhow::Result<Option<proto::SublayerRotations>> {
    let Some(summary) = &last.sublayers else { return Ok(None) };
    let angles: Vec<&proto::Tensor> = with_rows(chunks)
        .map(|c| c.sublayers.as_ref().and_then(|s| s.angles.as_ref()).context("a chunk without step angles"))
        .collect::<anyhow::Result<_>>()?;
    let angles = if angles.is_empty() { None } else { Some(concat_rows("step angles", &angles, rows)?) };
    Ok(Some(proto::SublayerRotations { angles, ..summary.clone() }))
}

/// The chunks' norms and growth ratios in row order, with the final message's merged means and
/// sums; `None` for a run without norms.
pub fn assemble_norms(
    chunks: &[proto::RotationChunk],
    rows: usize,
    last: &proto::RotationChunk,
) -> anyhow::Result<Option<proto::Norms>> {
    let Some(summary) = &last.norms else { return Ok(None) };
    let parts: Vec<&proto::Norms> =
        with_rows(chunks).map(|c| c.norms.as_ref().context("a chunk without norms")).collect::<anyhow::Result<_>>()?;
    if parts.is_empty() {
        return Ok(Some(summary.clone()));
    }
    let of = |what: &str, pick: fn(&proto::Norms) -> Option<&proto::Tensor>| -> anyhow::Result<proto::Tensor> {
        let tensors: Vec<_> = parts
            .iter()
            .map(|n| pick(n).with_context(|| format!("a chunk without {what}")))
            .collect::<anyhow::Result<_>>()?;
        concat_rows(what, &tensors, rows)
    };
    let norms = of("norms", |n| n.norms.as_ref())?;
    let growth = of("growth ratios", |n| n.growth.as_ref())?;
    Ok(Some(proto::Norms { norms: Some(norms), growth: Some(growth), ..summary.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: &[u32], from: f32) -> proto::Tensor {
        let len = shape.iter().product::<u32>() as usize;
        proto::Tensor { shape: shape.to_vec(), values: (0..len).map(|i| from + i as f32).collect() }
    }

    #[test]
    fn rows_of_consecutive_chunks_interleave_into_place() {
        // [2 outer, k rows, 2 inner]: chunks of 1 and 2 rows.
        let (a, b) = (tensor(&[2, 1, 2], 0.0), tensor(&[2, 2, 2], 100.0));
        let whole = concat_rows("t", &[&a, &b], 3).unwrap();
        assert_eq!(whole.shape, [2, 3, 2]);
        assert_eq!(whole.values, [0.0, 1.0, 100.0, 101.0, 102.0, 103.0, 2.0, 3.0, 104.0, 105.0, 106.0, 107.0]);
        let err = concat_rows("t", &[&a, &tensor(&[3, 2, 2], 0.0)], 3).unwrap_err().to_string();
        assert!(err.contains("t of shape [3, 2, 2] do not fit"), "{err}");
        let err = concat_rows("t", &[&a], 3).unwrap_err().to_string();
        assert!(err.contains("t for 1 of 3 rows"), "{err}");
    }
}
