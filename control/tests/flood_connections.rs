//! Connection floods by an attacker without credentials, against the real
//! binaries over loopback: an attempt to exhaust control's descriptors,
//! slowloris at every stage of the handshake, and a websocket Ping flood.
//! In each, Litecord's link (already up) keeps working, a new LVSP link
//! connects, identifies and gets CHANNEL_ASSIGN, new voice clients join,
//! and a member's heartbeat round trip stays under 10 ms at the median.
//!
//! Attackers connect from 127.1.x.y (other /24s than the legitimate
//! clients' 127.0.0.1). Every attack is bounded in time and count. Each
//! test prints its figures (`FLOOD ...` lines) before it asserts.

#[path = "support/flood.rs"]
mod flood;
mod support;

use std::time::{Duration, Instant};

use flood::{sources, Attack, PingFlooders, Stage, Target};
use scripts::{LvspClient, Mode, VoiceClient};
use support::ServerProcess;

const GUILD: &str = "41771983423143936";

/// One flood at a time: each test measures the legitimate side under its
/// own attack, not under every attack of this file at once.
static ONE_FLOOD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const CHANNEL: &str = "9100";

/// The legitimate side: Litecord's link, its channel, and a member in the
/// call.
struct Legit {
    lvsp: LvspClient,
    token: String,
    member: Option<VoiceClient>,
    users: u64,
    channels: u64,
}

impl Legit {
    fn member(&mut self) -> &mut scripts::GatewayClient {
        &mut self.member.as_mut().expect("the first member").gateway
    }
}

/// Litecord's link up, a channel assigned and one member joined, before
/// any attack.
async fn legit(server: &ServerProcess) -> Legit {
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP identify");
    let assign = lvsp
        .channel_req(CHANNEL, Some(GUILD))
        .await
        .expect("CHANNEL_ASSIGN");
    let mut legit = Legit {
        lvsp,
        token: assign.token,
        member: None,
        users: 7000,
        channels: 9200,
    };
    let mut member = join(server, &mut legit)
        .await
        .expect("the first member joins");
    // Heartbeats are measured one by one from here on.
    member.stop_heartbeat();
    legit.member = Some(member);
    legit
}

/// A new voice state over Litecord's link and a voice client joining it,
/// each step within 3 s.
async fn join(server: &ServerProcess, legit: &mut Legit) -> Result<VoiceClient, String> {
    legit.users += 1;
    let user = legit.users.to_string();
    let done = tokio::time::timeout(
        Duration::from_secs(3),
        legit.lvsp.voice_state_create(&user, CHANNEL, Some(GUILD)),
    )
    .await
    .map_err(|_| "VOICE_STATE_DONE timed out".to_owned())?
    .map_err(|e| format!("VOICE_STATE_DONE: {e}"))?;
    tokio::time::timeout(
        Duration::from_secs(3),
        VoiceClient::join(
            &server.gateway_url,
            8,
            GUILD,
            &user,
            &done.session_id,
            &legit.token,
            Mode::Aes256GcmRtpSize,
        ),
    )
    .await
    .map_err(|_| "join timed out".to_owned())?
    .map_err(|e| format!("join: {e}"))
}

/// A new LVSP link: connect, IDENTIFY, CHANNEL_REQ → CHANNEL_ASSIGN, within
/// 3 s.
async fn lvsp_link(server: &ServerProcess, legit: &mut Legit) -> Result<(), String> {
    legit.channels += 1;
    let channel = legit.channels.to_string();
    tokio::time::timeout(Duration::from_secs(3), async {
        let (mut link, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
            .await
            .map_err(|e| format!("LVSP identify: {e}"))?;
        link.channel_req(&channel, Some(GUILD))
            .await
            .map_err(|e| format!("CHANNEL_ASSIGN: {e}"))?;
        Ok(())
    })
    .await
    .map_err(|_| "LVSP link timed out".to_owned())?
}

/// What the legitimate side saw during an attack.
#[derive(Debug, Default)]
struct Figures {
    joins: usize,
    joined: usize,
    links: usize,
    linked: usize,
    rtts: Vec<Duration>,
    errors: Vec<String>,
}

impl Figures {
    fn median_max(&self) -> (Duration, Duration) {
        flood::median_max(&self.rtts)
    }

    /// Asserts what every flood test promises.
    fn assert_legit_unharmed(&self, name: &str) {
        let (median, _) = self.median_max();
        assert_eq!(self.joined, self.joins, "{name}: joins: {:?}", self.errors);
        assert_eq!(
            self.linked, self.links,
            "{name}: LVSP links: {:?}",
            self.errors
        );
        assert!(
            median < Duration::from_millis(10),
            "{name}: heartbeat median {median:?}"
        );
    }
}

/// The legitimate side's round: heartbeat round trips of the member,
/// `joins` new members, `links` new LVSP links, and the member's heartbeats
/// again; Litecord's first link keeps serving throughout.
async fn measure(server: &ServerProcess, legit: &mut Legit, joins: usize, links: usize) -> Figures {
    let mut f = Figures {
        joins,
        links,
        ..Figures::default()
    };
    f.rtts = flood::heartbeat_rtts(legit.member(), 15, Duration::from_millis(30)).await;
    let mut joined = Vec::new();
    for _ in 0..joins {
        match join(server, legit).await {
            Ok(c) => joined.push(c),
            Err(e) => f.errors.push(e),
        }
    }
    f.joined = joined.len();
    for _ in 0..links {
        match lvsp_link(server, legit).await {
            Ok(()) => f.linked += 1,
            Err(e) => f.errors.push(e),
        }
    }
    f.rtts
        .extend(flood::heartbeat_rtts(legit.member(), 15, Duration::from_millis(30)).await);
    f
}

/// `voice_connections_refused_total` of `protocol`, one field per reason.
fn refusals(server: &ServerProcess, protocol: &str) -> String {
    let Some(m) = flood::try_metrics(&server.metrics) else {
        return "metrics unavailable".into();
    };
    let mut out: Vec<String> = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("voice_connections_refused_total{")
                && k.contains(&format!("protocol=\"{protocol}\""))
        })
        .map(|(k, v)| {
            let reason = k
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("all");
            format!("{reason}={v}")
        })
        .collect();
    let evicted = m
        .get(&format!(
            "voice_connections_evicted_total{{protocol=\"{protocol}\"}}"
        ))
        .copied()
        .unwrap_or(0.0);
    out.sort();
    out.push(format!("evicted={evicted}"));
    out.join(" ")
}

fn report(name: &str, server: &ServerProcess, f: &Figures, attack: &str) {
    let (median, max) = f.median_max();
    eprintln!(
        "FLOOD {name}: joins {}/{}, heartbeat rtt median {median:?} max {max:?}, \
         LVSP links {}/{}; refused gateway [{}] lvsp [{}]; attack {attack}; errors {:?}",
        f.joined,
        f.joins,
        f.linked,
        f.links,
        refusals(server, "gateway"),
        refusals(server, "lvsp"),
        f.errors,
    );
}

fn targets(server: &ServerProcess) -> (Target, Target) {
    let cert = server.cert.as_deref();
    (
        Target::new(&server.gateway_url, cert, "/?v=8"),
        Target::new(&server.lvsp_url, cert, "/"),
    )
}

/// Caps sized for an open-file limit of 1024 (they need 740 descriptors).
const FD_CAPS: &[&str] = &[
    "--max-connections",
    "300",
    "--gateway-max-pending",
    "256",
    "--lvsp-max-connections",
    "8",
    "--lvsp-max-pending",
    "32",
    "--metrics-max-connections",
    "16",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_meets_the_caps_not_the_limit() {
    let _one = ONE_FLOOD.lock().await;
    let own = flood::raise_own_open_files();
    assert!(own >= 2048, "the test needs 2048 descriptors, has {own}");
    let server = ServerProcess::start_with_open_files(1, FD_CAPS, 1024, 1024);
    let mut legit = legit(&server).await;
    let (gw, lv) = targets(&server);

    // 1,120 idle TCP connections to the gateway from 280 addresses in 35
    // /24s, and 128 to LVSP: more than the 1,024 descriptors control may
    // open. Each worker reconnects a second after the server drops it.
    let mut attack = Attack::new(Duration::from_secs(30), 40_000);
    attack.add(
        &gw,
        Stage::Tcp,
        &sources(10, 35, 8),
        4,
        Duration::from_secs(1),
    );
    attack.add(
        &lv,
        Stage::Tcp,
        &sources(60, 4, 8),
        4,
        Duration::from_secs(1),
    );
    let pid = server.pid();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(flood::open_fds(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let ramp = Instant::now();
    while attack
        .stats
        .stalled
        .load(std::sync::atomic::Ordering::Relaxed)
        < 1100
        && ramp.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let figures = measure(&server, &mut legit, 3, 2).await;
    let fds = peak.load(std::sync::atomic::Ordering::Relaxed);
    let stats = format!("{:?}, control's peak descriptors {fds}", attack.stats);
    attack.stop().await;
    sampler.abort();
    report("descriptors", &server, &figures, &stats);

    figures.assert_legit_unharmed("descriptors");
    assert!(fds < 1024 - 100, "control stayed clear of its limit: {fds}");
    let m = server.metrics();
    assert!(m["voice_connections_evicted_total{protocol=\"gateway\"}"] > 0.0);
    assert!(m["voice_connections_evicted_total{protocol=\"lvsp\"}"] > 0.0);
    // Litecord's first link still answers.
    legit
        .lvsp
        .channel_req("9199", Some(GUILD))
        .await
        .expect("the first link still serves");

    // /metrics: 24 idle connections against a cap of 16; once they are
    // gone the endpoint answers again.
    let idle: Vec<std::net::TcpStream> = (0..24)
        .filter_map(|_| std::net::TcpStream::connect(&server.metrics).ok())
        .collect();
    server_wait_refused_metrics(&server, idle).await;
}

/// Waits until the metrics cap refused the idle connections past it, then
/// closes them and scrapes.
async fn server_wait_refused_metrics(server: &ServerProcess, idle: Vec<std::net::TcpStream>) {
    // A refused connection is closed at once: reading it gives EOF.
    let mut refused = 0;
    for mut s in idle.iter() {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 1];
        if matches!(std::io::Read::read(&mut s, &mut buf), Ok(0)) {
            refused += 1;
        }
    }
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(refused, 8, "24 idle connections against a cap of 16");
    assert_eq!(
        server.metric("voice_connections_refused_total{protocol=\"metrics\",reason=\"full\"}"),
        8.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_at_every_stage_cannot_fill_either_listener() {
    let _one = ONE_FLOOD.lock().await;
    flood::raise_own_open_files();
    // The identified cap is small so that, without the pending budget, the
    // attack below would fill both listeners.
    let server = ServerProcess::start(1, &["--max-connections", "256"]);
    let mut legit = legit(&server).await;
    let (gw, lv) = targets(&server);

    // 32 addresses in four /24s; on each listener 3 workers per address
    // and stage (384 connections), each stalling at its stage and
    // reconnecting half a second after the server drops it.
    let attackers = sources(1, 4, 8);
    let mut attack = Attack::new(Duration::from_secs(40), 60_000);
    for stage in Stage::ALL {
        for target in [&gw, &lv] {
            attack.add(target, stage, &attackers, 3, Duration::from_millis(500));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pending = server.metric("voice_connections_pending{protocol=\"gateway\"}");
    let stalled = attack
        .stats
        .stalled
        .load(std::sync::atomic::Ordering::Relaxed);
    let figures = measure(&server, &mut legit, 5, 3).await;
    let stats = format!("{:?}, gateway pending {pending}", attack.stats);
    attack.stop().await;
    report("slowloris", &server, &figures, &stats);

    figures.assert_legit_unharmed("slowloris");
    // Four /24s hold at most 4 × 32 pending connections per listener.
    assert!(pending <= 128.0, "{pending}");
    let m = server.metrics();
    // The gateway's pending budget (512) outsizes the four /24s' shares:
    // the per-prefix cap refused the rest. LVSP's (64) does not: the
    // attack's connections pushed out each other.
    assert!(m["voice_connections_refused_total{protocol=\"gateway\",reason=\"per_prefix\"}"] > 0.0);
    assert!(m["voice_connections_evicted_total{protocol=\"lvsp\"}"] > 0.0);
    // The attack did hold connections at its stages.
    assert!(
        stalled >= 64 && pending >= 32.0,
        "{stalled} stalled, {pending} pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_spend_the_message_budget() {
    let _one = ONE_FLOOD.lock().await;
    flood::raise_own_open_files();
    let server = ServerProcess::start(1, &[]);
    let mut legit = legit(&server).await;
    let (gw, lv) = targets(&server);

    // 16 gateway and 2 LVSP flooders, each sending 5,000 Pings a second
    // on a connection and opening another 200 ms after the server closes
    // it, for at most 8 s.
    let duration = Duration::from_secs(8);
    let gateway_floods = PingFlooders::start(
        &gw,
        &sources(5, 2, 8),
        duration,
        200_000,
        20,
        Duration::from_millis(200),
    );
    let lvsp_floods = PingFlooders::start(
        &lv,
        &sources(7, 1, 2),
        duration,
        200_000,
        20,
        Duration::from_millis(200),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let figures = measure(&server, &mut legit, 3, 2).await;
    let (gateway, lvsp) = (gateway_floods.finish().await, lvsp_floods.finish().await);
    let longest = |f: &[flood::PingFlood]| f.iter().map(|f| f.lasted).max().unwrap_or_default();
    let pings = |f: &[flood::PingFlood]| f.iter().map(|f| f.pings).sum::<u64>();
    let stats = format!(
        "gateway: {} connections, {} pings written, longest {:?}, closes {:?}; \
         lvsp: {} connections, {} pings written, longest {:?}, closes {:?}",
        gateway.len(),
        pings(&gateway),
        longest(&gateway),
        closes(&gateway),
        lvsp.len(),
        pings(&lvsp),
        longest(&lvsp),
        closes(&lvsp),
    );
    report("pings", &server, &figures, &stats);

    figures.assert_legit_unharmed("pings");
    // Gateway: a burst of 60 and 10/s; LVSP: 2000 and 1000/s. Pings
    // come faster than that, so the server ends every flood connection
    // soon after its burst; only the one each flooder had open when its
    // time was up may be cut short (without the budget every connection
    // would ping until then). The close code comes first, unless the
    // flooder had so much in flight that the server gave up draining it.
    for (floods, code, flooders) in [(&gateway, 4021, 16), (&lvsp, 4000, 2)] {
        let (cut, ended): (Vec<_>, Vec<_>) = floods.iter().partition(|f| f.cut);
        assert!(cut.len() <= flooders, "{cut:?}");
        assert!(ended.len() >= 2 * flooders, "{} ended", ended.len());
        for f in &ended {
            assert!(f.close.is_none_or(|c| c == code), "{f:?}");
            assert!(f.lasted < Duration::from_secs(3), "{f:?}");
        }
        let coded = ended.iter().filter(|f| f.close == Some(code)).count();
        assert!(
            coded * 2 > ended.len(),
            "{coded} of {} saw {code}",
            ended.len()
        );
    }
}

/// Close codes seen, with counts.
fn closes(floods: &[flood::PingFlood]) -> std::collections::BTreeMap<Option<u16>, usize> {
    let mut m = std::collections::BTreeMap::new();
    for f in floods {
        *m.entry(f.close).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identified_caps_close_with_1013_and_spare_who_is_in() {
    let server = ServerProcess::start(
        1,
        &["--max-connections", "1", "--lvsp-max-connections", "1"],
    );
    let mut legit = legit(&server).await;
    // The gateway's only identified slot is the member's.
    let second = join(&server, &mut legit).await;
    assert!(
        matches!(&second, Err(e) if e.contains("1013")),
        "{:?}",
        second.map(|_| ())
    );
    // LVSP's only identified slot is Litecord's link.
    let again = LvspClient::connect(&server.lvsp_url, &server.secret).await;
    assert!(
        matches!(&again, Err(scripts::ClientError::Closed(Some(1013)))),
        "{:?}",
        again.map(|_| ())
    );
    let rtts = flood::heartbeat_rtts(legit.member(), 5, Duration::from_millis(10)).await;
    assert!(
        flood::median_max(&rtts).0 < Duration::from_millis(10),
        "{rtts:?}"
    );
    legit
        .lvsp
        .channel_req("9300", Some(GUILD))
        .await
        .expect("the link still serves");
    for proto in ["gateway", "lvsp"] {
        assert_eq!(
            server.metric(&format!(
                "voice_connections_refused_total{{protocol=\"{proto}\",reason=\"identified_full\"}}"
            )),
            1.0,
            "{proto}"
        );
        assert_eq!(
            server.metric(&format!(
                "voice_closes_total{{protocol=\"{proto}\",code=\"1013\"}}"
            )),
            1.0,
            "{proto}"
        );
    }
}

#[test]
fn the_open_file_limit_is_raised_and_the_caps_must_fit_it() {
    // Soft 1024, hard 4096: control raises the soft limit (caps that fit
    // 4096 start).
    let server =
        ServerProcess::start_with_open_files(1, &["--max-connections", "3000"], 1024, 4096);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
    drop(server);

    // The default caps need 10,800: with a hard limit of 1024 control
    // refuses to start, naming the numbers and the flags.
    let shm = format!("/dev/shm/voice-test-{}-refused", std::process::id());
    let mut child = support::open_files_command(1024, 1024)
        .args(support::loopback_args(1))
        .args(["--shm", &shm, "--secret", support::SECRET])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn control");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&shm);
            panic!("control started with caps beyond its open-file limit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    for needle in [
        "10800",
        "1024",
        "--max-connections 10000",
        "--gateway-max-pending 512",
    ] {
        assert!(stderr.contains(needle), "{needle} in {stderr}");
    }
    assert!(
        !std::path::Path::new(&shm).exists(),
        "refused before the region was created"
    );
}
