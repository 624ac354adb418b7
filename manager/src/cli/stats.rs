//! `mysimbdp stats`: a tenant's or the platform's statistics from a running platform.

use anyhow::bail;

use super::http;

/// Arguments of `stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// One tenant (with its token); without it, every tenant (with the admin token).
    #[arg(long)]
    pub tenant: Option<String>,
    /// The tenant's API token (with --tenant).
    #[arg(long, env = "MYSIMBDP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The admin token (without --tenant).
    #[arg(long, env = "MYSIMBDP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The platform's address.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "MYSIMBDP_URL")]
    pub url: String,
    /// Print the JSON as the API returns it.
    #[arg(long)]
    pub json: bool,
}

/// Runs `stats`.
pub async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/');
    let (url, token) = match &args.tenant {
        Some(tenant) => (format!("{base}/v1/tenants/{tenant}/stats"), args.token.as_deref()),
        None => (format!("{base}/v1/stats"), args.admin_token.as_deref()),
    };
    let (status, body) = http::get_json(&url, token).await?;
    if !status.is_success() {
        bail!(
            "{} {}",
            status.as_u16(),
            body.get("error").and_then(|e| e.as_str()).unwrap_or(&body.to_string())
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    println!(
        "{:<12} {:>8} {:>7} {:>9} {:>14} {:>11} {:>11} {:>8} {:>8} {:>10} {:>8} {:>8}",
        "tenant",
        "files ok",
        "failed",
        "in flight",
        "rows ingested",
        "rows failed",
        "MB ingested",
        "p50 s",
        "p95 s",
        "rows/s",
        "MB/s",
        "cpu s"
    );
    match &args.tenant {
        Some(tenant) => print_row(tenant, &body),
        None => {
            if let Some(tenants) = body["tenants"].as_object() {
                for (tenant, stats) in tenants {
                    print_row(tenant, stats);
                }
            }
            print_row("(platform)", &body["platform"]);
        }
    }
    Ok(())
}

fn print_row(name: &str, s: &serde_json::Value) {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    println!(
        "{:<12} {:>8} {:>7} {:>9} {:>14} {:>11} {:>11.1} {:>8.3} {:>8.3} {:>10.0} {:>8.1} {:>8.2}",
        name,
        n("files_ok"),
        n("files_failed"),
        n("files_in_flight"),
        n("rows_ingested"),
        n("rows_failed"),
        n("bytes_ingested") as f64 / 1e6,
        f("ingest_time_p50"),
        f("ingest_time_p95"),
        f("rows_per_second"),
        f("bytes_per_second") / 1e6,
        f("plugin_cpu_seconds")
    );
}
