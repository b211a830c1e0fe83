//! The notebook's two figures as SVG, drawn with plotters.
use std::path::Path;

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

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the figure: {e:?}")
}

/// Draws the legend (top right, in the headroom left for it) and writes the file.
fn finish<'a, DB: DrawingBackend + 'a>(
    mut chart: ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    root: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Each sentence's angle per layer (faint) and the mean over sentences (bold), for the three conditions.
pub fn angles_figure(r: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max = r.angles.iter().copied().filter(|v| v.is_finite()).fold(0.0f32, f32::max) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("Rotation of each token's vector relative to the previous layer", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // Headroom above the data keeps the legend off the curves.
        .build_cartesian_2d(0f64..(r.num_layers + 1) as f64, 0f64..max * 1.3 + 1e-12)
        .map_err(plot_err)?;
    let unit = if r.unit == "radians" { "rad." } else { "deg." };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(r.num_layers.min(25) + 2)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("Transformer layer")
        .y_desc(format!("Angle ({unit})"))
        .draw()
        .map_err(plot_err)?;

    let layers = 1..=r.num_layers;
    let conditions = [
        (0, FAINT_TARGET, TARGET, "Target"),
        (1, FAINT_NON_TARGET, NON_TARGET, "Non-target"),
        (2, FAINT_SHUFFLED, SHUFFLED, "Shuffled"),
    ];
    for &(c, faint, _, _) in &conditions {
        for s in 0..r.num_sentences {
            let points = layers.clone().map(|l| (l as f64, r.angle(l - 1, s, c) as f64));
            chart.draw_series(LineSeries::new(points, faint.mix(0.5))).map_err(plot_err)?;
        }
    }
    for &(c, _, bold, label) in &conditions {
        let points = layers.clone().map(|l| (l as f64, r.mean(l - 1, c) as f64));
        chart
            .draw_series(LineSeries::new(points, bold.stroke_width(3)))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], bold.stroke_width(3)));
    }
    finish(chart, &root)
}

/// t per layer: significant layers marked by direction (circles a > b, squares b > a), the rest with crosses.
pub fn significance_figure(r: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let layers = &r.significance.layers;
    // Degenerate layers (t = ±inf or NaN, flagged) have no point on the t axis.
    let (lo, hi) =
        layers.iter().filter(|t| t.t.is_finite()).fold((0f64, 0f64), |(lo, hi), t| (lo.min(t.t), hi.max(t.t)));
    let pad = ((hi - lo) * 0.08).max(0.5);
    let mut chart = ChartBuilder::on(&root)
        .caption("Statistical significance of rotation differences", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(r.num_layers + 1) as f64, (lo - pad)..(hi + pad + 0.35 * (hi - lo + pad)))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(r.num_layers.min(25) + 2)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("Layer")
        .y_desc("T-value")
        .draw()
        .map_err(plot_err)?;

    // Dashed zero line, as the notebook's axhline(0, '--').
    let n = r.num_layers + 1;
    let dashes = (0..n * 4).step_by(2).map(|i| {
        let x0 = i as f64 / 4.0;
        PathElement::new(vec![(x0, 0.0), (x0 + 0.25, 0.0)], RGBColor(128, 128, 128))
    });
    chart.draw_series(dashes).map_err(plot_err)?;

    let cond = |i: u32| r.conditions.get(i as usize).cloned().unwrap_or_default();
    let (a, b) = (cond(r.significance.condition_a), cond(r.significance.condition_b));
    let pick = |d: proto::Direction| {
        layers
            .iter()
            .filter(move |t| t.t.is_finite() && proto::Direction::try_from(t.direction) == Ok(d))
            .map(|t| (t.layer as f64, t.t))
    };
    chart
        .draw_series(pick(proto::Direction::AGreater).map(|p| {
            EmptyElement::at(p) + Circle::new((0, 0), 6, FAINT_SHUFFLED.filled()) + Circle::new((0, 0), 6, BLACK)
        }))
        .map_err(plot_err)?
        .label(format!("{a} > {b}"))
        .legend(|(x, y)| Circle::new((x + 10, y), 6, FAINT_SHUFFLED.filled()));
    chart
        .draw_series(pick(proto::Direction::BGreater).map(|p| {
            EmptyElement::at(p)
                + Rectangle::new([(-6, -6), (6, 6)], FAINT_NON_TARGET.filled())
                + Rectangle::new([(-6, -6), (6, 6)], BLACK)
        }))
        .map_err(plot_err)?
        .label(format!("{b} > {a}"))
        .legend(|(x, y)| Rectangle::new([(x + 4, y - 6), (x + 16, y + 6)], FAINT_NON_TARGET.filled()));
    chart
        .draw_series(pick(proto::Direction::NotSignificant).map(|p| Cross::new(p, 5, TARGET.stroke_width(2))))
        .map_err(plot_err)?
        .label("Non-sig.")
        .legend(|(x, y)| Cross::new((x + 10, y), 5, TARGET.stroke_width(2)));
    finish(chart, &root)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 layers × 2 sentences; layer 1 a > b, layer 2 b > a, layer 3 not significant, plus a
    /// flagged layer 4 with t = +inf (drawn nowhere).
    fn report() -> Report {
        let layer = |layer: u32, t: f64, direction: proto::Direction| proto::LayerTest {
            layer,
            t,
            direction: direction as i32,
            significant: direction != proto::Direction::NotSignificant,
            ..Default::default()
        };
        let significance = proto::SignificanceResult {
            layers: vec![
                layer(1, 4.0, proto::Direction::AGreater),
                layer(2, -3.0, proto::Direction::BGreater),
                layer(3, 0.5, proto::Direction::NotSignificant),
                layer(4, f64::INFINITY, proto::Direction::NotSignificant),
            ],
            condition_a: 0,
            condition_b: 1,
            ..Default::default()
        };
        let values: Vec<f32> = (0..4 * 2 * 3).map(|i| 1.0 + i as f32).collect();
        let rotations = proto::RotationResult {
            angles: Some(proto::Tensor { shape: vec![4, 2, 3], values }),
            layer_means: Some(proto::Tensor { shape: vec![4, 3], values: vec![2.0; 12] }),
            conditions: ["target", "non_target", "shuffled"].map(String::from).to_vec(),
            ..Default::default()
        };
        let analysis =
            proto::Analysis { rotations: Some(rotations), significance: Some(significance), ..Default::default() };
        Report::new(&analysis, &["a".into(), "b".into()]).unwrap()
    }

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    #[test]
    fn angles_figure_has_every_series_and_its_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("angles.svg");
        angles_figure(&report(), &path).unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        for text in [
            "Rotation of each token",
            "Transformer layer",
            "Angle (deg.)",
            "\nTarget\n",
            "\nNon-target\n",
            "\nShuffled\n",
        ] {
            assert!(svg.contains(text), "angles.svg lacks {text:?}");
        }
        // One faint curve per sentence and condition, one bold mean per condition (+ its legend line).
        for (faint, bold) in [(FAINT_TARGET, TARGET), (FAINT_NON_TARGET, NON_TARGET), (FAINT_SHUFFLED, SHUFFLED)] {
            let faint = format!("stroke=\"#{:02X}{:02X}{:02X}\"", faint.0, faint.1, faint.2);
            let bold = format!("stroke=\"#{:02X}{:02X}{:02X}\"", bold.0, bold.1, bold.2);
            assert_eq!(count(&svg, &format!("<polyline fill=\"none\" opacity=\"0.5\" {faint}")), 2, "{faint}");
            assert_eq!(count(&svg, &bold), 2, "{bold}: the mean and its legend entry");
        }
    }

    #[test]
    fn significance_figure_marks_each_layer_by_direction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("significance.svg");
        significance_figure(&report(), &path).unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        for text in [
            "Statistical significance",
            "\nLayer\n",
            "T-value",
            "target &gt; non_target",
            "non_target &gt; target",
            "Non-sig.",
        ] {
            assert!(svg.contains(text), "significance.svg lacks {text:?}");
        }
        // Circles: layer 1 (filled + outline) and the legend's; squares: layer 2 (filled + outline)
        // and the legend's; a cross (two lines) for layer 3 and the legend; nothing for the
        // infinite t of layer 4.
        assert_eq!(count(&svg, "<circle"), 3);
        let fill = |c: RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        assert_eq!(count(&svg, "<rect"), 6, "background, a square (fill, outline), legend box (fill, outline) and key");
        assert_eq!(count(&svg, &fill(FAINT_NON_TARGET)), 2);
        let cross = format!("stroke=\"#{:02X}{:02X}{:02X}\"", TARGET.0, TARGET.1, TARGET.2);
        assert_eq!(count(&svg, &cross), 4, "two crosses of two lines");
    }
}
