//! `mysimbdp-datagen`: writes the example tenants' data to a file or stdout.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use datagen::{Shape, Spec};

/// Generate deterministic data shaped like the example tenants' (see the datagen crate docs).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// client1-csv, client1-json-array, client1-jsonl, client2-txt or client2-jsonl.
    #[arg(long, value_parser = parse_shape)]
    shape: Shape,
    /// Number of rows (well-formed and malformed).
    #[arg(long, conflicts_with = "bytes", required_unless_present = "bytes")]
    rows: Option<u64>,
    /// Approximate size: 500K, 100M, 2G (rows are never cut).
    #[arg(long, value_parser = parse_size)]
    bytes: Option<u64>,
    /// Make every k-th row malformed.
    #[arg(long)]
    malformed_every: Option<u64>,
    /// Seed of the pseudo-random sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file (default: stdout).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    Shape::ALL
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, shape)| *shape)
        .ok_or_else(|| {
            let names: Vec<_> = Shape::ALL.iter().map(|(n, _)| *n).collect();
            format!("unknown shape {s:?}; one of {}", names.join(", "))
        })
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = s
        .trim()
        .split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size like 100M"))?;
    let factor = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    Ok(n * factor)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = Spec {
        shape: args.shape,
        seed: args.seed,
        rows: args.rows,
        bytes: args.bytes,
        malformed_every: args.malformed_every,
    };
    let stats = match &args.output {
        Some(path) => {
            let mut out = BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
            let stats = spec.write_to(&mut out)?;
            out.flush()?;
            stats
        }
        None => spec.write_to(&mut io::stdout().lock())?,
    };
    eprintln!(
        "rows={} malformed={} bytes={}",
        stats.rows, stats.malformed, stats.bytes
    );
    Ok(())
}
