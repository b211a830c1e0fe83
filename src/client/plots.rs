//! The notebook's two figures as SVG, drawn with plotters, read the same from a handful of
//! sentences to a corpus: means with 95% confidence intervals (no per-sentence lines), the
//! shuffled control on a scale of its own, and a title naming the model, the target and n.
use std::path::Path;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::CoordTranslate;
use plotters::prelude::*;

use super::report::Report;
use crate::analysis::{t_quantile, CI_LEVEL};
use crate::proto;

// The notebook's colours: faint per-sentence curves, bold means.
const FAINT_NON_TARGET: RGBColor = RGBColor(179, 179, 230);
const FAINT_SHUFFLED: RGBColor = RGBColor(179, 230, 179);
const TARGET: RGBColor = RGBColor(220, 0, 0);
const NON_TARGET: RGBColor = RGBColor(0, 0, 220);
const SHUFFLED: RGBColor = RGBColor(0, 150, 0);
pub(super) const GREY: RGBColor = RGBColor(128, 128, 128);
/// The shading behind a significant layer.
pub(super) const SIGNIFICANT_SHADE: RGBColor = RGBColor(255, 214, 102);

/// The x axis of both figures: layer l is the rotation from hidden state l−1 to hidden state l.
pub const LAYER_LABEL: &str = "Layer (hidden state l−1 → l)";
/// Most tick labels on the layer axis.
const MAX_LAYER_TICKS: usize = 16;
pub(super) const SIZE: (u32, u32) = (1100, 480);
pub(super) const CAPTION_FONT: u32 = 22;
pub(super) const AXIS_FONT: u32 = 16;
pub(super) const DESC_FONT: u32 = 18;
const LEGEND_FONT: u32 = 15;

pub(super) fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the figure: {e:?}")
}

/// Integer ticks on the layer axis: every layer, or 1 and multiples of a step (at most [`MAX_LAYER_TICKS`]).
pub fn layer_ticks(num_layers: usize) -> Vec<f64> {
    let step = [1, 2, 4, 5, 8, 10, 20, 25, 50, 100]
        .into_iter()
        .find(|s| num_layers / s <= MAX_LAYER_TICKS)
        .unwrap_or(num_layers.div_ceil(MAX_LAYER_TICKS));
    let ticks = std::iter::once(1).chain((step.max(2)..=num_layers).step_by(step).filter(|&l| l > 1));
    ticks.map(|l| l as f64).collect()
}

/// The layer axis: from `1 - pad` to `num_layers + pad`, ticks and labels on whole layers.
pub(super) struct LayerAxis {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

pub(super) fn layer_axis(num_layers: usize, pad: f64) -> LayerAxis {
    let pad = if num_layers > 1 { pad } else { pad.max(0.5) };
    LayerAxis { range: 1.0 - pad..num_layers as f64 + pad, ticks: layer_ticks(num_layers) }
}

impl Ranged for LayerAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for LayerAxis {
    fn format(value: &f64) -> String {
        format!("{value:.0}")
    }
}

/// Draws the legend (top right, in the headroom left for it) and writes the file.
pub(super) fn finish<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    mut chart: ChartContext<'a, DB, CT>,
    root: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", LEGEND_FONT))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Axis values without a trailing ".0"; decimals only where the ticks need them.
pub(super) fn value_label(v: &f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Per layer, one condition's mean angle over the rows and the ends of its 95% confidence
/// interval (mean ± t·sd/√n, t of n − 1 degrees of freedom; NaN ends below 2 rows), in f64 from
/// the angles themselves (in memory or in the `--angles-out` file).
pub fn mean_and_ci(r: &Report, condition: usize) -> Vec<(f64, f64, f64)> {
    (0..r.num_layers)
        .map(|l| {
            // Welford's running mean and sum of squares: stable for 10^5 rows and more.
            let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
            for s in 0..r.num_sentences {
                let v = f64::from(r.angle(l, s, condition));
                if v.is_finite() {
                    n += 1.0;
                    let delta = v - mean;
                    mean += delta / n;
                    m2 += delta * (v - mean);
                }
            }
            if n < 2.0 {
                return (mean, f64::NAN, f64::NAN);
            }
            let half = t_quantile(0.5 + CI_LEVEL / 2.0, n - 1.0) * (m2 / (n - 1.0)).sqrt() / n.sqrt();
            (mean, mean - half, mean + half)
        })
        .collect()
}

/// The lowest and highest value of some series' means and CI ends, padded: `below` and `above`
/// of the span added (the room above holds stars and the legend).
fn padded_range(series: &[&[(f64, f64, f64)]], below: f64, above: f64) -> std::ops::Range<f64> {
    let values = series.iter().flat_map(|s| s.iter()).flat_map(|&(m, lo, hi)| [m, lo, hi]).filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let span = (hi - lo).max(1e-9 + hi.abs() * 1e-6);
    (lo - below * span)..(hi + above * span)
}

/// The figure's title: the model, the target and how many rows (sentences) it rests on.
pub fn figure_title(r: &Report) -> String {
    let model = if r.rotations.model_name.is_empty() { "model" } else { r.rotations.model_name.as_str() };
    format!("{model}: rotation of {} per layer, n = {}", r.target_label(), r.rows_label())
}

/// The headline figure, read at a glance from 54 sentences to 10^5: on the left the target's and
/// the non-target's mean angle per layer with 95% CIs on their own scale, the layers where the
/// paired t-test is significant shaded and starred; on the right the shuffled control, whose much
/// larger angles would otherwise flatten the comparison.
pub fn angles_figure(r: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (SIZE.0, SIZE.1 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(&figure_title(r), ("sans-serif", CAPTION_FONT)).map_err(plot_err)?;
    let (left, right) = root.split_horizontally((SIZE.0 as f64 * 0.68) as u32);
    let series = [mean_and_ci(r, 0), mean_and_ci(r, 1)];
    comparison_panel(r, &left, &series)?;
    shuffled_panel(r, &right, &mean_and_ci(r, 2))?;
    root.present().map_err(plot_err)?;
    Ok(())
}

pub(super) type Chart<'a, X> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Target and non-target: means with 95% CI bands, significant layers shaded and starred.
fn comparison_panel(r: &Report, area: &Area<'_>, series: &[Vec<(f64, f64, f64)>; 2]) -> anyhow::Result<()> {
    let y_range = padded_range(&[&series[0], &series[1]], 0.08, 0.55);
    let mut chart = ChartBuilder::on(area)
        .caption("Target vs non-target: mean ± 95% CI", ("sans-serif", DESC_FONT))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(layer_axis(r.num_layers, 0.5), y_range.clone())
        .map_err(plot_err)?;
    axes(&mut chart, r)?;
    let span = y_range.end - y_range.start;
    let top = |l: usize| series.iter().map(|g| g[l].2.max(g[l].0)).filter(|v| v.is_finite()).fold(f64::MIN, f64::max);
    let significant: Vec<usize> =
        r.significance.layers.iter().filter(|t| t.significant).map(|t| t.layer as usize).collect();
    let shade = |&l: &usize| {
        let l = l as f64;
        Rectangle::new([(l - 0.4, y_range.start), (l + 0.4, y_range.end)], SIGNIFICANT_SHADE.mix(0.35).filled())
    };
    let stars = chart.draw_series(significant.iter().map(shade)).map_err(plot_err)?;
    let rule = format!("paired t-test, {}", significance_rule(r));
    if significant.is_empty() {
        stars.label(format!("No layer significant ({rule})")).legend(|(x, y)| EmptyElement::at((x, y)));
    } else {
        stars.label(format!("* Significant layer ({rule})")).legend(|(x, y)| {
            EmptyElement::at((x, y)) + Rectangle::new([(0, -6), (20, 6)], SIGNIFICANT_SHADE.mix(0.6).filled())
        });
        let star = |&l: &usize| Text::new("*", (l as f64, top(l - 1) + 0.06 * span), star_font());
        chart.draw_series(significant.iter().filter(|&&l| l <= r.num_layers).map(star)).map_err(plot_err)?;
    }
    for (c, points) in series.iter().enumerate() {
        let (colour, label) = [(TARGET, "Target"), (NON_TARGET, "Non-target (the token before)")][c];
        mean_with_band(&mut chart, points, colour, label)?;
    }
    finish_legend(&mut chart)
}

/// The shuffled control on its own scale.
fn shuffled_panel(r: &Report, area: &Area<'_>, points: &[(f64, f64, f64)]) -> anyhow::Result<()> {
    let y_range = padded_range(&[points], 0.15, 0.35);
    let mut chart = ChartBuilder::on(area)
        .caption("Shuffled control (own scale)", ("sans-serif", DESC_FONT))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(layer_axis(r.num_layers, 0.5), y_range)
        .map_err(plot_err)?;
    axes(&mut chart, r)?;
    mean_with_band(&mut chart, points, SHUFFLED, "Shuffled")?;
    finish_legend(&mut chart)
}

fn axes<X: Ranged<ValueType = f64> + ValueFormatter<f64>>(chart: &mut Chart<'_, X>, r: &Report) -> anyhow::Result<()> {
    let unit = if r.unit == "radians" { "rad." } else { "deg." };
    layer_mesh(chart, LAYER_LABEL, &format!("Angle ({unit})"))
}

/// The axes every per-layer figure draws: no grid, value labels, the fonts, the two descriptions.
pub(super) fn layer_mesh<X: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    chart: &mut Chart<'_, X>,
    x_desc: &str,
    y_desc: &str,
) -> anyhow::Result<()> {
    chart
        .configure_mesh()
        .disable_mesh()
        .y_label_formatter(&value_label)
        .label_style(("sans-serif", AXIS_FONT))
        .axis_desc_style(("sans-serif", DESC_FONT))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn finish_legend<X: Ranged<ValueType = f64>>(chart: &mut Chart<'_, X>) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", LEGEND_FONT))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// A condition's CI band, its mean line with dots, and its legend entry.
fn mean_with_band<X: Ranged<ValueType = f64>>(
    chart: &mut Chart<'_, X>,
    points: &[(f64, f64, f64)],
    colour: RGBColor,
    label: &str,
) -> anyhow::Result<()> {
    let x = |l: usize| (l + 1) as f64;
    let upper = points.iter().enumerate().map(|(l, p)| (x(l), p.2));
    let lower = points.iter().enumerate().rev().map(|(l, p)| (x(l), p.1));
    let outline: Vec<(f64, f64)> = upper.chain(lower).filter(|p| p.1.is_finite()).collect();
    chart.draw_series(std::iter::once(Polygon::new(outline, colour.mix(0.2).filled()))).map_err(plot_err)?;
    let means = points.iter().enumerate().map(|(l, p)| (x(l), p.0));
    chart
        .draw_series(LineSeries::new(means.clone(), colour.stroke_width(3)))
        .map_err(plot_err)?
        .label(label.to_string())
        .legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + Rectangle::new([(0, -6), (20, 6)], colour.mix(0.2).filled())
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

/// "Bonferroni over 6 tests, α = 0.05": the correction and alpha the verdicts used.
pub fn significance_rule(r: &Report) -> String {
    let sig = &r.significance;
    let correction = match proto::Correction::try_from(sig.correction) {
        Ok(proto::Correction::Holm) => format!("Holm over {} tests", sig.num_tests),
        Ok(proto::Correction::BenjaminiHochberg) => format!("Benjamini–Hochberg over {} tests", sig.num_tests),
        Ok(proto::Correction::None) => "no correction".to_string(),
        _ => format!("Bonferroni over {} tests", sig.num_tests),
    };
    format!("{correction}, α = {}", sig.alpha)
}

/// t per layer: significant layers marked by direction (circles a > b, squares b > a), the rest
/// with crosses; the legend lists only the markers shown; the caption gives the correction and alpha.
pub fn significance_figure(r: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let layers = &r.significance.layers;
    let (lo, hi) =
        layers.iter().filter(|t| t.t.is_finite()).fold((0f64, 0f64), |(lo, hi), t| (lo.min(t.t), hi.max(t.t)));
    let pad = ((hi - lo) * 0.08).max(0.5);
    let cond = |i: u32| r.conditions.get(i as usize).cloned().unwrap_or_default();
    let (a, b) = (cond(r.significance.condition_a), cond(r.significance.condition_b));
    let caption = format!(
        "{}: paired t-test, {a} vs {b}, n = {} ({})",
        r.rotations.model_name,
        r.rows_label(),
        significance_rule(r)
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", CAPTION_FONT))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(layer_axis(r.num_layers, 0.5), (lo - pad)..(hi + pad + 0.4 * (hi - lo + pad)))
        .map_err(plot_err)?;
    layer_mesh(&mut chart, LAYER_LABEL, "t value")?;

    // Dashed zero line, as the notebook's axhline(0, '--').
    let ends = [(0.5, 0.0), (r.num_layers as f64 + 0.5, 0.0)];
    chart.draw_series(DashedLineSeries::new(ends, 8, 6, GREY.into())).map_err(plot_err)?;

    let pick = |d: proto::Direction| {
        layers
            .iter()
            .filter(move |t| t.t.is_finite() && proto::Direction::try_from(t.direction) == Ok(d))
            .map(|t| (t.layer as f64, t.t))
    };
    let count = |d: proto::Direction| pick(d).count();
    // Macros, not closures: the same marker is drawn at data and at legend (pixel) coordinates.
    macro_rules! circle {
        ($at:expr) => {
            EmptyElement::at($at) + Circle::new((0, 0), 7, FAINT_SHUFFLED.filled()) + Circle::new((0, 0), 7, BLACK)
        };
    }
    macro_rules! square {
        ($at:expr) => {
            EmptyElement::at($at)
                + Rectangle::new([(-7, -7), (7, 7)], FAINT_NON_TARGET.filled())
                + Rectangle::new([(-7, -7), (7, 7)], BLACK)
        };
    }
    macro_rules! cross {
        ($at:expr) => {
            Cross::new($at, 6, TARGET.stroke_width(2))
        };
    }
    let drawn = chart.draw_series(pick(proto::Direction::AGreater).map(|p| circle!(p))).map_err(plot_err)?;
    if count(proto::Direction::AGreater) > 0 {
        drawn.label(format!("{a} > {b}")).legend(|(x, y)| circle!((x + 10, y)));
    }
    let drawn = chart.draw_series(pick(proto::Direction::BGreater).map(|p| square!(p))).map_err(plot_err)?;
    if count(proto::Direction::BGreater) > 0 {
        drawn.label(format!("{b} > {a}")).legend(|(x, y)| square!((x + 10, y)));
    }
    let drawn = chart.draw_series(pick(proto::Direction::NotSignificant).map(|p| cross!(p))).map_err(plot_err)?;
    if count(proto::Direction::NotSignificant) > 0 {
        drawn.label("Not significant").legend(|(x, y)| cross!((x + 10, y)));
    }
    finish(chart, &root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Direction;

    /// A report of `sentences` sentences over `layers` layers with made-up angles and the given verdicts.
    fn report(layers: usize, sentences: usize, directions: &[Direction]) -> Report {
        let angle = |l: usize, s: usize, c: usize| (10 + 30 * c + (l * 7 + s * 13) % 11) as f32;
        let values =
            (0..layers * sentences * 3).map(|i| angle(i / (3 * sentences), i / 3 % sentences, i % 3)).collect();
        let means = (0..layers * 3)
            .map(|i| (0..sentences).map(|s| angle(i / 3, s, i % 3)).sum::<f32>() / sentences as f32)
            .collect();
        let tests = (0..layers)
            .map(|l| proto::LayerTest {
                layer: l as u32 + 1,
                t: l as f64 - 2.5,
                direction: directions[l % directions.len()] as i32,
                ..Default::default()
            })
            .collect();
        let analysis = proto::Analysis {
            rotations: Some(proto::RotationResult {
                angles: Some(proto::Tensor { shape: vec![layers as u32, sentences as u32, 3], values }),
                layer_means: Some(proto::Tensor { shape: vec![layers as u32, 3], values: means }),
                conditions: ["target", "non_target", "shuffled"].map(String::from).to_vec(),
                sentences: (0..sentences as u32)
                    .map(|index| proto::SentenceReport { index, occurrence: 1, ..Default::default() })
                    .collect(),
                ..Default::default()
            }),
            significance: Some(proto::SignificanceResult {
                layers: tests,
                alpha: 0.01,
                correction: proto::Correction::Holm as i32,
                num_tests: layers as u32,
                condition_a: 0,
                condition_b: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        Report::new(&analysis, &vec![String::new(); sentences]).unwrap()
    }

    fn draw(r: &Report) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        angles_figure(r, &dir.path().join("a.svg")).unwrap();
        significance_figure(r, &dir.path().join("s.svg")).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        (read("a.svg"), read("s.svg"))
    }

    /// The texts of an SVG's `<text>` elements.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>').and_then(|(_, rest)| rest.split_once("</text>")))
            .map(|(t, _)| t.trim())
            .collect()
    }

    /// Byte offsets of the lines drawn in a colour (legend samples included).
    fn lines(svg: &str, colour: RGBColor) -> Vec<usize> {
        let stroke = format!(
            "<polyline fill=\"none\" opacity=\"{{}}\" stroke=\"#{:02X}{:02X}{:02X}\"",
            colour.0, colour.1, colour.2
        );
        let (head, tail) = stroke.split_once("{}").unwrap();
        svg.match_indices(head)
            .filter(|(at, _)| {
                svg[at + head.len()..].split_once('"').is_some_and(|(_, rest)| rest.starts_with(&tail[1..]))
            })
            .map(|(at, _)| at)
            .collect()
    }

    #[test]
    fn layer_ticks_are_whole_layers_and_few() {
        assert_eq!(layer_ticks(6), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(layer_ticks(1), [1.0]);
        let xl = layer_ticks(48);
        assert_eq!(xl, [1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48].map(f64::from));
        for layers in 1..300 {
            let ticks = layer_ticks(layers);
            assert!(ticks.len() <= MAX_LAYER_TICKS + 1 && ticks[0] == 1.0, "{layers}: {ticks:?}");
            assert!(ticks.iter().all(|t| t.fract() == 0.0 && *t <= layers as f64), "{layers}: {ticks:?}");
        }
    }

    #[test]
    fn the_headline_figure_names_model_target_and_n_and_marks_significant_layers() {
        let mut r = report(6, 54, &[Direction::NotSignificant, Direction::AGreater]);
        r.rotations.model_name = "gpt2-tiny-random".into();
        r.target = Some("\" her\"".into());
        for (l, t) in r.significance.layers.iter_mut().enumerate() {
            t.significant = l % 2 == 1;
        }
        let (angles, _) = draw(&r);
        let labels = texts(&angles);
        let title = "gpt2-tiny-random: rotation of &quot; her&quot; per layer, n = 54 sentences";
        assert!(labels.contains(&title), "{labels:?}");
        for label in
            ["Target", "Non-target (the token before)", "Shuffled", "Shuffled control (own scale)", LAYER_LABEL]
        {
            assert!(labels.contains(&label), "{label} not in {labels:?}");
        }
        assert_eq!(labels.iter().filter(|l| **l == "*").count(), 3, "a star above each significant layer");
        assert!(labels.iter().any(|l| l.starts_with("* Significant layer (paired t-test, Holm over 6 tests")));
        // One CI band per condition, and no per-sentence lines at any n.
        assert_eq!(angles.matches("<polygon").count(), 3);
        assert_eq!(lines(&angles, TARGET).len(), 2, "the mean and its legend sample");
        let (big, _) = draw(&report(48, 10_000, &[Direction::AGreater]));
        assert!(big.len() < 60_000, "angles.svg at 10,000 sentences is {} bytes", big.len());
    }

    #[test]
    fn confidence_intervals_are_mean_plus_minus_t_sd_over_root_n() {
        let r = report(2, 5, &[Direction::NotSignificant]);
        let ci = mean_and_ci(&r, 1);
        for (l, &(mean, lo, hi)) in ci.iter().enumerate() {
            let v: Vec<f64> = (0..5).map(|s| f64::from(r.angle(l, s, 1))).collect();
            let m = v.iter().sum::<f64>() / 5.0;
            let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 4.0).sqrt();
            // scipy.stats.t.ppf(0.975, 4) = 2.7764451051977987
            let half = 2.7764451051977987 * sd / 5f64.sqrt();
            assert!((mean - m).abs() < 1e-12 && (lo - (m - half)).abs() < 1e-9 && (hi - (m + half)).abs() < 1e-9);
        }
    }

    #[test]
    fn the_significance_legend_lists_only_markers_shown_and_states_the_rule() {
        let (_, sig) = draw(&report(6, 20, &[Direction::BGreater, Direction::NotSignificant]));
        let labels = texts(&sig);
        assert!(labels.contains(&"non_target &gt; target") && labels.contains(&"Not significant"), "{labels:?}");
        assert!(!labels.contains(&"target &gt; non_target"), "no layer has target > non_target: {labels:?}");
        assert!(labels.iter().any(|l| l.contains("Holm over 6 tests, α = 0.01")), "{labels:?}");
        assert!(labels.contains(&LAYER_LABEL), "the same x label as angles.svg: {labels:?}");
    }
}
