//! The stronger guard before a new plugin file is loaded into the platform: it is first loaded
//! and its manifest read in a short-lived child process (`mysimbdp plugin probe FILE`), so that
//! a library that crashes while it is mapped or while its initialisers run takes down that
//! child, not the platform, and its load fails with the reason. Only a file the child loaded
//! cleanly is then loaded in the platform's own process.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::loader::LoadedLibrary;
use super::status::{LoadFailureKind, LoadProblem};

/// How long a child may take to load a library before it is killed and the load refused.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The subcommand arguments that make the `mysimbdp` binary probe a file.
pub const PROBE_ARGS: [&str; 2] = ["plugin", "probe"];

/// What the child does: load `file` in this process and read its manifest. `Err` is the reason
/// it is not loadable (the child prints it and exits 1).
pub fn probe_here(file: &Path) -> Result<(), String> {
    let library = LoadedLibrary::load(file).map_err(|e| e.to_string())?;
    library
        .manifest()
        .map_err(|e| format!("its manifest() failed: {}", e.message))?;
    Ok(())
}

/// Loads `file` in a child running `binary plugin probe FILE`; `Err` says why the platform must
/// not load it.
pub fn probe_in_child(binary: &Path, file: &Path) -> Result<(), LoadProblem> {
    probe(binary, file).map_err(|(kind, message)| LoadProblem::new(kind, message))
}

fn probe(binary: &Path, file: &Path) -> Result<(), (LoadFailureKind, String)> {
    let unreadable = |message: String| (LoadFailureKind::Unreadable, message);
    let mut child = Command::new(binary)
        .args(PROBE_ARGS)
        .arg(file)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            unreadable(format!(
                "cannot start a process to check it ({}): {e}",
                binary.display()
            ))
        })?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < PROBE_TIMEOUT => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err((
                    LoadFailureKind::Crashed,
                    format!(
                        "loading it did not finish within {} s in a checking process",
                        PROBE_TIMEOUT.as_secs()
                    ),
                ));
            }
            Err(e) => return Err(unreadable(format!("cannot wait for the checking process: {e}"))),
        }
    };
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut output);
    }
    if status.success() {
        return Ok(());
    }
    if let Some(signal) = status.signal() {
        return Err((
            LoadFailureKind::Crashed,
            format!(
                "loading it crashed a checking process ({}): the platform does not load it",
                signal_name(signal)
            ),
        ));
    }
    let reason = output.trim();
    Err((
        LoadFailureKind::NotLoadable,
        if reason.is_empty() {
            format!("the checking process refused it ({status})")
        } else {
            reason.to_string()
        },
    ))
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGBUS => "SIGBUS",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal}, {name}")
}
