//! `burnish export`: merge an adapter into its base and write a HF directory and/or a GGUF file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burnish_core::adapter::load_adapter;
use burnish_core::backend::DeviceSpec;
use burnish_core::burn::tensor::backend::Backend;
use burnish_core::export::{export_gguf, export_hf, Dtype, ExportSource, GgufQuant};
use burnish_core::io::Existing;
use burnish_core::weights::gguf::GgufFile;
use burnish_core::{ModelPath, Pretrained};
use clap::Args;

#[derive(Args)]
pub struct ExportArgs {
    /// Base model: HF directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// PEFT/burnish LoRA adapter directory to merge in.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Write a merged HF model directory here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// dtype of the HF checkpoint.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Write a GGUF file here.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Tensor type of the GGUF file: f32, f16 or q8_0.
    #[arg(long, default_value = "f32")]
    quant: GgufQuant,
    /// Replace an existing --out directory (whole: no stale shards stay) or --gguf file.
    #[arg(long)]
    overwrite: bool,
    /// Where the adapter is merged: cpu, wgpu, wgpu:N, cuda or cuda:N (GPUs need the cargo feature).
    #[arg(long, default_value = "cpu")]
    backend: DeviceSpec,
}

pub fn export(a: ExportArgs) -> Result<()> {
    if a.out.is_none() && a.gguf.is_none() {
        bail!("nothing to write: give --out DIR and/or --gguf FILE");
    }
    let existing = existing(&a);
    // Refuse before the (slow) load and merge, not after.
    for p in a.out.iter().chain(&a.gguf) {
        existing.check(p)?;
    }
    super::on_backend!(a.backend, export_on(a: ExportArgs))
}

fn existing(a: &ExportArgs) -> Existing {
    if a.overwrite {
        Existing::Replace
    } else {
        Existing::Refuse
    }
}

fn export_on<B: Backend>(a: ExportArgs, device: &B::Device) -> Result<()> {
    let existing = existing(&a);
    let mut p = Pretrained::<B>::load(&a.model, device)?;
    if let Some(dir) = &a.adapter {
        let cfg = load_adapter(&mut p.model, dir, device)?;
        eprintln!(
            "merging adapter {} (r={}, alpha={})",
            dir.display(),
            cfg.r,
            cfg.lora_alpha
        );
        p.model.drop_adapters(true);
    }
    let gguf_src = match &p.path {
        ModelPath::Gguf(f) => Some(GgufFile::open(f)?),
        ModelPath::HfDir(_) => None,
    };
    let src = ExportSource {
        config: &p.config,
        tokenizer: &p.tokenizer,
        template: p.template.as_ref(),
        source_gguf: gguf_src.as_ref(),
    };
    if let Some(dir) = &a.out {
        export_hf(&p.model, &src, dir, a.dtype, existing)?;
        eprintln!("wrote {}", dir.display());
    }
    if let Some(file) = &a.gguf {
        export_gguf(&p.model, &src, file, a.quant, existing)?;
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}
