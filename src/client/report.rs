//! Tables and files from an `Analysis` response.
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::angles_file::AnglesFile;
use crate::error::thousands;
use crate::proto;

/// An `Analysis` unpacked for printing and plotting.
pub struct Report {
    pub unit: &'static str,
    pub num_layers: usize,
    pub num_sentences: usize,
    /// `[layer][sentence][condition]` row-major.
    pub angles: Vec<f32>,
    pub layer_means: Vec<f32>,
    pub conditions: Vec<String>,
    pub significance: proto::SignificanceResult,
    pub rotations: proto::RotationResult,
    pub sentences: Vec<String>,
    /// `--angles-out`: the angles are read from this file, and `angles` is empty.
    pub angles_file: Option<AnglesFile>,
    /// How the user named the target (`" her"`, marked spans), for figure titles.
    pub target: Option<String>,
}

impl Report {
    pub fn new(analysis: &proto::Analysis, sentences: &[String]) -> anyhow::Result<Self> {
        let angles = analysis.rotations.as_ref().and_then(|r| r.angles.clone());
        let angles = angles.context("response has no angle tensor")?;
        let [l, s, c] = angles.shape[..] else { anyhow::bail!("angle tensor is not 3-dimensional") };
        anyhow::ensure!(
            c == 3 && angles.values.len() == (l * s * c) as usize,
            "angle tensor shape {:?} does not match its values",
            angles.shape
        );
        let mut report = Self::unpack(analysis, l as usize, s as usize)?;
        report.angles = angles.values;
        report.sentences = sentences.to_vec();
        Ok(report)
    }

    /// A report whose angles are in `file` (`--angles-out`), not in the response.
    pub fn on_disk(analysis: &proto::Analysis, file: AnglesFile) -> anyhow::Result<Self> {
        let mut report = Self::unpack(analysis, file.num_layers, file.num_sentences)?;
        report.angles_file = Some(file);
        Ok(report)
    }

    /// Everything but the angles and the sentences' texts.
    fn unpack(analysis: &proto::Analysis, num_layers: usize, num_sentences: usize) -> anyhow::Result<Self> {
        let rotations = analysis.rotations.clone().context("response has no rotations")?;
        let significance = analysis
            .significance
            .clone()
            .with_context(|| format!("no significance test: {}", analysis.significance_error))?;
        let means = rotations.layer_means.clone().context("response has no layer means")?;
        let unit = match proto::AngleUnit::try_from(rotations.unit) {
            Ok(proto::AngleUnit::Radians) => "radians",
            _ => "degrees",
        };
        Ok(Self {
            unit,
            num_layers,
            num_sentences,
            angles: Vec::new(),
            layer_means: means.values,
            conditions: rotations.conditions.clone(),
            significance,
            rotations,
            sentences: Vec::new(),
            angles_file: None,
            target: None,
        })
    }

    /// The target as the user named it, else by its token ids.
    pub fn target_label(&self) -> String {
        match (&self.target, &self.rotations.target_token_ids[..]) {
            (Some(target), _) => target.clone(),
            (None, []) => "the marked targets".to_string(),
            (None, [id]) => format!("token {id}"),
            (None, ids) => format!("tokens {ids:?}"),
        }
    }

    /// "N sentences", or "R rows (occurrences) of N sentences" when every occurrence is a row.
    pub fn rows_label(&self) -> String {
        // Angles in a file carry no per-sentence reports: one row per sentence there.
        if self.angles_file.is_some() {
            return format!("{} sentences", thousands(self.num_sentences));
        }
        let sentences =
            self.rotations.sentences.iter().map(|r| r.index).collect::<std::collections::BTreeSet<_>>().len();
        if sentences == self.num_sentences {
            format!("{} sentences", thousands(sentences))
        } else {
            format!("{} rows (occurrences) of {} sentences", thousands(self.num_sentences), thousands(sentences))
        }
    }

    pub fn angle(&self, layer: usize, sentence: usize, condition: usize) -> f32 {
        match &self.angles_file {
            Some(file) => file.angle(layer, sentence, condition),
            None => self.angles[(layer * self.num_sentences + sentence) * 3 + condition],
        }
    }

    pub fn mean(&self, layer: usize, condition: usize) -> f32 {
        self.layer_means[layer * 3 + condition]
    }

    /// The per-layer table: mean angles per condition, and the t-test.
    pub fn table(&self) -> String {
        let sig = &self.significance;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}, {} layers; mean angle to the previous layer in {}; paired t-test {} vs {}, {} (alpha {}, {} tests)",
            self.rows_label(),
            self.num_layers,
            self.unit,
            self.conditions.get(sig.condition_a as usize).map_or("?", String::as_str),
            self.conditions.get(sig.condition_b as usize).map_or("?", String::as_str),
            correction_name(sig.correction),
            sig.alpha,
            sig.num_tests,
        );
        let _ = writeln!(
            out,
            "{:>5} {:>10} {:>10} {:>10} {:>9} {:>11} {:>11}  significant",
            "layer", "target", "non_target", "shuffled", "t", "p", "p_adj"
        );
        for (k, t) in sig.layers.iter().enumerate() {
            let verdict = match proto::Direction::try_from(t.direction) {
                Ok(proto::Direction::AGreater) => "yes: a > b",
                Ok(proto::Direction::BGreater) => "yes: b > a",
                _ => "no",
            };
            let _ = writeln!(
                out,
                "{:>5} {:>10.4} {:>10.4} {:>10.4} {:>9.3} {:>11.3e} {:>11.3e}  {}",
                t.layer,
                self.mean(k, 0),
                self.mean(k, 1),
                self.mean(k, 2),
                t.t,
                t.p,
                t.p_adjusted,
                verdict
            );
        }
        out
    }

    /// The angles as a tidy long table, `sentence,occurrence,layer,condition,angle` (after `prefix`,
    /// e.g. a group's label and comma), one line per (row, layer, condition) in that order: a
    /// sharded or streamed corpus writes the same lines in the same order. Floats in Rust's shortest
    /// round-trip form. Written through a buffer: 10^5 sentences × 48 layers are ~0.45 GB.
    pub(super) fn write_angles_csv(&self, out: &mut impl std::io::Write, prefix: &str) -> std::io::Result<()> {
        for s in 0..self.num_sentences {
            let report = self.rotations.sentences.get(s).copied().unwrap_or_default();
            let (index, occurrence) = (report.index, report.occurrence);
            for l in 0..self.num_layers {
                for (c, condition) in crate::analysis::CONDITIONS.iter().enumerate() {
                    writeln!(out, "{prefix}{index},{occurrence},{},{condition},{}", l + 1, self.angle(l, s, c))?;
                }
            }
        }
        Ok(())
    }

    fn significance_csv(&self) -> String {
        let mut out = String::from(
            "layer,t,p,p_adjusted,df,mean_difference,sd_difference,cohens_dz,ci_low,ci_high,significant,direction,flag\n",
        );
        for t in &self.significance.layers {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                t.layer,
                t.t,
                t.p,
                t.p_adjusted,
                t.df,
                t.mean_difference,
                t.sd_difference,
                t.cohens_dz,
                t.ci_low,
                t.ci_high,
                t.significant,
                direction_name(t.direction),
                layer_flag_name(t.flag)
            );
        }
        out
    }

    pub(super) fn json(&self) -> serde_json::Value {
        let mut json = self.summary_json();
        let r = &self.rotations;
        let per_sentence = match &self.angles_file {
            // The angles and draws are in the .npy files; per-sentence reports are not kept.
            Some(file) => serde_json::json!({
                "angles_file": file.path,
                "angles_file_layout": "[sentences, layers, 3] float32",
                "draws_file": file.draws_path,
                "draws_file_layout": "[sentences, layers, 4] int32 (layer_v, position_v, layer_u, position_u)",
            }),
            None => serde_json::json!({
                "angles": (0..self.num_layers).map(|l| (0..self.num_sentences)
                    .map(|s| [self.angle(l, s, 0), self.angle(l, s, 1), self.angle(l, s, 2)]).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "sentences": r.sentences.iter().map(|s| serde_json::json!({
                    "index": s.index,
                    "text": self.sentences.get(s.index as usize),
                    "num_tokens": s.num_tokens,
                    "target_position": s.target_position,
                    "non_target_position": s.non_target_position,
                    "occurrence": s.occurrence,
                    "target_tokens": [s.target_start, s.target_end],
                    "non_target_tokens": [s.non_target_start, s.non_target_end],
                })).collect::<Vec<_>>(),
                "shuffle_draws": r.shuffle_draws.iter().map(|d| [d.layer_v, d.position_v, d.layer_u, d.position_u]).collect::<Vec<_>>(),
            }),
        };
        if let (Some(all), serde_json::Value::Object(more)) = (json.as_object_mut(), per_sentence) {
            all.extend(more);
        }
        json
    }

    /// What analysis.json holds besides the per-sentence arrays.
    fn summary_json(&self) -> serde_json::Value {
        let r = &self.rotations;
        let sig = &self.significance;
        serde_json::json!({
            "model_name": r.model_name,
            "target_token_id": r.target_token_id,
            "unit": self.unit,
            "shuffle_seed": r.shuffle_seed,
            "conditions": self.conditions,
            "shape": [self.num_layers, self.num_sentences, 3],
            "layer_means": (0..self.num_layers).map(|l| [self.mean(l, 0), self.mean(l, 1), self.mean(l, 2)]).collect::<Vec<_>>(),
            "target_token_ids": r.target_token_ids,
            "all_layers": r.all_layers.as_ref().map(|a| serde_json::json!({
                "mean_matrix": a.mean_matrix.as_ref().map(|t| square(&t.values, t.shape[0] as usize)),
                "mean_cumulative": a.mean_cumulative.as_ref().map(|t| &t.values),
                "rows": a.sums.as_ref().map(|s| s.n),
                "row_matrices": a.row_matrices.as_ref().map(|t| t.values.chunks((t.shape[1] * t.shape[2]).max(1) as usize)
                    .map(|m| square(m, t.shape[1] as usize)).collect::<Vec<_>>()),
            })),
            "significance": {
                "alpha": sig.alpha,
                "correction": correction_name(sig.correction),
                "threshold": sig.threshold,
                "num_tests": sig.num_tests,
                "condition_a": sig.condition_a,
                "condition_b": sig.condition_b,
                "layers": sig.layers.iter().map(|t| serde_json::json!({
                    "layer": t.layer, "t": t.t, "p": t.p, "p_adjusted": t.p_adjusted, "df": t.df,
                    "mean_difference": t.mean_difference, "sd_difference": t.sd_difference,
                    "cohens_dz": t.cohens_dz, "ci_low": t.ci_low, "ci_high": t.ci_high,
                    "significant": t.significant, "direction": direction_name(t.direction),
                })).collect::<Vec<_>>(),
            },
        })
    }

    /// The files [`Self::write_all`] writes: all of `output::FILES`, but angles.csv when the angles
    /// are in a file of their own (a CSV of 10^7 sentences × 48 layers would be 20 GB).
    pub fn files(&self) -> Vec<&'static str> {
        let skip = if self.angles_file.is_some() { "angles.csv" } else { "" };
        let mut files: Vec<&str> = super::output::FILES.iter().copied().filter(|f| *f != skip).collect();
        if self.rotations.all_layers.is_some() {
            files.extend(super::output::ALL_LAYERS_FILES);
        }
        if self.rotations.sublayers.is_some() {
            files.extend(["steps.csv", "steps.svg"]);
        }
        if self.rotations.norms.is_some() {
            files.push("norms.csv");
        }
        files
    }

    /// Writes angles.csv, significance.csv, analysis.json, angles.svg and significance.svg into `dir`.
    pub fn write_all(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let write = |name: &str, body: String| {
            std::fs::write(dir.join(name), body).with_context(|| format!("cannot write {}", dir.join(name).display()))
        };
        if self.angles_file.is_none() {
            write_csv(&dir.join("angles.csv"), ANGLES_HEADER, |out| self.write_angles_csv(out, ""))?;
        }
        write("significance.csv", self.significance_csv())?;
        write("analysis.json", serde_json::to_string_pretty(&self.json())?)?;
        super::plots::angles_figure(self, &dir.join("angles.svg"))?;
        super::plots::significance_figure(self, &dir.join("significance.svg"))?;
        self.write_all_layers(dir)?;
        let model = if self.rotations.model_name.is_empty() { "model" } else { self.rotations.model_name.as_str() };
        let title = format!(
            "{model}: rotation of {} across attention and MLP steps, n = {}",
            self.target_label(),
            self.rows_label()
        );
        super::inside::write(&self.rotations, self.unit, &title, dir)?;
        Ok(())
    }

    /// With all layers: all_layers.csv (the mean matrix in long form, with the cumulative angle)
    /// and the figure all_layers.svg. Written only for such an analysis.
    fn write_all_layers(&self, dir: &Path) -> anyhow::Result<()> {
        let Some(all) = &self.rotations.all_layers else { return Ok(()) };
        let (mean, cumulative) = (
            all.mean_matrix.as_ref().context("all_layers without its mean matrix")?,
            all.mean_cumulative.as_ref().context("all_layers without its cumulative angle")?,
        );
        let states = mean.shape[0] as usize;
        anyhow::ensure!(mean.values.len() == states * states && cumulative.values.len() == states, "all_layers shapes");
        let mut csv = String::from("state_i,state_j,mean_angle,cumulative_i\n");
        for i in 0..states {
            for j in 0..states {
                let _ = writeln!(csv, "{i},{j},{},{}", mean.values[i * states + j], cumulative.values[i]);
            }
        }
        let path = dir.join("all_layers.csv");
        std::fs::write(&path, csv).with_context(|| format!("cannot write {}", path.display()))?;
        let about = format!("{}: {}", self.rotations.model_name, self.target_label());
        let n = self.rows_label();
        super::heatmap::all_layers_figure(&mean.values, states, self.unit, &n, &about, &dir.join("all_layers.svg"))
    }
}

/// A row-major `[side, side]` matrix as nested rows.
fn square(values: &[f32], side: usize) -> Vec<&[f32]> {
    values.chunks(side.max(1)).collect()
}

pub(super) fn correction_name(c: i32) -> &'static str {
    match proto::Correction::try_from(c) {
        Ok(proto::Correction::Holm) => "holm",
        Ok(proto::Correction::BenjaminiHochberg) => "benjamini-hochberg",
        Ok(proto::Correction::None) => "none",
        _ => "bonferroni",
    }
}

/// angles.csv's columns (the Python client's `to_frame()` has the same).
pub const ANGLES_HEADER: &str = "sentence,occurrence,layer,condition,angle";

/// Writes `header` and the lines `body` writes to `path`, through a buffer.
pub(super) fn write_csv(
    path: &Path,
    header: &str,
    body: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "{header}")
        .and_then(|()| body(&mut out))
        .and_then(|()| out.flush())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn layer_flag_name(f: i32) -> &'static str {
    match proto::LayerFlag::try_from(f) {
        Ok(proto::LayerFlag::ZeroVariance) => "zero_variance",
        _ => "",
    }
}

pub(super) fn direction_name(d: i32) -> &'static str {
    match proto::Direction::try_from(d) {
        Ok(proto::Direction::AGreater) => "a_greater",
        Ok(proto::Direction::BGreater) => "b_greater",
        _ => "not_significant",
    }
}
