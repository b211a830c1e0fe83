//! The two-group figure: each group's mean angle per layer with its 95% confidence interval (a
//! band), and the layers where Welch's test is significant after the correction marked.
use std::path::Path;

use plotters::prelude::*;

use super::groups::GroupReport;
use super::plots::{finish, layer_axis, layer_mesh, plot_err, CAPTION_FONT, GREY, LAYER_LABEL, SIZE};
use crate::analysis::{t_quantile, CI_LEVEL};
use crate::proto;

/// Group A and group B: colours that stay apart for colour-blind readers (orange, blue).
const GROUP_COLOURS: [RGBColor; 2] = [RGBColor(213, 94, 0), RGBColor(0, 114, 178)];
/// The shading behind a significant layer.
const SIGNIFICANT_SHADE: RGBColor = RGBColor(255, 214, 102);

/// Per layer, a group's mean and the ends of its 95% CI (mean ± t·sd/√n; NaN below 2 sentences).
fn mean_and_ci(tests: &[proto::GroupLayerTest], group: usize) -> Vec<(f64, f64, f64)> {
    tests
        .iter()
        .map(|t| {
            let (mean, sd, n) = if group == 0 { (t.mean_a, t.sd_a, t.n_a) } else { (t.mean_b, t.sd_b, t.n_b) };
            if n < 2 {
                return (mean, f64::NAN, f64::NAN);
            }
            let half = t_quantile(0.5 + CI_LEVEL / 2.0, (n - 1) as f64) * sd / (n as f64).sqrt();
            (mean, mean - half, mean + half)
        })
        .collect()
}

/// Both groups' mean angle per layer with 95% CIs; significant layers shaded and starred.
pub fn groups_figure(r: &GroupReport, path: &Path) -> anyhow::Result<()> {
    let layers = &r.tests.layers;
    let series = [mean_and_ci(layers, 0), mean_and_ci(layers, 1)];
    let values = series.iter().flatten().flat_map(|&(m, lo, hi)| [m, lo, hi]).filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let span = (hi - lo).max(1e-9);
    // Room below for the data, above for the significance stars and the legend.
    let y_range = (lo - 0.08 * span).max(0.0)..hi + 0.45 * span;
    // Each star just above the highest point drawn at its layer (below the legend).
    let top = |l: usize| series.iter().map(|g| g[l].2.max(g[l].0)).filter(|v| v.is_finite()).fold(lo, f64::max);
    let star_y: Vec<f64> = (0..layers.len()).map(|l| top(l) + 0.07 * span).collect();

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let [a, b] = &r.labels;
    let (g, model) = (&r.groups, &r.groups[0].rotations.model_name);
    let caption = format!(
        "{model}: mean {} angle of {} per layer, {a} (n = {}) vs {b} (n = {})",
        r.condition(),
        g[0].target_label(),
        g[0].num_sentences,
        g[1].num_sentences
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", CAPTION_FONT))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(layer_axis(layers.len(), 0.5), y_range.clone())
        .map_err(plot_err)?;
    let unit = if r.unit() == "radians" { "rad." } else { "deg." };
    layer_mesh(&mut chart, LAYER_LABEL, &format!("Angle to the previous layer ({unit})"))?;

    draw_significant(&mut chart, r, y_range, &star_y)?;
    for (g, points) in series.iter().enumerate() {
        draw_group(
            &mut chart,
            points,
            GROUP_COLOURS[g],
            &format!("{} (n = {})", r.labels[g], r.groups[g].num_sentences),
        )?;
    }
    finish(chart, &root)
}

type Chart<'a> =
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<super::plots::LayerAxis, plotters::coord::types::RangedCoordf64>>;

/// A group's CI band, its mean line with dots, and its legend entry.
fn draw_group(chart: &mut Chart<'_>, points: &[(f64, f64, f64)], colour: RGBColor, label: &str) -> anyhow::Result<()> {
    let x = |l: usize| (l + 1) as f64;
    let upper = points.iter().enumerate().map(|(l, p)| (x(l), p.2));
    let lower = points.iter().enumerate().rev().map(|(l, p)| (x(l), p.1));
    let outline: Vec<(f64, f64)> = upper.chain(lower).filter(|p| p.1.is_finite()).collect();
    chart.draw_series(std::iter::once(Polygon::new(outline, colour.mix(0.18).filled()))).map_err(plot_err)?;
    let means = points.iter().enumerate().map(|(l, p)| (x(l), p.0));
    chart
        .draw_series(LineSeries::new(means.clone(), colour.stroke_width(3)))
        .map_err(plot_err)?
        .label(format!("{label}: mean ± 95% CI"))
        .legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + Rectangle::new([(0, -6), (20, 6)], colour.mix(0.18).filled())
                + PathElement::new(vec![(0, 0), (20, 0)], colour.stroke_width(3))
        });
    chart.draw_series(means.map(|p| Circle::new(p, 4, colour.filled()))).map_err(plot_err)?;
    Ok(())
}

/// The significance star, centred on its layer.
fn star_font() -> TextStyle<'static> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    ("sans-serif", 28).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center))
}

/// Shades each significant layer and puts a star above it; the legend names the rule.
fn draw_significant(
    chart: &mut Chart<'_>,
    r: &GroupReport,
    y_range: std::ops::Range<f64>,
    star_y: &[f64],
) -> anyhow::Result<()> {
    let significant: Vec<f64> = r.tests.layers.iter().filter(|t| t.significant).map(|t| t.layer as f64).collect();
    let shades = significant.iter().map(|&l| {
        Rectangle::new([(l - 0.4, y_range.start), (l + 0.4, y_range.end)], SIGNIFICANT_SHADE.mix(0.35).filled())
    });
    chart.draw_series(shades).map_err(plot_err)?;
    let stars = chart
        .draw_series(significant.iter().map(|&l| Text::new("*", (l, star_y[l as usize - 1]), star_font())))
        .map_err(plot_err)?;
    if significant.is_empty() {
        let label = format!("No layer significant (Welch's t-test, {})", r.rule());
        stars.label(label).legend(|(x, y)| EmptyElement::at((x, y)));
    } else {
        let label = format!("* Significant layer (Welch's t-test, {})", r.rule());
        stars.label(label).legend(|(x, y)| {
            EmptyElement::at((x, y))
                + Rectangle::new([(0, -6), (20, 6)], SIGNIFICANT_SHADE.mix(0.6).filled())
                + Rectangle::new([(0, -6), (20, 6)], GREY.mix(0.3))
        });
    }
    Ok(())
}
