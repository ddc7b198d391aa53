//! The report's SVG plots (plotters): scaling curves on a log axis and horizontal bar charts.

use std::path::Path;

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

const SIZE: (u32, u32) = (720, 420);
const COLOURS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// One or more curves over a log x axis; `floor` draws a dashed horizontal reference.
pub fn curves(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    floor: Option<(&str, f64)>,
) -> PlotResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (x_min, x_max) = points.clone().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let y_max = points
        .map(|p| p.1)
        .chain(floor.map(|f| f.1))
        .fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min * 0.8..x_max * 1.25).log_scale(), 0.0..y_max * 1.2)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
    }
    if let Some((name, y)) = floor {
        chart
            .draw_series(DashedLineSeries::new(
                [(x_min * 0.8, y), (x_max * 1.25, y)],
                6,
                4,
                BLACK.stroke_width(1),
            ))?
            .label(name)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Horizontal bars: one group per label, one bar per series in each group.
pub fn bars(
    path: &Path,
    title: &str,
    x_desc: &str,
    labels: &[String],
    series: &[(&str, Vec<f64>)],
    reference: Option<f64>,
) -> PlotResult {
    let per_group = series.len();
    let rows = labels.len() * per_group;
    let height = (rows as u32 * 26 + 120).max(SIZE.1);
    let root = SVGBackend::new(path, (SIZE.0 + 200, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .chain(reference)
        .fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(300)
        .build_cartesian_2d(0.0..x_max * 1.4, 0.0..rows as f64)?; // room for the legend
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_desc)
        .y_label_formatter(&|_| String::new())
        .draw()?;
    for (s, (name, values)) in series.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        chart
            .draw_series(values.iter().enumerate().map(|(g, &v)| {
                let top = rows as f64 - (g * per_group + s) as f64;
                Rectangle::new([(0.0, top - 0.1), (v, top - 0.9)], colour.filled())
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled()));
    }
    if let Some(r) = reference {
        chart.draw_series(DashedLineSeries::new(
            [(r, 0.0), (r, rows as f64)],
            6,
            4,
            BLACK.stroke_width(1),
        ))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    // Group labels left of the axis, centred on their group.
    let style = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (g, label) in labels.iter().enumerate() {
        let centre = rows as f64 - (g * per_group) as f64 - per_group as f64 / 2.0;
        let (x, y) = chart.backend_coord(&(0.0, centre));
        root.draw(&Text::new(label.clone(), (x - 8, y), style.clone()))?;
    }
    root.present()?;
    Ok(())
}
