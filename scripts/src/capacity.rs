//! `capacity`: pinned measurements of one data-plane core. Starts the
//! server itself (control and its one data-plane core on CPU 0), pins the
//! load generator ([`crate::blaster::capacity`]) to another CPU and the
//! plain relay baseline to CPU 0, and runs:
//!
//! - `capacity compare`: saturation at fan-out 1 and 4, server egress
//!   against the relay's;
//! - `capacity search`: the most realistic clients one core carries.
//!
//! See BENCHMARKS.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::blaster::capacity::{self, Bench, Joiner, Limits, Profile};
use crate::blaster::host::{cpus, pin_to};
use crate::blaster::ServerTarget;
use crate::local_server::LocalServer;
use crate::Mode;

/// Pinned capacity measurements of one data-plane core.
#[derive(Debug, Clone, Parser)]
#[command(name = "capacity", version)]
pub struct Args {
    /// The `control` binary to start.
    #[arg(long, default_value = "target/release/control", global = true)]
    pub control: PathBuf,
    /// The CPU of the load generator (and of control's own threads); the
    /// data plane's core and the relay run on CPU 0.
    #[arg(long, default_value_t = 1, global = true)]
    pub generator_cpu: usize,
    /// Encryption mode the clients select.
    #[arg(long, default_value = "aead_aes256_gcm_rtpsize", global = true)]
    pub mode: Mode,
    /// Datagram size on the wire, bytes (Opus at 64 kb/s: about 160).
    #[arg(long, default_value_t = 160, global = true)]
    pub packet_size: usize,
    /// Open and check one received datagram in this many.
    #[arg(long, default_value_t = 64, global = true)]
    pub verify_every: u64,
    /// The data plane's packet I/O path (control's `--packet-io`). Several
    /// (comma-separated) make `compare` start one server per path and
    /// measure each beside the same relay phases; `search` takes one.
    #[arg(long, value_delimiter = ',', default_value = "mmsg", global = true)]
    pub packet_io: Vec<String>,
    /// Lower control's priority (nice 10) below the data plane's on the
    /// shared CPU.
    #[arg(long, global = true)]
    pub renice_control: bool,
    /// The measurement.
    #[command(subcommand)]
    pub what: What,
}

/// The measurement.
#[derive(Debug, Clone, Subcommand)]
pub enum What {
    /// Saturate the server and then the relay at each fan-out.
    Compare {
        /// Fan-outs (receivers per packet).
        #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
        fanouts: Vec<usize>,
        /// Rooms (one talker each) per fan-out.
        #[arg(long, default_value_t = 50)]
        rooms: usize,
        /// Sending window per phase, seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Phases per target and fan-out, alternating (the median ratio
        /// is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Draw SVG charts from saved `compare` and `search` output.
    Plot {
        /// A `capacity compare` JSON document.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// `capacity search` JSON documents (one chart pair each).
        #[arg(long)]
        search: Vec<PathBuf>,
        /// Where the SVG files go.
        #[arg(long, default_value = "docs/benchmarks")]
        out_dir: PathBuf,
    },
    /// Add clients until loss or latency passes its limit.
    Search {
        /// Members per room.
        #[arg(long, default_value_t = 5)]
        room_size: usize,
        /// Talkers per room.
        #[arg(long, default_value_t = 1)]
        talkers: usize,
        /// Packets per second per talker.
        #[arg(long, default_value_t = 50)]
        pps: u32,
        /// Clients of the first step.
        #[arg(long, default_value_t = 500)]
        start: usize,
        /// Each step multiplies the clients by this.
        #[arg(long, default_value_t = 1.25)]
        growth: f64,
        /// Never more clients than this.
        #[arg(long, default_value_t = 20_000)]
        max_clients: usize,
        /// Loss limit, percent.
        #[arg(long, default_value_t = 0.1)]
        max_loss_pct: f64,
        /// p99 latency limit, as a multiple of the relay's at the same load.
        #[arg(long, default_value_t = 1.2)]
        max_p99_ratio: f64,
        /// Sending window per phase, seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Start no step after this many seconds.
        #[arg(long, default_value_t = 900)]
        max_secs: u64,
        /// Phases per target and step, alternating (the median p99 counts).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

/// Runs the measurement `args` asks for and returns its JSON document
/// (the phases are printed on stderr as they end).
pub fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    if let What::Plot {
        compare,
        search,
        out_dir,
    } = &args.what
    {
        return plot(compare.as_deref(), search, out_dir);
    }
    anyhow::ensure!(
        cpus() >= 2 && args.generator_cpu != 0 && args.generator_cpu < cpus(),
        "needs two CPUs: the target on CPU 0 and --generator-cpu on another (this machine has {})",
        cpus()
    );
    // Every thread of this process (the runtime's too) on the generator's
    // CPU; control is started there as well. The data plane pins its core
    // to CPU 0 itself.
    pin_to(args.generator_cpu).context("pinning the generator")?;
    anyhow::ensure!(
        !args.packet_io.is_empty()
            && (args.packet_io.len() == 1 || matches!(args.what, What::Compare { .. })),
        "--packet-io: one path for search, one or more for compare"
    );
    // One server per packet I/O path, all on CPU 0 (only the one being
    // measured has traffic). As many connections as the open-file limit
    // (20,000 here) allows.
    let mut servers = Vec::with_capacity(args.packet_io.len());
    for packet_io in &args.packet_io {
        let server = LocalServer::start(
            &args.control,
            1,
            Some(&["taskset", "-c", "0"]),
            // Every client connects from 127.0.0.1: let the joins that run
            // at once all be pending handshakes from that one address.
            &[
                "--max-connections",
                "19000",
                "--max-pending-per-address",
                "64",
                "--max-pending-per-prefix",
                "64",
                "--packet-io",
                packet_io,
            ],
        )?;
        if args.renice_control {
            renice_threads(server.child.id(), 10);
        }
        let mut target = ServerTarget::new(&server.lvsp, &server.secret, &server.gateway);
        target.cert = server.cert.clone();
        target.mode = args.mode;
        servers.push((packet_io.clone(), server, target));
    }
    let bench = Bench {
        target_cpu: 0,
        mode: args.mode,
        packet_size: args.packet_size,
        verify_every: args.verify_every,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let json = runtime.block_on(async {
        let mut joiners = Vec::with_capacity(servers.len());
        for (name, _, target) in &servers {
            joiners.push((name.clone(), Joiner::connect(target.clone()).await?));
        }
        anyhow::Ok(match args.what.clone() {
            What::Plot { .. } => unreachable!("plotted above"),
            What::Compare {
                fanouts,
                rooms,
                duration,
                repeats,
            } => {
                let duration = Duration::from_secs_f64(duration.clamp(0.1, 600.0));
                let results = capacity::compare(&bench, &mut joiners, &fanouts, rooms, duration, repeats).await?;
                for c in &results {
                    for k in std::iter::once(&c.first).chain(&c.alternatives) {
                        eprintln!(
                            "fan-out {} ({}): server {:.0} pps, relay {:.0} pps, ratio {:.3} \
                             (per CPU second {:.3}; every pair {:.3?}){}",
                            c.fanout,
                            k.packet_io,
                            k.server.egress_pps,
                            k.relay.egress_pps,
                            k.ratio,
                            k.cpu_ratio,
                            k.ratios,
                            k.generator_bound
                                .as_deref()
                                .map(|why| format!(" (generator-bound: {why})"))
                                .unwrap_or_default()
                        );
                    }
                }
                serde_json::json!({ "compare": results, "mode": args.mode.name(), "packet_size": args.packet_size })
            }
            What::Search {
                room_size,
                talkers,
                pps,
                start,
                growth,
                max_clients,
                max_loss_pct,
                max_p99_ratio,
                duration,
                max_secs,
                repeats,
            } => {
                anyhow::ensure!(room_size >= 2 && (1..=room_size).contains(&talkers) && growth > 1.0);
                let profile = Profile { room_size, talkers, pps };
                let limits = Limits {
                    max_loss: max_loss_pct / 100.0,
                    max_p99_ratio,
                    start,
                    growth,
                    max_clients,
                    duration: Duration::from_secs_f64(duration.clamp(0.1, 600.0)),
                    max_time: Duration::from_secs(max_secs),
                    repeats,
                };
                let s = capacity::search(&bench, &mut joiners[0].1, profile, limits).await?;
                eprintln!("capacity: {} clients in rooms of {room_size} with {talkers} talker(s)", s.capacity);
                serde_json::json!({ "search": s, "mode": args.mode.name(), "packet_size": args.packet_size, "packet_io": args.packet_io[0] })
            }
        })
    })?;
    drop(servers);
    Ok(json)
}

fn renice_threads(pid: u32, nice: i32) {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let _ = std::process::Command::new("renice")
                .args(["-n", &nice.to_string(), "-p"])
                .arg(t.file_name())
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

const SERVER: &str = "#1f77b4";
const RELAY: &str = "#ff7f0e";
const ALTERNATIVE: &str = "#17becf";

/// Writes the charts of saved `compare` and `search` documents into
/// `out_dir`; returns the list of files written.
fn plot(
    compare: Option<&std::path::Path>,
    searches: &[PathBuf],
    out_dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    use crate::blaster::plot::{bars, lines, Group, Series};
    std::fs::create_dir_all(out_dir)?;
    let read = |p: &std::path::Path| -> anyhow::Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        // The document is the last line (stderr may have been merged in).
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("");
        serde_json::from_str(line).with_context(|| format!("parsing {}", p.display()))
    };
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let mut written = Vec::new();
    let mut write = |name: String, svg: String| -> anyhow::Result<()> {
        let path = out_dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        written.push(path.display().to_string());
        Ok(())
    };
    if let Some(path) = compare {
        let doc = read(path)?;
        let results = doc["compare"].as_array().context("no compare results")?;
        // The servers (by packet I/O path, where the document names it),
        // then the relay.
        let contenders = |c: &serde_json::Value| -> Vec<serde_json::Value> {
            std::iter::once(c.clone())
                .chain(c["alternatives"].as_array().cloned().unwrap_or_default())
                .collect()
        };
        let first = results.first().map(contenders).unwrap_or_default();
        let names: Vec<String> = first
            .iter()
            .map(|k| match k["packet_io"].as_str() {
                Some(io) if first.len() > 1 => format!("server ({io})"),
                _ => "server".to_string(),
            })
            .chain(["relay".to_string()])
            .collect();
        let colors = [SERVER, ALTERNATIVE, "#2ca02c", "#9467bd"];
        let legend: Vec<(&str, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let color = if i + 1 == names.len() {
                    RELAY
                } else {
                    colors[i % colors.len()]
                };
                (n.as_str(), color)
            })
            .collect();
        let groups: Vec<Group> = results
            .iter()
            .map(|c| Group {
                label: format!("fan-out {}", c["fanout"]),
                values: contenders(c)
                    .iter()
                    .map(|k| f(&k["server"]["egress_pps"]))
                    .chain([f(&c["relay"]["egress_pps"])])
                    .collect(),
            })
            .collect();
        let title = format!(
            "Saturated egress, one core ({}, {} B)",
            doc["mode"].as_str().unwrap_or("?"),
            doc["packet_size"]
        );
        write(
            "compare.svg".into(),
            bars(&title, "datagrams out per second", &legend, &groups),
        )?;
    }
    for path in searches {
        let doc = read(path)?;
        let s = &doc["search"];
        let profile = &s["profile"];
        let tag = format!("{}x{}", profile["room_size"], profile["talkers"]);
        let steps = s["steps"].as_array().context("no search steps")?;
        let series = |target: &str, field: &dyn Fn(&serde_json::Value) -> f64| -> Vec<(f64, f64)> {
            steps
                .iter()
                .map(|st| (f(&st[target]["clients"]), field(&st[target])))
                .collect()
        };
        // Latency only where the server carried the load (an overloaded
        // step's queueing delay, hundreds of milliseconds, would flatten
        // every other point).
        let carried =
            |target: &str, field: &dyn Fn(&serde_json::Value) -> f64| -> Vec<(f64, f64)> {
                steps
                    .iter()
                    .filter(|st| f(&st["server"]["loss"]) < 0.001)
                    .map(|st| (f(&st[target]["clients"]), field(&st[target])))
                    .collect()
            };
        let room = format!(
            "rooms of {} with {} talker(s) at {} pps",
            profile["room_size"], profile["talkers"], profile["pps"]
        );
        let offered = |p: &serde_json::Value| f(&p["egress_pps"]) / (1.0 - f(&p["loss"])).max(1e-9);
        write(
            format!("search-{tag}-throughput.svg"),
            lines(
                &format!("Throughput, {room}"),
                "concurrent clients",
                "datagrams out per second",
                &[
                    Series {
                        name: "offered".into(),
                        color: "#999999",
                        points: series("server", &offered),
                    },
                    Series {
                        name: "server".into(),
                        color: SERVER,
                        points: series("server", &|p| f(&p["egress_pps"])),
                    },
                    Series {
                        name: "relay".into(),
                        color: RELAY,
                        points: series("relay", &|p| f(&p["egress_pps"])),
                    },
                ],
            ),
        )?;
        write(
            format!("search-{tag}-latency.svg"),
            lines(
                &format!("Latency (loads carried without loss), {room}"),
                "concurrent clients",
                "microseconds",
                &[
                    Series {
                        name: "server p99".into(),
                        color: SERVER,
                        points: carried("server", &|p| f(&p["latency_us"]["p99"])),
                    },
                    Series {
                        name: "relay p99".into(),
                        color: RELAY,
                        points: carried("relay", &|p| f(&p["latency_us"]["p99"])),
                    },
                    Series {
                        name: "server p50".into(),
                        color: "#6baed6",
                        points: carried("server", &|p| f(&p["latency_us"]["p50"])),
                    },
                    Series {
                        name: "relay p50".into(),
                        color: "#fdae6b",
                        points: carried("relay", &|p| f(&p["latency_us"]["p50"])),
                    },
                ],
            ),
        )?;
    }
    Ok(serde_json::json!({ "written": written }))
}
