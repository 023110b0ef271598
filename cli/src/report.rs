//! `ckpt report`: pictures of a store for operators (SVG, or HTML with the SVG and a table).
//!
//! 1. Bytes per version, stacked: pages stored in that version's file, and pages it
//!    references in older files (logical, uncompressed bytes); for a job store, summed over
//!    the ranks, with one line per rank of the bytes each wrote to disk.
//! 2. The chain as a graph: each version at its depth, an edge to every file it references.
//! 3. The compression ratio per version (one line per rank for a job store).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use ckpt_engine::catalog;
use ckpt_engine::job::JobStore;
use ckpt_engine::Store;
use plotters::prelude::*;

/// One version of one chain, as the report draws it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    /// Version number.
    pub version: u64,
    /// Delta depth.
    pub depth: u32,
    /// Bytes of its file on disk.
    pub file_bytes: u64,
    /// Uncompressed bytes of the pages stored in its file.
    pub stored_bytes: u64,
    /// Uncompressed bytes of the pages it finds in older files.
    pub referenced_bytes: u64,
    /// Uncompressed over stored bytes of its own pages.
    pub compression_ratio: f64,
    /// Versions of the files it references.
    pub references: Vec<u64>,
}

/// What the report shows: one series per chain (per rank, for a job store).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The store.
    pub dir: String,
    /// Whether it is a job store (series are ranks).
    pub job: bool,
    /// `(label, versions)`, one per chain.
    pub series: Vec<(String, Vec<Point>)>,
}

/// At most this many ranks get their own line; the bars always sum every rank.
const MAX_LINES: usize = 16;

fn points(store: &Store) -> Result<Vec<Point>> {
    let mut out = Vec::new();
    for v in store.versions()? {
        let s = catalog::inspect(&store.path_of(v))?;
        out.push(Point {
            version: v,
            depth: s.depth,
            file_bytes: s.bytes,
            stored_bytes: s.stored_raw_bytes,
            referenced_bytes: s.pages_referenced * u64::from(s.page_size),
            compression_ratio: s.compression_ratio,
            references: s.references.iter().map(|r| r.version).collect(),
        });
    }
    Ok(out)
}

/// Reads every version of the store (a chain's directory, or every rank of a job store).
pub fn gather(dir: &Path, name: Option<&str>) -> Result<Report> {
    let mut series = Vec::new();
    let job = match JobStore::detect(dir)? {
        Some((job, meta)) => {
            for rank in 0..meta.world_size {
                series.push((format!("rank {rank}"), points(&job.rank_store(rank)?)?));
            }
            true
        }
        None => {
            let store = Store::discover(dir, name)?;
            series.push((store.name().to_string(), points(&store)?));
            false
        }
    };
    if series.iter().all(|(_, p)| p.is_empty()) {
        anyhow::bail!("{}: no versions to report", dir.display());
    }
    Ok(Report {
        dir: dir.display().to_string(),
        job,
        series,
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// The report as one SVG document.
pub fn svg(r: &Report) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 1150)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (top, rest) = root.split_vertically(430);
        let (middle, bottom) = rest.split_vertically(360);
        draw_bytes(r, &top)?;
        draw_chain(r, &middle)?;
        draw_ratio(r, &bottom)?;
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the report: {e:?}")
}

/// Every version number in the report, ascending.
fn versions(r: &Report) -> Vec<u64> {
    let mut v: Vec<u64> = r
        .series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.version))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn x_range(r: &Report) -> std::ops::Range<f64> {
    let v = versions(r);
    let lo = v.first().copied().unwrap_or(1) as f64 - 0.8;
    let hi = v.last().copied().unwrap_or(1) as f64 + 0.8;
    lo..hi
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_bytes(r: &Report, area: &Area<'_>) -> Result<()> {
    let vs = versions(r);
    // (stored, referenced) summed over the series, per version.
    let totals: Vec<(u64, f64, f64)> = vs
        .iter()
        .map(|&v| {
            let (mut s, mut f) = (0u64, 0u64);
            for (_, pts) in &r.series {
                if let Some(p) = pts.iter().find(|p| p.version == v) {
                    s += p.stored_bytes;
                    f += p.referenced_bytes;
                }
            }
            (v, s as f64 / MIB, f as f64 / MIB)
        })
        .collect();
    let ymax = totals
        .iter()
        .map(|(_, s, f)| s + f)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let title = if r.job {
        "Bytes per version, all ranks (MiB): stored here / referenced in older files; lines: each rank's file"
    } else {
        "Bytes per version (MiB): stored in its file / referenced in older files; line: file on disk"
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range(r), 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("version")
        .y_desc("MiB")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(plot_err)?;
    let stored = RGBColor(31, 119, 180);
    let referenced = RGBColor(200, 200, 200);
    chart
        .draw_series(totals.iter().map(|&(v, s, _)| {
            let x = v as f64;
            Rectangle::new([(x - 0.35, 0.0), (x + 0.35, s)], stored.filled())
        }))
        .map_err(plot_err)?
        .label("stored")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], stored.filled()));
    chart
        .draw_series(totals.iter().map(|&(v, s, f)| {
            let x = v as f64;
            Rectangle::new([(x - 0.35, s), (x + 0.35, s + f)], referenced.filled())
        }))
        .map_err(plot_err)?
        .label("referenced")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], referenced.filled()));
    for (i, (label, pts)) in r.series.iter().take(MAX_LINES).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                pts.iter()
                    .map(|p| (p.version as f64, p.file_bytes as f64 / MIB)),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(format!("{label}: file"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], color));
    }
    legend(&mut chart)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draws a chart's legend box.
fn legend<'b>(chart: &mut Chart<'b, 'b>) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)
}

fn draw_chain(r: &Report, area: &Area<'_>) -> Result<()> {
    let (label, pts) = &r.series[0];
    let span = versions(r).len() as f64;
    let dmax = pts.iter().map(|p| p.depth).max().unwrap_or(0) as f64 + 0.8 + span * 0.06;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("The chain ({label}): each version at its depth, an edge to each file it references"),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range(r), -0.8f64..dmax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("version")
        .y_desc("depth")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(plot_err)?;
    let depth_of = |v: u64| pts.iter().find(|p| p.version == v).map(|p| p.depth as f64);
    for p in pts {
        for &to in &p.references {
            // A referenced file no longer listed (compacted away) is drawn at depth 0.
            // An arc bowing upwards, so that edges to older files do not hide each other.
            let (x0, y0) = (p.version as f64, p.depth as f64);
            let (x1, y1) = (to as f64, depth_of(to).unwrap_or(0.0));
            let lift = (x0 - x1).abs() * 0.12;
            let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0 + lift);
            let arc: Vec<(f64, f64)> = (0..=16)
                .map(|i| {
                    let t = f64::from(i) / 16.0;
                    let u = 1.0 - t;
                    (
                        u * u * x0 + 2.0 * u * t * cx + t * t * x1,
                        u * u * y0 + 2.0 * u * t * cy + t * t * y1,
                    )
                })
                .collect();
            chart
                .draw_series(std::iter::once(PathElement::new(
                    arc,
                    RGBColor(150, 150, 150).stroke_width(1),
                )))
                .map_err(plot_err)?;
        }
    }
    chart
        .draw_series(pts.iter().map(|p| {
            let color = if p.references.is_empty() {
                RGBColor(214, 39, 40)
            } else {
                RGBColor(31, 119, 180)
            };
            Circle::new((p.version as f64, p.depth as f64), 6, color.filled())
        }))
        .map_err(plot_err)?;
    Ok(())
}

fn draw_ratio(r: &Report, area: &Area<'_>) -> Result<()> {
    let ymax = r
        .series
        .iter()
        .flat_map(|(_, p)| {
            p.iter()
                .filter(|p| p.stored_bytes > 0)
                .map(|p| p.compression_ratio)
        })
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Compression ratio per version (uncompressed / stored)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range(r), 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("version")
        .y_desc("ratio")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(plot_err)?;
    for (i, (label, pts)) in r.series.iter().take(MAX_LINES).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                // A version that stores no pages has no ratio.
                pts.iter()
                    .filter(|p| p.stored_bytes > 0)
                    .map(|p| (p.version as f64, p.compression_ratio)),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], color));
    }
    legend(&mut chart)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The report as an HTML page: the SVG, then a table of every version of every chain.
pub fn html(r: &Report) -> Result<String> {
    let mut h = String::new();
    let title = format!("ckpt report: {}", escape(&r.dir));
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;text-align:right}}</style>\
         </head><body><h1>{title}</h1>\n"
    );
    h.push_str(&svg(r)?);
    h.push_str("\n<table><tr><th>chain</th><th>version</th><th>depth</th><th>file bytes</th><th>stored bytes</th><th>referenced bytes</th><th>compression</th><th>references</th></tr>\n");
    for (label, pts) in &r.series {
        for p in pts {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:?}</td></tr>",
                escape(label),
                p.version,
                p.depth,
                p.file_bytes,
                p.stored_bytes,
                p.referenced_bytes,
                p.compression_ratio,
                p.references
            );
        }
    }
    h.push_str("</table></body></html>\n");
    Ok(h)
}

/// Writes `text` to `path` (mode 0600 when created).
pub fn write(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}
