//! Loss and learning-rate curves as a PNG (plotters). Text needs a font: common system fonts are tried,
//! and without one the curves are still drawn, unlabelled.

use std::path::Path;

use plotters::prelude::*;

use crate::engine::StepLog;
use crate::{Error, Result};

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];

fn font_available() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Two panels: loss (and eval loss, when present) over steps; learning rate over steps.
pub fn loss_and_lr(path: &Path, history: &[StepLog]) -> Result<()> {
    let series = |f: &dyn Fn(&StepLog) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|r| Some((r.step as f64, f(r)?)))
            .collect()
    };
    let loss = series(&|r| Some(r.loss));
    let eval = series(&|r| r.metrics.get("eval_loss").copied());
    let lr = series(&|r| Some(r.lr));
    if loss.is_empty() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp.png");
    draw(&tmp, &loss, &eval, &lr).map_err(|e| Error::Plot(path.to_path_buf(), e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::Io(path.to_path_buf(), e))
}

/// A curve: points, colour, legend label.
type Line<'a> = (&'a [(f64, f64)], RGBColor, &'a str);

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(path: &Path, loss: &[(f64, f64)], eval: &[(f64, f64)], lr: &[(f64, f64)]) -> DrawResult {
    let labels = font_available();
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let x_max = loss.iter().map(|p| p.0).fold(1.0, f64::max);
    let panel = |area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
                 title: &str,
                 lines: &[Line]|
     -> DrawResult {
        let ys = lines.iter().flat_map(|l| l.0.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        let pad = ((hi - lo) * 0.05).max(1e-12);
        let mut b = ChartBuilder::on(area);
        b.margin(12);
        if labels {
            b.caption(title, ("sans-serif", 20))
                .x_label_area_size(30)
                .y_label_area_size(60);
        }
        let mut chart = b.build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad))?;
        if labels {
            chart.configure_mesh().x_desc("step").draw()?;
        }
        for (pts, color, name) in lines {
            let s =
                chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?;
            if labels {
                s.label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], *color));
            }
        }
        if labels && lines.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    };
    let mut loss_lines: Vec<Line> = vec![(loss, BLUE, "train loss")];
    if !eval.is_empty() {
        loss_lines.push((eval, RED, "eval loss"));
    }
    panel(&top, "loss", &loss_lines)?;
    panel(&bottom, "learning rate", &[(lr, GREEN, "lr")])?;
    root.present()?;
    Ok(())
}

/// Horizontal bars of refusal rate per category, grouped by set (one colour per set).
pub fn refusal_bars(path: &Path, groups: &[(String, Vec<(String, f64)>)]) -> Result<()> {
    let bars: Vec<(usize, String, f64)> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, (set, cats))| {
            cats.iter()
                .map(move |(c, v)| (g, format!("{set}: {c}"), *v))
        })
        .collect();
    if bars.is_empty() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp.png");
    draw_bars(&tmp, &bars).map_err(|e| Error::Plot(path.to_path_buf(), e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::Io(path.to_path_buf(), e))
}

fn draw_bars(path: &Path, bars: &[(usize, String, f64)]) -> DrawResult {
    let labels = font_available();
    let height = (70 + 24 * bars.len()) as u32;
    let root = BitMapBackend::new(path, (1000, height.max(200))).into_drawing_area();
    root.fill(&WHITE)?;
    let mut b = ChartBuilder::on(&root);
    b.margin(12);
    if labels {
        b.caption("refusal rate by category", ("sans-serif", 20))
            .x_label_area_size(30);
    }
    // Category names sit left of x = 0 inside the plot, so long names need no label area.
    let left = -0.75;
    let n = bars.len();
    let mut chart = b.build_cartesian_2d(left..1.08f64, 0.0..n as f64)?;
    if labels {
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_label_formatter(&|x| {
                if *x < 0.0 {
                    String::new()
                } else {
                    format!("{:.0}%", x * 100.0)
                }
            })
            .x_desc("refusal rate")
            .draw()?;
    }
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    chart.draw_series(bars.iter().enumerate().map(|(i, (g, _, v))| {
        let y = (n - 1 - i) as f64;
        Rectangle::new(
            [(0.0, y + 0.15), (*v, y + 0.85)],
            colors[g % colors.len()].filled(),
        )
    }))?;
    if labels {
        let font = ("sans-serif", 13).into_font();
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, name, _))| {
            let y = (n - 1 - i) as f64 + 0.75;
            let short: String = name.chars().take(60).collect();
            Text::new(short, (left + 0.01, y), font.clone())
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, _, v))| {
            let y = (n - 1 - i) as f64 + 0.75;
            Text::new(format!("{:.0}%", v * 100.0), (v + 0.01, y), font.clone())
        }))?;
    }
    root.present()?;
    Ok(())
}

/// Trials as points (x, y), the Pareto front joined by a line, the chosen trial ringed.
pub fn pareto(
    path: &Path,
    points: &[(f64, f64)],
    front: &[usize],
    chosen: usize,
    axes: (&str, &str),
) -> Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp.png");
    draw_pareto(&tmp, points, front, chosen, axes)
        .map_err(|e| Error::Plot(path.to_path_buf(), e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::Io(path.to_path_buf(), e))
}

fn draw_pareto(
    path: &Path,
    points: &[(f64, f64)],
    front: &[usize],
    chosen: usize,
    axes: (&str, &str),
) -> DrawResult {
    let labels = font_available();
    let root = BitMapBackend::new(path, (800, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = points.iter().map(|p| p.0).fold(1e-3, f64::max) * 1.1;
    let ymax = points.iter().map(|p| p.1).fold(1e-3, f64::max) * 1.1;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if labels {
        b.caption("trials and Pareto front", ("sans-serif", 20))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = b.build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    if labels {
        chart
            .configure_mesh()
            .x_desc(axes.0)
            .y_desc(axes.1)
            .draw()?;
    }
    chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
    let mut f: Vec<(f64, f64)> = front.iter().map(|&i| points[i]).collect();
    f.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart.draw_series(LineSeries::new(f, RED.stroke_width(2)))?;
    if let Some(p) = points.get(chosen) {
        chart.draw_series(std::iter::once(Circle::new(*p, 9, GREEN.stroke_width(3))))?;
    }
    root.present()?;
    Ok(())
}

/// Two bars per variant: violation rate (red) and false refusal rate (blue).
pub fn showcase_bars(path: &Path, rows: &[(String, f64, f64)]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp.png");
    draw_showcase(&tmp, rows).map_err(|e| Error::Plot(path.to_path_buf(), e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::Io(path.to_path_buf(), e))
}

fn draw_showcase(path: &Path, rows: &[(String, f64, f64)]) -> DrawResult {
    let labels = font_available();
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = rows.len();
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if labels {
        b.caption(
            "violation rate (red) and false refusal rate on JBB benign (blue)",
            ("sans-serif", 18),
        )
        .x_label_area_size(40)
        .y_label_area_size(50);
    }
    let mut chart = b.build_cartesian_2d(0.0..n as f64, 0.0..1.05f64)?;
    if labels {
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .draw()?;
    }
    chart.draw_series(rows.iter().enumerate().flat_map(|(i, r)| {
        let x = i as f64;
        [
            Rectangle::new([(x + 0.1, 0.0), (x + 0.48, r.1)], RED.filled()),
            Rectangle::new([(x + 0.52, 0.0), (x + 0.9, r.2)], BLUE.filled()),
        ]
    }))?;
    root.present()?;
    Ok(())
}
