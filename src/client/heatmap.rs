//! `all_layers.svg`: the target across all layers. Left, the mean angle between every pair of its
//! hidden states as a heatmap (embedding at the top left); right, the cumulative angle travelled
//! from the embedding beside the direct angle from it, whose gap is how much the rotation turned
//! back.
use std::path::Path;

use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

const SIZE: (u32, u32) = (1200, 520);
const CAPTION_FONT: u32 = 20;
const AXIS_FONT: u32 = 15;
const CUMULATIVE: RGBColor = RGBColor(220, 0, 0);
const DIRECT: RGBColor = RGBColor(0, 0, 220);
/// Most tick labels on a hidden-state axis.
const MAX_TICKS: usize = 13;

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the all-layers figure: {e:?}")
}

/// Draws the figure of the mean matrix `mean` (`[states, states]` row-major) in `unit`, over
/// `n` (e.g. "54 sentences", as every figure's title says it), into `path`; `about` names the model
/// and the target ("gpt2: \" her\"").
pub fn all_layers_figure(
    mean: &[f32],
    states: usize,
    unit: &str,
    n: &str,
    about: &str,
    path: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        states >= 2 && mean.len() == states * states,
        "mean matrix of {} values for side {states}",
        mean.len()
    );
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let title = format!("{about} across all layers: mean angle between hidden states ({unit}), n = {n}");
    let root = root.titled(&title, ("sans-serif", CAPTION_FONT)).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(600);
    let (map, bar) = left.split_horizontally(510);
    let max = mean.iter().copied().fold(0f32, f32::max).max(f32::MIN_POSITIVE);
    heatmap(&map, mean, states, max)?;
    colour_bar(&bar, max, unit)?;
    cumulative(&right, mean, states, unit)?;
    root.present().map_err(plot_err)
}

/// Labels every `step`-th hidden state, at most [`MAX_TICKS`].
fn tick_step(states: usize) -> usize {
    states.div_ceil(MAX_TICKS).max(1)
}

fn heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    mean: &[f32],
    states: usize,
    max: f32,
) -> anyhow::Result<()> {
    let n = states as i32;
    let step = tick_step(states) as i32;
    // Segments label the cells' centres; y runs downwards so hidden state 0 (the embedding) is the
    // top row, as a matrix is printed.
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
        .map_err(plot_err)?;
    let label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(k) if k % step == 0 && *k < n => (n - 1 - k).to_string(),
        _ => String::new(),
    };
    let x_label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(k) if k % step == 0 && *k < n => k.to_string(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(states + 1)
        .y_labels(states + 1)
        .x_label_formatter(&x_label)
        .y_label_formatter(&label)
        .x_desc("hidden state j (0 = embedding)")
        .y_desc("hidden state i")
        .label_style(("sans-serif", AXIS_FONT))
        .axis_desc_style(("sans-serif", AXIS_FONT))
        .draw()
        .map_err(plot_err)?;
    let cells = (0..n).flat_map(|i| (0..n).map(move |j| (i, j)));
    chart
        .draw_series(cells.map(|(i, j)| {
            let colour = ViridisRGB::get_color_normalized(mean[(i * n + j) as usize], 0.0, max);
            // Row i is drawn from the top: segment n − 1 − i of the upward y axis.
            let (x, y) = (SegmentValue::Exact(j), SegmentValue::Exact(n - 1 - i));
            let (x1, y1) = (SegmentValue::Exact(j + 1), SegmentValue::Exact(n - i));
            Rectangle::new([(x, y), (x1, y1)], colour.filled())
        }))
        .map_err(plot_err)?;
    Ok(())
}

fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    max: f32,
    unit: &str,
) -> anyhow::Result<()> {
    let steps = 256;
    let mut chart = ChartBuilder::on(area)
        .margin_top(12)
        .margin_bottom(57)
        .margin_right(5)
        .right_y_label_area_size(55)
        .build_cartesian_2d(0f32..1f32, 0f32..max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(unit)
        .label_style(("sans-serif", AXIS_FONT))
        .axis_desc_style(("sans-serif", AXIS_FONT))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series((0..steps).map(|k| {
            // Each step reaches into the next one: abutting rectangles leave hairline seams when
            // an SVG renderer anti-aliases their edges, and the bar looks striped.
            let (lo, hi) = (max * k as f32 / steps as f32, max * (k + 2).min(steps) as f32 / steps as f32);
            let colour = ViridisRGB::get_color_normalized(max * (k as f32 + 0.5) / steps as f32, 0.0, max);
            Rectangle::new([(0.0, lo), (1.0, hi)], colour.filled())
        }))
        .map_err(plot_err)?;
    Ok(())
}

fn cumulative<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    mean: &[f32],
    states: usize,
    unit: &str,
) -> anyhow::Result<()> {
    let mut path = vec![(0i32, 0f32)];
    for l in 1..states {
        path.push((l as i32, path[l - 1].1 + mean[(l - 1) * states + l]));
    }
    let direct: Vec<(i32, f32)> = (0..states).map(|l| (l as i32, mean[l])).collect();
    let top = path.iter().map(|p| p.1).fold(0f32, f32::max) * 1.1 + f32::MIN_POSITIVE;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0..(states - 1) as i32, 0f32..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(MAX_TICKS.min(states))
        .x_desc("hidden state l")
        .y_desc(format!("angle from the embedding ({unit})"))
        .label_style(("sans-serif", AXIS_FONT))
        .axis_desc_style(("sans-serif", AXIS_FONT))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(path, CUMULATIVE.stroke_width(3)))
        .map_err(plot_err)?
        .label("cumulative: sum of consecutive rotations")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], CUMULATIVE.stroke_width(3)));
    chart
        .draw_series(LineSeries::new(direct, DIRECT.stroke_width(3)))
        .map_err(plot_err)?
        .label("direct: angle to the embedding")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], DIRECT.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", AXIS_FONT))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}
