//! Hit ratio against capacity, as SVG and PNG (plotters): one or more
//! curves, each point's value written beside it (for the labelled curve),
//! the current size and the knee marked, the trace's facts in a caption.
//!
//! The y axis zooms in when every curve sits high (a curve between 96 %
//! and 100 % is drawn over those four points, not squashed against the top
//! of a 0-100 % axis), and the x axis leaves room on both sides so that a
//! current size or a knee at the ends of the grid is not drawn on an axis.
//!
//! Text needs a TrueType font for its metrics (and for the PNG's pixels):
//! `TIERSCOPE_FONT`, else DejaVu Sans, Liberation Sans, Noto Sans or
//! FreeSans from the usual system paths. Without one the charts are drawn
//! without text (and `size` says so).

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::bytes;

/// One curve.
pub struct Series {
    pub name: String,
    /// (capacity, ratio in 0..1)
    pub points: Vec<(u64, f64)>,
    color: RGBColor,
    /// Write each point's value beside it.
    labels: bool,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

impl Series {
    /// A curve drawn in the `color`-th colour of the palette.
    pub fn new(name: &str, points: Vec<(u64, f64)>, color: usize) -> Self {
        Series {
            name: name.into(),
            points,
            color: PALETTE[color % PALETTE.len()],
            labels: false,
        }
    }

    /// Write each point's value beside it.
    pub fn labelled(mut self) -> Self {
        self.labels = true;
        self
    }
}

/// One chart.
pub struct Chart {
    pub title: String,
    /// The trace's facts, under the title.
    pub caption: String,
    pub x_desc: String,
    pub series: Vec<Series>,
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
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from));
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

const W: u32 = 1100;
const H: u32 = 680;

/// Font sizes, pixels at the default size (none below 14).
const TITLE: u32 = 26;
const CAPTION: u32 = 16;
const AXIS: u32 = 18;
const TICKS: u32 = 16;
const VALUES: u32 = 15;

/// The y range in percent: 0-100, or zoomed to the curves when they all
/// sit high, in whole steps of 5 points with room for the labels.
fn y_range(chart: &Chart) -> (f64, f64) {
    let low = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| 100.0 * p.1))
        .fold(f64::INFINITY, f64::min);
    if !low.is_finite() || low < 40.0 {
        return (0.0, 104.0);
    }
    let span = (100.0 - low).max(1.0);
    let lo = ((low - span * 0.25) / 5.0).floor() * 5.0;
    (lo.max(0.0), 100.0 + span * 0.08)
}

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
    let xs: Vec<u64> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(chart.current)
        .chain(chart.knee)
        .filter(|&x| x > 0)
        .collect();
    let (Some(&lo), Some(&hi)) = (xs.iter().min(), xs.iter().max()) else {
        return root.present().map_err(e);
    };
    let (lo, hi) = (lo as f64, (hi as f64).max(lo as f64 * 1.01));
    let area = if text {
        let (top, rest) = root.split_vertically(74);
        top.draw(&Text::new(
            chart.title.clone(),
            (20, 10),
            ("sans-serif", TITLE).into_font().color(&BLACK),
        ))
        .map_err(e)?;
        top.draw(&Text::new(
            chart.caption.clone(),
            (20, 46),
            ("sans-serif", CAPTION)
                .into_font()
                .color(&RGBColor(80, 80, 80)),
        ))
        .map_err(e)?;
        rest
    } else {
        root.clone()
    };
    let (y_lo, y_hi) = y_range(chart);
    let mut builder = ChartBuilder::on(&area);
    builder.margin(18).margin_right(36);
    if text {
        builder.x_label_area_size(56).y_label_area_size(72);
    }
    let mut ctx = builder
        .build_cartesian_2d((lo / 1.5..hi * 1.5).log_scale().base(2.0), y_lo..y_hi)
        .map_err(e)?;
    let mut mesh = ctx.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if text {
        mesh.x_desc(chart.x_desc.as_str())
            .y_desc("hit ratio (%)")
            .axis_desc_style(("sans-serif", AXIS))
            .label_style(("sans-serif", TICKS))
            .x_label_formatter(&|v| bytes::human(*v))
            .y_label_formatter(&|v| format!("{v:.0}"));
    } else {
        mesh.disable_x_mesh().x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(e)?;

    let marks = [
        (chart.current, RGBColor(214, 39, 40), "current"),
        (chart.knee, RGBColor(44, 160, 44), "knee"),
    ];
    for (at, color, name) in marks {
        let Some(at) = at else { continue };
        let x = at as f64;
        let s = ctx
            .draw_series(DashedLineSeries::new(
                [(x, y_lo), (x, y_hi)],
                10,
                6,
                color.stroke_width(2),
            ))
            .map_err(e)?;
        if text {
            s.label(format!("{name}: {}", bytes::human(x)))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2))
                });
        }
    }
    for series in &chart.series {
        let color = series.color;
        let pts: Vec<(f64, f64)> = series
            .points
            .iter()
            .map(|p| (p.0 as f64, 100.0 * p.1))
            .collect();
        let width = if series.labels { 3 } else { 2 };
        let drawn = ctx
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
            .map_err(e)?;
        if text {
            drawn.label(series.name.clone()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 24, y)], color.stroke_width(width))
            });
        }
        ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(e)?;
        if text && series.labels {
            let font = ("sans-serif", VALUES).into_font().color(&color);
            ctx.draw_series(pts.iter().map(|&(x, y)| {
                EmptyElement::at((x, y)) + Text::new(format!("{y:.1}"), (7, -24), font.clone())
            }))
            .map_err(e)?;
        }
    }
    if text {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .label_font(("sans-serif", TICKS))
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)
}

/// Write `<base>.svg` and `<base>.png` (the base's dots are kept).
pub fn write(base: &Path, chart: &Chart) -> Result<Vec<PathBuf>, String> {
    let text = fonts();
    let with = |ext: &str| {
        let mut s = base.as_os_str().to_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    let (svg, png) = (with(".svg"), with(".png"));
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
