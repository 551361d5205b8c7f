//! Hit ratio against capacity, one chart per tier, as SVG and PNG
//! (plotters), the current size and the knee marked.
//!
//! Text needs a TrueType font for its metrics (and for the PNG's pixels):
//! `TIERSCOPE_FONT`, else DejaVu Sans, Liberation Sans, Noto Sans or
//! FreeSans from the usual system paths. Without one the charts are drawn
//! without text (and `size` says so).

use std::{path::Path, sync::OnceLock};

use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::size;

/// One tier's curve to draw.
pub struct Chart<'a> {
    pub title: String,
    /// (capacity, hit ratio, byte hit ratio)
    pub points: &'a [(u64, f64, f64)],
    pub current: Option<u64>,
    pub knee: Option<u64>,
}

const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Register a font once; whether text can be drawn.
pub fn fonts() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let candidates = std::env::var_os("TIERSCOPE_FONT")
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(std::path::PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // Registered fonts live for the whole process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const W: u32 = 900;
const H: u32 = 540;

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: &Chart,
    text: bool,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    if chart.points.is_empty() {
        return root.present().map_err(e);
    }
    let lo = chart.points.first().map_or(1, |p| p.0).max(1) as f64;
    let hi = (chart.points.last().map_or(2, |p| p.0) as f64).max(lo * 1.01);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if text {
        builder
            .caption(&chart.title, ("sans-serif", 22))
            .x_label_area_size(44)
            .y_label_area_size(60);
    }
    let mut ctx = builder
        .build_cartesian_2d((lo / 1.15..hi * 1.15).log_scale().base(2.0), 0f64..100f64)
        .map_err(e)?;
    let mut mesh = ctx.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if text {
        mesh.x_desc("capacity")
            .y_desc("hit ratio (%)")
            .x_label_formatter(&|v| size::human(*v))
            .y_label_formatter(&|v| format!("{v:.0}"));
    } else {
        mesh.disable_x_mesh().x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(e)?;

    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let hits: Vec<(f64, f64)> = chart
        .points
        .iter()
        .map(|p| (p.0 as f64, 100.0 * p.1))
        .collect();
    let bytes: Vec<(f64, f64)> = chart
        .points
        .iter()
        .map(|p| (p.0 as f64, 100.0 * p.2))
        .collect();
    let series = ctx
        .draw_series(LineSeries::new(hits.clone(), blue.stroke_width(3)))
        .map_err(e)?;
    if text {
        series
            .label("hit ratio")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], blue.stroke_width(3)));
    }
    ctx.draw_series(hits.iter().map(|&p| Circle::new(p, 4, blue.filled())))
        .map_err(e)?;
    let series = ctx
        .draw_series(LineSeries::new(bytes, orange.stroke_width(2)))
        .map_err(e)?;
    if text {
        series
            .label("byte hit ratio")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], orange.stroke_width(2)));
    }
    let marks = [
        (chart.current, RGBColor(214, 39, 40), "current"),
        (chart.knee, RGBColor(44, 160, 44), "knee"),
    ];
    for (at, color, name) in marks {
        let Some(at) = at else { continue };
        let x = at as f64;
        let s = ctx
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, 100.0)],
                color.stroke_width(2),
            ))
            .map_err(e)?;
        if text {
            s.label(format!("{name} {}", size::human(x)))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
    }
    if text {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)
}

/// Write `<prefix>.svg` and `<prefix>.png`.
pub fn write(prefix: &Path, chart: &Chart) -> Result<Vec<std::path::PathBuf>, String> {
    let text = fonts();
    let svg = prefix.with_extension("svg");
    let png = prefix.with_extension("png");
    {
        let root = SVGBackend::new(&svg, (W, H)).into_drawing_area();
        draw(root, chart, text).map_err(|e| format!("{}: {e}", svg.display()))?;
    }
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        draw(root, chart, text).map_err(|e| format!("{}: {e}", png.display()))?;
    }
    write_png(&png, W, H, &buf).map_err(|e| format!("{}: {e}", png.display()))?;
    Ok(vec![svg, png])
}

/// Encode 8-bit RGB pixels as a PNG file (the `png` crate).
fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<(), png::EncodingError> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()
}
