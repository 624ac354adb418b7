//! Bounded fuzzing of the inputs an outsider controls: the configuration parsers (an operator's
//! careless edit) and the upload path (a hostile client's request), with inputs mutated from
//! valid ones. The budget is `MYSIMBDP_FUZZ_SECONDS` per target (3 s by default; the README's
//! test command gives each 30 s). A panic, a hang or a dead platform fails the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mysimbdp::config::PlatformConfig;
use mysimbdp::tenants::Tenants;
use mysimbdp_tests::platform::{Backend, Platform, TenantSpec, customer_information};

fn budget() -> Duration {
    let seconds = std::env::var("MYSIMBDP_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(seconds)
}

/// A small deterministic generator (xorshift64*), seeded per target so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that break parsers: structure, quotes, escapes, multi-byte characters, control bytes.
const NASTY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b":",
    b",",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff",
    b"\xc3",
    "é".as_bytes(),
    "€".as_bytes(),
    "𝄞".as_bytes(),
    b"\\u0000",
    b"\\ud800",
    b"-",
    b"1e999",
    b"18446744073709551616",
    b"null",
    b"true",
    b"--",
    b"=",
    b"\r\n\r\n",
    b"Content-Disposition: form-data; name=\"file\"; filename=\"x.csv\"",
];

/// `input` with a few random edits.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let at = at.min(out.len() - 1);
                out[at] = rng.next() as u8;
            }
            1 => {
                let nasty = NASTY[rng.below(NASTY.len())];
                out.splice(at..at, nasty.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => {
                let from = rng.below(out.len().max(1));
                let end = (from + rng.below(200)).min(out.len());
                let copy: Vec<u8> = out[from..end].to_vec();
                out.splice(at..at, copy);
            }
            4 => out.truncate(at),
            _ => {
                let noise: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                out.splice(at..at, noise);
            }
        }
    }
    out
}

#[test]
fn the_configuration_parsers_refuse_mutated_files_without_panicking() {
    let tenants = customer_information(&[
        TenantSpec::new("client1", &["csv", "json"]),
        TenantSpec::new("client2", &["txt"]),
    ]);
    let settings = "data_dir = \"d\"\n[server]\nlisten = \"127.0.0.1:8080\"\nmax_connections = 10\n[coredms]\nbackend = \"cassandra\"\n[coredms.cassandra]\ncontact_points = [\"a:1\"]\n[queue]\nbackend = \"kafka\"\n[batch]\nworkers = 2\n";
    let mut rng = Rng(0x5eed_0001);
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget() {
        let text = mutate(&mut rng, tenants.as_bytes());
        let text = String::from_utf8_lossy(&text);
        let outcome = std::panic::catch_unwind(|| Tenants::parse(&text, "customer_information.json").map(|_| ()));
        let refusal = outcome.unwrap_or_else(|_| panic!("Tenants::parse panicked on:\n{text}"));
        if let Err(e) = refusal {
            assert!(
                e.to_string().starts_with("customer_information.json:"),
                "a refusal names the file and line: {e}"
            );
        }
        let text = mutate(&mut rng, settings.as_bytes());
        let text = String::from_utf8_lossy(&text);
        let outcome = std::panic::catch_unwind(|| PlatformConfig::parse(&text, "mysimbdp.toml").map(|_| ()));
        let refusal = outcome.unwrap_or_else(|_| panic!("PlatformConfig::parse panicked on:\n{text}"));
        if let Err(e) = refusal {
            assert!(
                e.to_string().starts_with("mysimbdp.toml:"),
                "a refusal names the file: {e}"
            );
        }
        runs += 1;
    }
    eprintln!("{runs} mutated configurations of each kind");
    assert!(runs > 100);
}

/// Sends `request` raw and reads the answer (or the close) within 10 s; returns the status line.
fn exchange(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).expect("the platform accepts connections");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let started = Instant::now();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no answer and no close within 10 s"
    );
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_upload_path_answers_mutated_requests_without_panicking() {
    let mut client1 = TenantSpec::new("client1", &["csv"]);
    client1.max_files = 1000;
    client1.max_file_size = 1 << 20;
    let platform = Platform::start(Backend::Embedded, std::slice::from_ref(&client1), "");
    let address = platform.address();
    let boundary = "fuzzboundary";
    let multipart_body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"r.csv\"\r\nContent-Type: text/csv\r\n\r\ntime,readable_time\r\n1,2\r\n--{boundary}--\r\n"
    );
    let multipart = format!(
        "POST /v1/tenants/client1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client1-token\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{multipart_body}",
        multipart_body.len()
    );
    let raw_body = "time,readable_time,acceleration\n1,2,3\n";
    let raw = format!(
        "POST /v1/tenants/client1/files?name=r.csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client1-token\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{raw_body}\r\n0\r\n\r\n",
        raw_body.len()
    );
    let mut rng = Rng(0x5eed_0002);
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    while started.elapsed() < budget() {
        let seed = if rng.below(2) == 0 { &multipart } else { &raw };
        let request = mutate(&mut rng, seed.as_bytes());
        let status = exchange(&address, &request);
        let code = status.split_whitespace().nth(1).unwrap_or("closed").to_string();
        assert!(
            code == "closed" || code.starts_with('2') || code.starts_with('4'),
            "a mutated request got {status:?}:\n{}",
            String::from_utf8_lossy(&request)
        );
        *statuses.entry(code).or_default() += 1;
    }
    eprintln!("answers to mutated uploads: {statuses:?}");
    assert_eq!(platform.get("/healthz", "").0, 200, "the platform lives");
    let log = platform.log();
    assert!(!log.contains("panicked"), "{}", platform.tail_log());
    assert!(
        mysimbdp_tests::wait_until(Duration::from_secs(10), || platform.incoming_files().is_empty()),
        "no partial upload is left behind"
    );
}
