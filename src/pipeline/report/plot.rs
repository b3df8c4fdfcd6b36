//! The PNG plot of certified accuracy against radius (estimates dashed).
use super::stats::{correct_radii, fraction_at, is_certificate};
use crate::pipeline::tsv::CertRow;
use std::path::PathBuf;
use std::sync::OnceLock;

pub(super) const PLOT_SIZE: (u32, u32) = (900, 600);

/// The legend's method note: "mc: certificate", "surrogate: estimate".
pub(super) fn legend_methods(methods: &[String]) -> String {
    methods
        .iter()
        .map(|m| {
            let kind = if is_certificate(m) {
                "certificate"
            } else {
                "estimate"
            };
            format!("{m}: {kind}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One file's curve for the plot.
pub(super) struct PlotCurve {
    pub(super) label: String,
    /// Drawn dashed: not a certificate.
    pub(super) estimate: bool,
    pub(super) steps: Vec<(f64, f64)>,
}

/// The exact step function r -> certified accuracy: flat up to each distinct
/// radius (inclusive), then down to the fraction certified beyond it.
pub(super) fn step_points(rows: &[CertRow]) -> Vec<(f64, f64)> {
    let n = rows.len();
    let sorted = correct_radii(rows);
    let mut points = vec![(0.0, fraction_at(&sorted, n, 0.0))];
    let mut i = 0;
    while i < sorted.len() {
        let r = sorted[i];
        while i < sorted.len() && sorted[i] == r {
            i += 1;
        }
        let level = if n == 0 {
            0.0
        } else {
            (sorted.len() - i) as f64 / n as f64
        };
        if r > 0.0 {
            points.push((r, points.last().map_or(0.0, |p| p.1)));
        }
        points.push((r.max(0.0), level));
    }
    points
}

/// Paths tried for a sans-serif TrueType font, after `$SMOOTHCERT_FONT`.
pub(super) const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a font as "sans-serif" with plotters once per process (the
/// ab_glyph backend has no built-in font and needs `'static` bytes, hence
/// the leak of one font file). Returns whether text can be drawn.
pub(super) fn font_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let env = std::env::var_os("SMOOTHCERT_FONT").map(PathBuf::from);
        let candidates = env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                bytes,
            )
            .is_ok()
            {
                tracing::debug!(font = %path.display(), "registered plot font");
                return true;
            }
            tracing::warn!(font = %path.display(), "not a usable TrueType font");
        }
        false
    })
}

pub(super) const COLORS: [plotters::style::RGBColor; 8] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(227, 119, 194),
    plotters::style::RGBColor(23, 190, 207),
];

/// The chart plotted on: radius against certified accuracy, on the bitmap.
type Chart<'a, 'b> = plotters::chart::ChartContext<
    'a,
    plotters::backend::BitMapBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// Draws the curves into a PNG in memory. Without `text`, no caption, axis
/// labels or legend are drawn (plotters fails on text with no font), but the
/// curves and grid still are.
pub(super) fn draw_png(
    curves: &[PlotCurve],
    max_radius: f64,
    norm: &str,
    text: bool,
) -> Result<Vec<u8>, String> {
    use plotters::prelude::*;
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let x_max = if max_radius > 0.0 {
        max_radius * 1.05
    } else {
        1.0
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let estimates = curves.iter().any(|c| c.estimate);
        let mut chart = chart_with_grid(&root, x_max, norm, text, estimates)?;
        for (i, c) in curves.iter().enumerate() {
            draw_curve(&mut chart, c, COLORS[i % COLORS.len()], x_max, text)?;
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 16))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or("plot buffer has the wrong size")?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(png.into_inner())
}

/// The chart over [0, x_max] x [0, 1.02] with its grid drawn; with `text`,
/// its caption (saying so when `estimates` are plotted) and axis labels.
fn chart_with_grid<'a, 'b>(
    root: &'a plotters::drawing::DrawingArea<
        plotters::backend::BitMapBackend<'b>,
        plotters::coord::Shift,
    >,
    x_max: f64,
    norm: &str,
    text: bool,
    estimates: bool,
) -> Result<Chart<'a, 'b>, String> {
    let mut builder = plotters::chart::ChartBuilder::on(root);
    builder.margin(20);
    if text {
        // With an estimate on the plot the title says so: its curve is not certified.
        let caption = if estimates {
            format!("Certified accuracy vs {norm} radius (dashed: surrogate estimates)")
        } else {
            format!("Certified accuracy vs {norm} radius")
        };
        builder
            .caption(caption, ("sans-serif", 26))
            .x_label_area_size(55)
            .y_label_area_size(75);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..x_max, 0f64..1.02f64)
        .map_err(|e| e.to_string())?;
    let percent = |v: &f64| format!("{:.0}%", v * 100.0);
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(format!("radius ({norm})"))
            .y_desc("certified accuracy")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .y_label_formatter(&percent);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    Ok(chart)
}

/// One curve (dashed for an estimate) carried on to `x_max`, and with
/// `text`, its legend entry.
fn draw_curve<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    c: &PlotCurve,
    color: plotters::style::RGBColor,
    x_max: f64,
    text: bool,
) -> Result<(), String> {
    use plotters::prelude::*;
    let mut points = c.steps.clone();
    // Carry the last level to the right edge so curves end together.
    if let Some(&(_, y)) = points.last() {
        points.push((x_max, y));
    }
    let style = color.stroke_width(2);
    let series = if c.estimate {
        chart.draw_series(DashedLineSeries::new(points, 10, 6, style))
    } else {
        chart.draw_series(LineSeries::new(points, style))
    }
    .map_err(|e| e.to_string())?;
    if text {
        let estimate = c.estimate;
        series.label(c.label.as_str()).legend(move |(x, y)| {
            let ends = vec![(x, y), (x + 28, y)];
            if estimate {
                plotters::element::DashedPathElement::new(ends, 8, 5, style).into_dyn()
            } else {
                PathElement::new(ends, style).into_dyn()
            }
        });
    }
    Ok(())
}
