//! Loss and learning-rate curves as a PNG (plotters). Text needs a font: common system fonts are tried,
//! and without one the curves are still drawn, unlabelled.

use std::path::Path;

use plotters::prelude::*;

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
pub fn loss_and_lr(path: &Path, history: &[serde_json::Value]) -> Result<()> {
    let series = |key: &str| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
            .collect()
    };
    let (loss, eval, lr) = (series("loss"), series("eval_loss"), series("lr"));
    if loss.is_empty() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp.png");
    draw(&tmp, &loss, &eval, &lr)
        .map_err(|e| Error::Other(format!("{}: plotting failed: {e}", path.display())))?;
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
