//! `mysimbdp`: runs the platform (`serve`) and the tools around it.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mysimbdp::config::PlatformConfig;
use mysimbdp::platform::{ServeOptions, default_config_path, serve};
use mysimbdp::tenants::{TenantId, TokenDigest};

/// mysimbdp: a multi-tenant big-data ingestion platform.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform in a folder (customer_information.json, plugins/, staging, reports).
    Serve(ServeArgs),
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Send a file to a running platform, with a progress bar.
    Upload(cli::upload::UploadArgs),
    /// Show a tenant's or the platform's statistics.
    Stats(cli::stats::StatsArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The platform's folder.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Settings file (default: mysimbdp.toml in the folder, if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP address (overrides the settings; default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The admin token (for /v1/stats and /v1/plugins).
    #[arg(long, env = "MYSIMBDP_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a plugin file in this process and read its manifest; exit 1 with the reason if it
    /// does not load (the platform runs this in a child process before it loads a new file).
    #[command(hide = true)]
    Probe {
        /// The `.so` file.
        file: PathBuf,
    },
    /// Print a plugin file's manifest and tables, and whether this platform loads it.
    Check {
        /// The `.so` file.
        file: PathBuf,
        /// Check it as the file it will be deployed as (`libclientbatchingestapp_<tenant>_<type>.so`
        /// or `libclientstreamingestapp_<tenant>.so`), e.g. a build under cargo's name.
        #[arg(long = "as", value_name = "NAME")]
        deployed_as: Option<String>,
        /// A platform's folder: also check the plugin against its configuration and storage
        /// (which tables loading it there would create or change, or why it would be refused).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Run the plugin on this sample without a platform (a file for a batch plugin, NDJSON
        /// messages for a stream plugin) and print its first rows, its rejects with their
        /// reasons and a summary; exit 1 if it fails on the sample as a whole.
        #[arg(long, value_name = "INPUT")]
        sample: Option<PathBuf>,
    },
    /// Write a new plugin crate that builds, passes its own test and `plugin check --sample`.
    New {
        /// The tenant.
        tenant: String,
        /// A file type (`csv`, `json`...) for a batch plugin, or `stream`.
        kind: String,
        /// Where to write it (default: a folder named as the crate, here).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Make a new API token for a tenant and print the line to paste into
    /// customer_information.json (only its SHA-256 is stored there).
    Token {
        /// The tenant.
        tenant: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Command::Serve(args) => run_async(run_serve(args)),
        Command::Plugin(PluginCommand::Probe { file }) => {
            return match mysimbdp::plugin_host::preflight::probe_here(&file) {
                Ok(()) => ExitCode::SUCCESS,
                Err(reason) => {
                    println!("{reason}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Plugin(PluginCommand::Check {
            file,
            deployed_as,
            root,
            sample,
        }) => match cli::plugin::run(&file, deployed_as.as_deref(), root.as_deref()) {
            Ok(report) => {
                print!("{report}");
                let sample = match (&sample, &report.manifest, &report.verdict) {
                    (Some(sample), Some(manifest), Ok(())) => {
                        let outcome = mysimbdp::plugin_host::sample::run_sample(&file, manifest, sample);
                        print!("{outcome}");
                        outcome.result
                    }
                    _ => Ok(()),
                };
                return if report.verdict.is_ok() && sample.is_ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                };
            }
            Err(e) => Err(e),
        },
        Command::Plugin(PluginCommand::New { tenant, kind, dir }) => {
            cli::new_plugin::run(&tenant, &kind, dir.as_deref())
        }
        Command::Upload(args) => run_async(cli::upload::run(args)),
        Command::Stats(args) => run_async(cli::stats::run(args)),
        Command::Tenant(TenantCommand::Token { tenant }) => tenant_token(&tenant),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(future);
    // Dropping a runtime waits for every blocking task; one stuck in a driver or a file system
    // call must not keep a stopping platform alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let (path, required) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (default_config_path(&args.root), false),
    };
    let mut config = PlatformConfig::load(&path, required)?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    let options = ServeOptions {
        root: args.root,
        config,
        admin_token: args.admin_token,
        probe_binary: Some(std::env::current_exe().context("finding the mysimbdp binary")?),
    };
    serve(options, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn tenant_token(tenant: &str) -> anyhow::Result<()> {
    let tenant: TenantId = tenant.parse().map_err(anyhow::Error::msg)?;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("mysimbdp_{token}");
    println!("token for tenant {tenant} (give it to the tenant; the platform stores only its hash):");
    println!("  {token}");
    println!("paste this line into {tenant}'s entry in customer_information.json:");
    println!("  \"api_token_sha256\": \"{}\",", TokenDigest::of(&token).to_hex());
    Ok(())
}
