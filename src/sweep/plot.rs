//! Metric-against-bits plots in the style of the study's figures: one coloured line with markers
//! per method, the full-precision baseline dashed, a legend, axis labels.
//!
//! Text needs a TrueType font, which is looked up at run time (`QWEN3_QUANT_FONT`, then the usual
//! system locations of DejaVu Sans, Liberation Sans, Arial). Without one the plot is drawn without
//! text, and the Markdown table next to it names the lines.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One plot line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

const FONT_CANDIDATES: [&str; 8] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a system font with plotters once; whether text can be drawn.
fn have_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var("QWEN3_QUANT_FONT").ok();
        let candidates = env.iter().map(String::as_str).chain(FONT_CANDIDATES);
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    let pad = if hi > lo { (hi - lo) * 0.08 } else { 0.5 };
    (lo - pad, hi + pad)
}

/// Draws `series` (and the `baseline` level) against bits into the PNG `path`, atomically.
/// `log_y` plots the metric on a logarithmic axis (perplexity).
pub(crate) fn plot_vs_bits(
    series: &[Series],
    baseline: Option<f64>,
    title: &str,
    log_y: bool,
    path: &Path,
) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp.png",
        path.file_stem()
            .map_or("plot".into(), |s| s.to_string_lossy())
    ));
    draw(series, baseline, title, log_y, &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::invalid(format!("plotting {}: {e}", path.display()))
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

fn draw(
    series: &[Series],
    baseline: Option<f64>,
    title: &str,
    log_y: bool,
    path: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let ty = |y: f64| if log_y { y.max(1e-12).log10() } else { y };
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| ty(p.1)))
        .chain(baseline.map(ty));
    let (x0, x1) = range(xs);
    let (y0, y1) = range(ys);
    let text = have_font();
    let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, ("sans-serif", 24))
            .x_label_area_size(48)
            .y_label_area_size(72);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
    let y_fmt = |v: &f64| {
        let v = if log_y { 10f64.powf(*v) } else { *v };
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    let x_fmt = |v: &f64| format!("{v:.0}");
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235))
        .x_labels(((x1 - x0).ceil() as usize + 1).clamp(2, 12))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt);
    if text {
        mesh.x_desc("weight bits").y_desc(if log_y {
            "perplexity (log scale)"
        } else {
            "accuracy (%)"
        });
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    if let Some(b) = baseline {
        let line = chart.draw_series(DashedLineSeries::new(
            [(x0, ty(b)), (x1, ty(b))],
            8,
            6,
            BLACK.stroke_width(1),
        ))?;
        if text {
            line.label("full precision").legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1))
            });
        }
    }
    for (i, s) in series.iter().enumerate() {
        let (r, g, b) = PALETTE[i % PALETTE.len()];
        let c = RGBColor(r, g, b);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x, ty(y))).collect();
        let line = chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        if text {
            line.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 15))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
