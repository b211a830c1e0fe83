//! The notebook's two figures as SVG, drawn with plotters, readable from a handful of sentences to
//! a corpus: beyond [`BAND_ABOVE`] sentences the per-sentence lines give way to a percentile band.
use std::path::Path;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::CoordTranslate;
use plotters::prelude::*;

use super::report::Report;
use crate::proto;

// The notebook's colours: faint per-sentence curves, bold means.
const FAINT_TARGET: RGBColor = RGBColor(230, 179, 179);
const FAINT_NON_TARGET: RGBColor = RGBColor(179, 179, 230);
const FAINT_SHUFFLED: RGBColor = RGBColor(179, 230, 179);
const TARGET: RGBColor = RGBColor(220, 0, 0);
const NON_TARGET: RGBColor = RGBColor(0, 0, 220);
const SHUFFLED: RGBColor = RGBColor(0, 150, 0);
pub(super) const GREY: RGBColor = RGBColor(128, 128, 128);

/// Above this many sentences, a band of [`BAND_PERCENTILES`] replaces one line per sentence
/// (thousands of lines make a solid block and a file of megabytes).
pub const BAND_ABOVE: usize = 300;
/// The band around the mean: from the 5th to the 95th percentile of the sentences' angles.
pub const BAND_PERCENTILES: (f64, f64) = (5.0, 95.0);
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

/// 10000 → "10,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// The `q`-th percentile (0–100) of sorted values, linear between closest ranks (numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Per layer, the low and high [`BAND_PERCENTILES`] of one condition's finite angles.
fn band(r: &Report, condition: usize) -> Vec<(f64, f64)> {
    (0..r.num_layers)
        .map(|l| {
            let mut values: Vec<f64> =
                (0..r.num_sentences).map(|s| f64::from(r.angle(l, s, condition))).filter(|v| v.is_finite()).collect();
            if values.is_empty() {
                return (f64::NAN, f64::NAN);
            }
            values.sort_by(f64::total_cmp);
            (percentile(&values, BAND_PERCENTILES.0), percentile(&values, BAND_PERCENTILES.1))
        })
        .collect()
}

/// (condition, faint colour, bold colour, legend label), in the order they are drawn: the target last, on top.
const CONDITIONS: [(usize, RGBColor, RGBColor, &str); 3] = [
    (2, FAINT_SHUFFLED, SHUFFLED, "Shuffled"),
    (1, FAINT_NON_TARGET, NON_TARGET, "Non-target"),
    (0, FAINT_TARGET, TARGET, "Target"),
];

/// Each sentence's angle per layer (faint), or a percentile band beyond [`BAND_ABOVE`] sentences,
/// and the mean over sentences (bold), for the three conditions.
pub fn angles_figure(r: &Report, path: &Path) -> anyhow::Result<()> {
    let bands = (r.num_sentences > BAND_ABOVE).then(|| [band(r, 2), band(r, 1), band(r, 0)]);
    let drawn_max = match &bands {
        Some(bands) => {
            bands.iter().flatten().map(|b| b.1).chain(r.layer_means.iter().map(|&m| f64::from(m))).fold(0.0, f64::max)
        }
        None => (0..r.num_layers * r.num_sentences * 3)
            .map(|i| f64::from(r.angle(i / 3 / r.num_sentences, i / 3 % r.num_sentences, i % 3)))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max),
    };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Rotation of each token's vector relative to the previous layer", ("sans-serif", CAPTION_FONT))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        // Headroom above the data keeps the legend off the curves.
        .build_cartesian_2d(layer_axis(r.num_layers, 0.0), 0f64..drawn_max * 1.35 + 1e-12)
        .map_err(plot_err)?;
    let unit = if r.unit == "radians" { "rad." } else { "deg." };
    chart
        .configure_mesh()
        .disable_mesh()
        .y_label_formatter(&value_label)
        .label_style(("sans-serif", AXIS_FONT))
        .axis_desc_style(("sans-serif", DESC_FONT))
        .x_desc(LAYER_LABEL)
        .y_desc(format!("Angle ({unit})"))
        .draw()
        .map_err(plot_err)?;

    // Legend first, in reading order; the data after, in drawing order (target on top).
    for &(_, _, bold, label) in CONDITIONS.iter().rev() {
        chart
            .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], bold.stroke_width(3)));
    }
    match &bands {
        Some(bands) => draw_bands(&mut chart, bands, r.num_sentences)?,
        None => draw_sentence_lines(&mut chart, r)?,
    }
    for &(c, _, bold, _) in &CONDITIONS {
        let points = (1..=r.num_layers).map(|l| (l as f64, f64::from(r.mean(l - 1, c))));
        chart.draw_series(LineSeries::new(points, bold.stroke_width(3))).map_err(plot_err)?;
    }
    finish(chart, &root)
}

type Chart<'a, X> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>;

fn draw_sentence_lines<X: Ranged<ValueType = f64>>(chart: &mut Chart<'_, X>, r: &Report) -> anyhow::Result<()> {
    for &(c, faint, _, _) in &CONDITIONS {
        for s in 0..r.num_sentences {
            let points = (1..=r.num_layers).map(|l| (l as f64, f64::from(r.angle(l - 1, s, c))));
            chart.draw_series(LineSeries::new(points, faint.mix(0.5))).map_err(plot_err)?;
        }
    }
    chart
        .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
        .map_err(plot_err)?
        .label(format!("Each sentence (n = {})", thousands(r.num_sentences)))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREY.mix(0.6)));
    Ok(())
}

fn draw_bands<X: Ranged<ValueType = f64>>(
    chart: &mut Chart<'_, X>,
    bands: &[Vec<(f64, f64)>; 3],
    num_sentences: usize,
) -> anyhow::Result<()> {
    for (&(_, faint, _, _), band) in CONDITIONS.iter().zip(bands) {
        let upper = band.iter().enumerate().map(|(l, b)| ((l + 1) as f64, b.1));
        let lower = band.iter().enumerate().rev().map(|(l, b)| ((l + 1) as f64, b.0));
        let outline: Vec<(f64, f64)> = upper.chain(lower).filter(|p| p.1.is_finite()).collect();
        chart.draw_series(std::iter::once(Polygon::new(outline, faint.mix(0.55).filled()))).map_err(plot_err)?;
    }
    let (lo, hi) = BAND_PERCENTILES;
    chart
        .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
        .map_err(plot_err)?
        .label(format!("{lo}th–{hi}th percentile (n = {})", thousands(num_sentences)))
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], GREY.mix(0.35).filled()));
    Ok(())
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
    let caption = format!("Paired t-test per layer, {a} vs {b} ({})", significance_rule(r));
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", CAPTION_FONT))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(layer_axis(r.num_layers, 0.5), (lo - pad)..(hi + pad + 0.4 * (hi - lo + pad)))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .y_label_formatter(&value_label)
        .label_style(("sans-serif", AXIS_FONT))
        .axis_desc_style(("sans-serif", DESC_FONT))
        .x_desc(LAYER_LABEL)
        .y_desc("t value")
        .draw()
        .map_err(plot_err)?;

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
    fn percentiles_match_numpy() {
        // numpy.percentile([1, 2, 3, 4], [0, 5, 25, 50, 95, 100]) = [1, 1.15, 1.75, 2.5, 3.85, 4]
        let v = [1.0, 2.0, 3.0, 4.0];
        for (q, expected) in [(0.0, 1.0), (5.0, 1.15), (25.0, 1.75), (50.0, 2.5), (95.0, 3.85), (100.0, 4.0)] {
            assert!((percentile(&v, q) - expected).abs() < 1e-12, "{q}: {}", percentile(&v, q));
        }
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
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
    fn a_few_sentences_get_one_line_each_and_the_target_is_drawn_last() {
        let (angles, _) = draw(&report(6, 54, &[Direction::NotSignificant]));
        // 54 faint lines per condition; each mean once, and once more as its legend sample.
        let faint = [FAINT_SHUFFLED, FAINT_NON_TARGET, FAINT_TARGET].map(|c| lines(&angles, c));
        let bold = [SHUFFLED, NON_TARGET, TARGET].map(|c| lines(&angles, c));
        assert!(faint.iter().all(|f| f.len() == 54) && bold.iter().all(|b| b.len() == 2), "{faint:?} {bold:?}");
        assert!(!angles.contains("<polygon"), "no band at 54 sentences");
        // Drawing order: shuffled, non-target, then the target on top, faint lines and means alike.
        assert!(faint[0].last() < faint[1].first() && faint[1].last() < faint[2].first());
        assert!(bold[0][0] < bold[1][0] && bold[1][0] < bold[2][0]);
        let labels = texts(&angles);
        for label in ["Target", "Non-target", "Shuffled", "Each sentence (n = 54)", LAYER_LABEL, "Angle (deg.)"] {
            assert!(labels.contains(&label), "{label} not in {labels:?}");
        }
        // x ticks: exactly the layers, as whole numbers.
        for layer in ["1", "2", "3", "4", "5", "6"] {
            assert!(labels.contains(&layer), "{layer}");
        }
        assert!(!labels.contains(&"7") && !labels.iter().any(|l| l.contains(".5")), "{labels:?}");
        // The angle axis spans exactly the layer transitions.
        assert_eq!(layer_axis(6, 0.0).range, 1.0..6.0);
    }

    #[test]
    fn many_sentences_get_a_percentile_band_in_a_small_file() {
        let (angles, _) = draw(&report(48, 10_000, &[Direction::AGreater]));
        assert_eq!(angles.matches("<polygon").count(), 3, "one band per condition");
        for (faint, bold) in [(FAINT_SHUFFLED, SHUFFLED), (FAINT_NON_TARGET, NON_TARGET), (FAINT_TARGET, TARGET)] {
            assert!(lines(&angles, faint).is_empty(), "no per-sentence lines");
            assert_eq!(lines(&angles, bold).len(), 2, "the mean and its legend sample");
        }
        assert!(texts(&angles).contains(&"5th–95th percentile (n = 10,000)"), "{:?}", texts(&angles));
        assert!(angles.len() < 30_000, "angles.svg at 10,000 sentences is {} bytes", angles.len());
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
