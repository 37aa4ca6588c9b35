//! The benchmark harness: a mock OpenAI-compatible model, a load driver (closed and open loop, HDR
//! percentiles), dynalite and a counting proxy for DynamoDB, RSS and CPU sampling from /proc, and the
//! Node.js baseline. `agent-bench run` prints the figures of BENCHMARKS.md; `agent-bench smoke` is the
//! few-second version the tests run.
//!
//! Modules: `mock_model` (the model), `load` (closed and open loop, histograms), `processes` (the
//! server, dynalite, /proc sampling), `proxy` (the counting DynamoDB proxy), `figures` (the reports of
//! `run`, `growth` and `streams`), `smoke`.

mod figures;
mod load;
mod mock_model;
mod processes;
mod protocols;
mod proxy;
mod smoke;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use figures::Report;
use mock_model::{MockModel, start_mock};

#[derive(Parser)]
#[command(name = "agent-bench", about = "Benchmarks agent-server against its targets")]
struct Cli {
    /// Pin the server to core 0 and this harness (with the mock model and the emulator it starts)
    /// to core 1, with `taskset`, so that neither takes the other's CPU.
    #[arg(long, global = true)]
    pin: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every figure of BENCHMARKS.md (a few minutes), as a markdown table and JSON.
    Run {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Where dynalite and the baseline are installed (npm install in bench/).
        #[arg(long, default_value = "bench")]
        bench_dir: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A few seconds on SQLite, to keep the harness working (run by the tests).
    Smoke {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only figure 6 (growth with the session's size and with other tenants' data).
    Growth {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only figures 3 and 4: idle memory and 1,000 concurrent streams.
    Streams {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only figure 9: the cost of context summaries.
    Summaries {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only figures 12 and 13: what streamed turns and webhooks cost.
    Features {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Only figure 14: instructions per turn under callgrind (valgrind).
    Instructions {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only figure 15: RSS through a minute of sustained JSON turns, SQLite and DynamoDB.
    Memory {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
        #[arg(long, default_value = "bench")]
        bench_dir: PathBuf,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Only figure 10: search over a million messages.
    Search {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only figure 18: what counting usage costs a turn (instructions, DynamoDB requests).
    Usage {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
        #[arg(long, default_value = "bench")]
        bench_dir: PathBuf,
    },
    /// Only figures 19 and 20: an OpenAI Responses turn against a native one (instructions), and
    /// a WhatsApp message's path to its reply.
    Protocols {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only figure 17: a burst of three messages under each concurrency policy.
    Burst {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only the mock model, on a port.
    MockModel {
        #[arg(long, default_value_t = 8090)]
        port: u16,
        #[arg(long, default_value_t = 0)]
        ttft_ms: u64,
        #[arg(long, default_value_t = 0)]
        token_ms: u64,
        #[arg(long, default_value_t = 20)]
        tokens: usize,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if cli.pin {
        // This process (and what it starts: the mock, dynalite, the baseline) on core 1; the server
        // on core 0 (`processes::start_server` reads `SERVER_CORE`).
        let pid = std::process::id().to_string();
        let pinned = std::process::Command::new("taskset").args(["-a", "-cp", "1", &pid]).output();
        assert!(pinned.is_ok_and(|o| o.status.success()), "taskset could not pin the harness to core 1");
        let _ = processes::SERVER_CORE.set(0);
        println!("(pinned: the server on core 0, the harness, mock and emulator on core 1)");
    }
    match cli.command {
        Cmd::Run { server, seconds, bench_dir, out } => figures::run(server, seconds, bench_dir, out).await,
        Cmd::Smoke { server } => smoke::smoke(server).await,
        Cmd::Summaries { server } => {
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            figures::summaries(&server, &mut report).await;
        }
        Cmd::Features { server, seconds } => {
            let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            figures::features(&server, mock, seconds, &mut report).await;
        }
        Cmd::Instructions { server } => {
            let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            figures::instructions(&server, mock, &mut report).await;
        }
        Cmd::Search { server } => {
            let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            figures::search(&server, mock, &mut report).await;
        }
        Cmd::Memory { server, bench_dir, seconds } => {
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            figures::memory(&server, &bench_dir, seconds, &mut report).await;
        }
        Cmd::Usage { server, bench_dir } => {
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            figures::usage_cost(&server, &bench_dir, &mut report).await;
        }
        Cmd::Protocols { server } => {
            let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            protocols::openai_against_native(&server, mock, &mut report).await;
            protocols::channel_path(&server, mock, &mut report).await;
        }
        Cmd::Burst { server } => {
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            figures::burst(&server, &mut report).await;
        }
        Cmd::Streams { server } => {
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            figures::streams(&server, &mut report).await;
        }
        Cmd::Growth { server } => {
            let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            figures::growth(&server, mock, &mut report).await;
            figures::growth_tenants(&server, mock, &mut report).await;
        }
        Cmd::MockModel { port, ttft_ms, token_ms, tokens } => {
            let addr = start_mock(
                MockModel { ttft: Duration::from_millis(ttft_ms), per_token: Duration::from_millis(token_ms), tokens },
                port,
            )
            .await;
            println!("mock model on http://{addr}/v1");
            std::future::pending::<()>().await;
        }
    }
}
