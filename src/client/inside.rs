//! Inside the layer (`--steps sublayers`, `--norms`): steps.csv and steps.svg (per layer, the mean
//! rotation across the attention step and across the MLP step, for target and non-target), and
//! norms.csv (mean norms at every state and mean growth per layer).
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::plots::{finish, layer_axis, layer_mesh, plot_err, CAPTION_FONT, LAYER_LABEL, SIZE};
use crate::proto;

const TARGET: RGBColor = RGBColor(220, 0, 0);
const NON_TARGET: RGBColor = RGBColor(0, 0, 220);

/// Writes what the result holds of the two (nothing for an analysis without steps or norms).
/// `title` names the model, the target and n, as every figure's does.
pub fn write(r: &proto::RotationResult, unit: &str, title: &str, dir: &Path) -> anyhow::Result<()> {
    if let Some(sub) = &r.sublayers {
        let means = sub.layer_means.as_ref().context("sublayers without their layer means")?;
        let layers = means.shape.first().copied().unwrap_or(0) as usize;
        anyhow::ensure!(
            means.values.len() == layers * 4 && layers > 0,
            "sublayer means of {} values",
            means.values.len()
        );
        write_file(dir, "steps.csv", steps_csv(&means.values, layers))?;
        steps_figure(&means.values, layers, unit, title, &dir.join("steps.svg"))?;
    }
    if let Some(norms) = &r.norms {
        write_file(dir, "norms.csv", norms_csv(norms)?)?;
    }
    Ok(())
}

fn write_file(dir: &Path, name: &str, body: String) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), body).with_context(|| format!("cannot write {}", dir.join(name).display()))
}

/// `means[l][step][condition]` (row-major `[layers, 2, 2]`).
fn mean(means: &[f32], l: usize, step: usize, condition: usize) -> f32 {
    means[(l * 2 + step) * 2 + condition]
}

fn steps_csv(means: &[f32], layers: usize) -> String {
    let mut csv = String::from("layer,step,target_mean,non_target_mean\n");
    for l in 0..layers {
        for (s, name) in ["attention", "mlp"].into_iter().enumerate() {
            let _ = writeln!(csv, "{},{name},{},{}", l + 1, mean(means, l, s, 0), mean(means, l, s, 1));
        }
    }
    csv
}

fn norms_csv(norms: &proto::Norms) -> anyhow::Result<String> {
    let (states, growth) = (
        norms.mean_norms.as_ref().context("norms without their means")?,
        norms.mean_growth.as_ref().context("norms without the mean growth")?,
    );
    let mut csv = String::from("kind,index,target_mean,non_target_mean\n");
    for (kind, t) in [("state", states), ("growth_layer", growth)] {
        for (k, pair) in t.values.chunks_exact(2).enumerate() {
            let index = if kind == "state" { k } else { k + 1 };
            let _ = writeln!(csv, "{kind},{index},{},{}", pair[0], pair[1]);
        }
    }
    Ok(csv)
}

/// Per layer, the mean angle across the attention step (solid) and the MLP step (dashed-looking:
/// thin with markers), target red and non-target blue; readable from 2 to 48+ layers (the layer
/// axis thins its ticks; markers shrink with many layers).
fn steps_figure(means: &[f32], layers: usize, unit: &str, title: &str, path: &Path) -> anyhow::Result<()> {
    let max = means.iter().copied().filter(|v| v.is_finite()).fold(0f32, f32::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", CAPTION_FONT))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(layer_axis(layers, 0.5), 0f64..f64::from(max) * 1.45 + 1e-12)
        .map_err(plot_err)?;
    let unit = if unit == "radians" { "rad." } else { "deg." };
    layer_mesh(&mut chart, LAYER_LABEL, &format!("Mean angle ({unit})"))?;
    let radius = if layers > 24 { 2 } else { 4 };
    for (condition, colour, who) in [(0, TARGET, "Target"), (1, NON_TARGET, "Non-target")] {
        for (step, what) in [(0, "attention step"), (1, "MLP step")] {
            let points: Vec<(f64, f64)> =
                (0..layers).map(|l| ((l + 1) as f64, f64::from(mean(means, l, step, condition)))).collect();
            let style = if step == 0 { colour.stroke_width(3) } else { colour.mix(0.55).stroke_width(2) };
            let series = chart.draw_series(LineSeries::new(points.clone(), style)).map_err(plot_err)?;
            series.label(format!("{who}, {what}")).legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    if step == 0 { colour.stroke_width(3) } else { colour.mix(0.55).stroke_width(2) },
                )
            });
            if step == 1 {
                // Hollow markers tell the MLP step apart where the lines cross.
                let marks = points.into_iter().map(|p| Circle::new(p, radius, colour.mix(0.8).stroke_width(1)));
                chart.draw_series(marks).map_err(plot_err)?;
            } else {
                let marks = points.into_iter().map(|p| Circle::new(p, radius, colour.filled()));
                chart.draw_series(marks).map_err(plot_err)?;
            }
        }
    }
    finish(chart, &root)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure draws at 6 and at 48 layers (looked at as PNG when made: see docs/incoming/sublayers.md).
    #[test]
    fn the_steps_figure_and_csv_at_6_and_48_layers() {
        let tmp = tempfile::tempdir().unwrap();
        // STEPS_FIGURE_DIR keeps the figures, to look at them.
        let keep = std::env::var_os("STEPS_FIGURE_DIR").map(std::path::PathBuf::from);
        let dir = keep.as_deref().unwrap_or(tmp.path());
        for layers in [6usize, 48] {
            let means: Vec<f32> = (0..layers * 4).map(|i| 5.0 + (i % 4) as f32 * 3.0 + (i / 4) as f32 * 0.2).collect();
            let path = dir.join(format!("steps{layers}.svg"));
            steps_figure(
                &means,
                layers,
                "degrees",
                "model: rotation of \" her\" across attention and MLP steps, n = 10",
                &path,
            )
            .unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            for label in ["Target, attention step", "Non-target, MLP step", LAYER_LABEL, "Mean angle (deg.)"] {
                assert!(svg.contains(label), "{label} missing at {layers} layers");
            }
            let csv = steps_csv(&means, layers);
            assert_eq!(csv.lines().count(), 1 + 2 * layers);
            assert!(csv.lines().nth(2).unwrap().starts_with("1,mlp,"));
        }
    }
}
