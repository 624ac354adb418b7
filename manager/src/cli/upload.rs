//! `mysimbdp upload`: sends a file with a progress bar, and can wait for its report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::http;

/// Arguments of `upload`.
#[derive(clap::Args)]
pub struct UploadArgs {
    /// The file to send.
    pub file: PathBuf,
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The tenant's API token.
    #[arg(long, env = "MYSIMBDP_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The platform's address.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "MYSIMBDP_URL")]
    pub url: String,
    /// The name to give the file (default: its own); its extension is its type.
    #[arg(long)]
    pub name: Option<String>,
    /// Wait until the file is ingested and print its report.
    #[arg(long)]
    pub wait: bool,
}

/// Runs `upload`.
pub async fn run(args: UploadArgs) -> anyhow::Result<()> {
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .context("the file has no usable name; give --name")?
            .to_string(),
    };
    let base = args.url.trim_end_matches('/');
    let url = format!("{base}/v1/tenants/{}/files?name={}", args.tenant, encode(&name));
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(name.clone());
    let ticker = bar.clone();
    let (status, body) = http::post_file(&url, Some(&args.token), &args.file, move |n| ticker.inc(n)).await?;
    bar.finish_and_clear();
    if !status.is_success() {
        bail!(
            "upload refused ({}): {}",
            status.as_u16(),
            body.get("error").and_then(|e| e.as_str()).unwrap_or(&body.to_string())
        );
    }
    let file_id = body["file_id"].as_str().unwrap_or_default().to_string();
    println!(
        "uploaded {name} ({size} bytes) as file {file_id} of tenant {}",
        args.tenant
    );
    if !args.wait {
        println!("status: {base}/v1/tenants/{}/files/{file_id}", args.tenant);
        return Ok(());
    }
    let status_url = format!("{base}/v1/tenants/{}/files/{file_id}", args.tenant);
    loop {
        let (code, body) = http::get_json(&status_url, Some(&args.token)).await?;
        let state = body["status"].as_str().unwrap_or("unknown").to_string();
        if !code.is_success() || state == "done" || state == "failed" {
            println!("{}", serde_json::to_string_pretty(&body["report"])?);
            if state != "done" {
                bail!("file {file_id} ended as {state}");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
