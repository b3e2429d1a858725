//! Network faults between real cluster processes (RELIABILITY R5). The first test runs a
//! coordinator in the root network namespace and two worker nodes, each in a network
//! namespace of its own, joined to the coordinator and to each other through veth pairs on a
//! bridge (10.77.S.0/24, so the nodes use a secret file). The checkpointed, throttled
//! `running-count` job of the example job binary runs while
//!
//! - a worker node in use is partitioned for 1–5 s, then healed, three times: by dropping
//!   everything but loopback in its namespace (`iptables -j DROP`, both directions: the
//!   packets vanish silently) or by taking its veth down (no carrier); a partition longer
//!   than the heartbeat timeout (3 s) fails the run over to the other node, a shorter one is
//!   bridged by TCP's retransmissions;
//! - then both nodes lose 5 % of their packets for 3 s (`-m statistic --mode random`).
//!
//! Pass: the job completes (within the usual wait limit after the faults stop; the time is
//! printed) and Flink's per-key sequence oracle holds: per key, every running count 1..n
//! exactly once in the committed output, no pending file left; and no node's resident set
//! more than doubles (plus 128 MiB) during the faults, sampled every 50 ms. Durations,
//! targets and methods are drawn from a seed printed first (`SLUICE_FAULT_SEED=…`); the suite
//! prints one JSON line of figures.
//!
//! It needs root, `ip` (iproute2) and, for the DROP partitions and the loss episode,
//! `iptables` (`.ci/run` installs it when missing). Without namespaces it prints
//! `skipped: <reason>` and passes; without `iptables` every partition takes the veth down and
//! the loss episode is skipped, said likewise. Namespaces, veths and bridge get names unique
//! to the test process and are removed when the test ends, failed or not (iptables rules
//! live in the workers' namespaces and go with them).
//!
//! The second test plays Jepsen's lesson from Bufstream's transactions (R5's delayed control
//! messages) with a proxy of the test's own threads between a worker node and the coordinator,
//! on loopback (no namespaces needed): the coordinator's "checkpoint n complete" is held for
//! more than two checkpoint intervals while later messages pass, then delivered twice; the
//! committed files must not change, the run must not restart, and the oracle must hold.
//!
//! Longer variants of the first test: `SLUICE_RELIABILITY=extended` runs 30 partitions and
//! 10 loss episodes of 1–20 % (about 3 minutes); `SLUICE_KILLS=N` sets the number of
//! partitions; `SLUICE_FAULT_SEED=N` replays a schedule:
//!
//! ```sh
//! SLUICE_RELIABILITY=extended cargo test -p sluice-tests --test cluster_netfaults -- --nocapture
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::cluster::running_count::{check_sequences_with, job_args as job_args_of};
use sluice_tests::cluster::{Proc, WAIT_LIMIT, secret_file};
use sluice_tests::example_bin;
use sluice_tests::faults::{Rng, extended, iterations};

/// Says `line` on the test's stderr even when the harness captures output (a skip must be
/// visible in CI's log).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs `prog args`; its stderr as the error if it fails.
fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `prog args` and fails the test if it fails.
#[track_caller]
fn must(prog: &str, args: &[&str]) {
    if let Err(e) = run(prog, args) {
        panic!("{e}");
    }
}

/// How a partition is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Everything but loopback dropped in the node's namespace, both directions.
    Drop,
    /// The node's veth taken down on the bridge's side.
    LinkDown,
}

/// The network of a test: a bridge in the root namespace with the coordinator's address, and
/// per worker node a namespace whose veth is a port of the bridge. Removed when dropped.
struct Netns {
    /// Unique to this test process: names and the subnet derive from it.
    tag: String,
    /// `10.77.S`.
    prefix: String,
    bridge: String,
    /// Per node: its namespace and the root end of its veth.
    nodes: Vec<(String, String)>,
    iptables: bool,
}

impl Netns {
    /// Sets up the bridge and `nodes` namespaces, or says why it cannot.
    fn new(nodes: usize) -> Result<Netns, String> {
        run("ip", &["-V"]).map_err(|e| format!("no `ip` (iproute2): {e}"))?;
        let pid = std::process::id();
        let tag = format!("{}", pid % 100_000);
        // A /24 no interface of the root namespace uses yet.
        let addrs = Command::new("ip")
            .args(["-4", "-o", "addr"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let subnet = (0..250)
            .map(|i| (pid as usize + i) % 250 + 1)
            .find(|s| !addrs.contains(&format!("10.77.{s}.")))
            .ok_or("no free 10.77.S.0/24")?;
        let mut net = Netns {
            prefix: format!("10.77.{subnet}"),
            bridge: format!("snf{tag}br"),
            tag,
            nodes: Vec::new(),
            iptables: false,
        };
        // Leftovers of a killed test process that had the same tag go first.
        let _ = run("ip", &["link", "del", &net.bridge]);
        for i in 1..=nodes {
            let _ = run("ip", &["link", "del", &format!("snf{}w{i}", net.tag)]);
            let _ = run(
                "ip",
                &["netns", "del", &format!("sluice-nf-{}-w{i}", net.tag)],
            );
        }
        let first_ns = format!("sluice-nf-{}-w1", net.tag);
        run("ip", &["netns", "add", &first_ns])
            .map_err(|e| format!("cannot create a network namespace (root needed): {e}"))?;
        run("ip", &["netns", "del", &first_ns])?;
        must("ip", &["link", "add", &net.bridge, "type", "bridge"]);
        let cidr = format!("{}.1/24", net.prefix);
        must("ip", &["addr", "add", &cidr, "dev", &net.bridge]);
        must("ip", &["link", "set", &net.bridge, "up"]);
        for i in 1..=nodes {
            let ns = format!("sluice-nf-{}-w{i}", net.tag);
            let veth = format!("snf{}w{i}", net.tag);
            must("ip", &["netns", "add", &ns]);
            net.nodes.push((ns.clone(), veth.clone()));
            must(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "nf0", "netns", &ns,
                ],
            );
            must("ip", &["link", "set", &veth, "master", &net.bridge]);
            must("ip", &["link", "set", &veth, "up"]);
            let cidr = format!("{}/24", net.node_ip(i - 1));
            must("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "nf0"]);
            must("ip", &["-n", &ns, "link", "set", "nf0", "up"]);
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        net.iptables = match net.iptables_in(0, &["-S"]) {
            Ok(()) => true,
            Err(e) => {
                say(&format!(
                    "cluster_netfaults: no usable iptables ({e}): partitions take veths down, \
                     the loss episode is skipped"
                ));
                false
            }
        };
        Ok(net)
    }

    /// The coordinator's address, on the bridge.
    fn coordinator_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// Node `i`'s address, in its namespace.
    fn node_ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 10 + i)
    }

    /// `ip netns exec NS iptables ARGS` for node `i`.
    fn iptables_in(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.nodes[i].0, "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Adds `rule` (after the chain) to INPUT for packets not from loopback and to OUTPUT for
    /// packets not to it, in node `i`'s namespace; `-D` instead of `-A` deletes them.
    fn both_ways(&self, i: usize, op: &str, rule: &[&str]) {
        for (chain, iface) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let mut args = vec![op, chain, "!", iface, "lo"];
            args.extend_from_slice(rule);
            if let Err(e) = self.iptables_in(i, &args) {
                panic!("{e}");
            }
        }
    }

    /// Cuts node `i` off from everything.
    fn partition(&self, i: usize, how: Cut) {
        match how {
            Cut::Drop => self.both_ways(i, "-A", &["-j", "DROP"]),
            Cut::LinkDown => must("ip", &["link", "set", &self.nodes[i].1, "down"]),
        }
    }

    /// Heals what [`Netns::partition`] did.
    fn heal(&self, i: usize, how: Cut) {
        match how {
            Cut::Drop => self.both_ways(i, "-D", &["-j", "DROP"]),
            Cut::LinkDown => must("ip", &["link", "set", &self.nodes[i].1, "up"]),
        }
    }

    /// Drops `percent` % of node `i`'s packets, each way, until [`Netns::no_loss`].
    fn loss(&self, i: usize, percent: u64) -> String {
        let p = format!("{:.2}", percent as f64 / 100.0);
        self.both_ways(i, "-A", &loss_rule(&p));
        p
    }

    fn no_loss(&self, i: usize, p: &str) {
        self.both_ways(i, "-D", &loss_rule(p));
    }

    /// `ip netns exec NS BIN ARGS` for node `i`, as a [`Proc`] (`ip` execs the binary, so
    /// the process is the node itself).
    fn spawn_in(&self, i: usize, bin: &Path, name: &str, args: &[String]) -> Proc {
        let mut all: Vec<String> = vec!["netns".into(), "exec".into(), self.nodes[i].0.clone()];
        all.push(bin.display().to_string());
        all.extend(args.iter().cloned());
        Proc::spawn(Path::new("ip"), name, &all, &[])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth, and its iptables rules, once its
        // last process is gone; the root end goes explicitly, at once.
        for (ns, veth) in &self.nodes {
            let _ = run("ip", &["link", "del", veth]);
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// The iptables rule that drops packets with probability `p` (a decimal fraction).
fn loss_rule(p: &str) -> [&str; 8] {
    [
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        p,
        "-j",
        "DROP",
    ]
}

/// A process's resident set in KiB (`VmRSS` of `/proc/PID/status`), 0 once it is gone.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the resident sets of processes every 50 ms on a thread of its own, keeping the
/// largest per process, until dropped.
struct RssSampler {
    max: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> RssSampler {
        let max = std::sync::Arc::new(std::sync::Mutex::new(vec![0; pids.len()]));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let now: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
                let mut max = m.lock().unwrap_or_else(|e| e.into_inner());
                for (m, n) in max.iter_mut().zip(now) {
                    *m = (*m).max(n);
                }
                drop(max);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler { max, stop }
    }

    /// The largest resident sets so far, in MiB.
    fn max_mib(&self) -> Vec<u64> {
        let max = self.max.lock().unwrap_or_else(|e| e.into_inner());
        max.iter().map(|k| k.div_ceil(1024)).collect()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The processes of the test: dropped (killed) before the network they use.
struct Nodes {
    bin: PathBuf,
    addr: String,
    secret: String,
    coordinator: Proc,
    workers: Vec<Proc>,
}

impl Nodes {
    fn client(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .args(["--coordinator", &self.addr, "--secret-file", &self.secret]);
        sluice_tests::run_command_within(cmd, Duration::from_secs(30))
    }

    /// `list`: per node its used slots, and job-0001's columns.
    fn list(&self) -> (BTreeMap<String, u32>, Vec<String>) {
        let out = self.client(&["list"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut nodes = BTreeMap::new();
        let mut job = Vec::new();
        for line in text.lines() {
            let cols: Vec<String> = line.split_whitespace().map(String::from).collect();
            match cols.first().map(String::as_str) {
                Some("job-0001") => job = cols,
                Some(name) if name.starts_with('w') && cols.len() == 4 => {
                    nodes.insert(name.to_owned(), cols[3].parse().unwrap_or(0));
                }
                _ => {}
            }
        }
        (nodes, job)
    }

    fn logs(&self) -> String {
        let mut out = format!("--- coordinator:\n{}", self.coordinator.log());
        for w in &self.workers {
            out.push_str(&format!("--- {}:\n{}", w.name, w.log()));
        }
        out
    }
}

#[test]
fn partitions_and_packet_loss_of_worker_nodes_keep_exactly_once_output() {
    let mut rng = Rng::from_env("R5 network faults");
    let net = match Netns::new(2) {
        Ok(net) => net,
        Err(reason) => {
            say(&format!("cluster_netfaults: skipped: {reason}"));
            return;
        }
    };
    let partitions = iterations(3, 30);
    let loss_episodes = if extended() {
        partitions.div_ceil(3)
    } else {
        1
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary dir: {e}"));
    let secret = secret_file(dir.path(), "secret", "the R5 cluster's secret, long enough");
    let bin = example_bin("job_binary");
    let listen = format!("{}:0", net.coordinator_ip());
    let args: Vec<String> = [
        "node",
        "coordinator",
        "--listen",
        &listen,
        "--secret-file",
        &secret,
    ]
    .map(String::from)
    .to_vec();
    let mut coordinator = Proc::spawn(&bin, "coordinator", &args, &[]);
    let line = coordinator.wait_for_line("coordinator listening on ");
    let addr = line.rsplit(' ').next().unwrap_or_default().to_owned();
    let mut nodes = Nodes {
        bin: bin.clone(),
        addr: addr.clone(),
        secret: secret.clone(),
        coordinator,
        workers: Vec::new(),
    };
    for i in 0..2 {
        let name = format!("w{}", i + 1);
        let listen = format!("{}:0", net.node_ip(i));
        let args = [
            "node",
            "worker",
            "--coordinator",
            &addr,
            "--listen",
            &listen,
            "--workers",
            "1",
            "--name",
            &name,
            "--secret-file",
            &secret,
        ]
        .map(String::from);
        let mut w = net.spawn_in(i, &bin, &name, &args);
        w.wait_for_line("registered with the coordinator");
        nodes.workers.push(w);
    }
    // About 2 s of events per fault episode at full speed, and 2 s more: the job outlives the
    // faults (a partitioned node stalls it).
    let rate = 4000u64;
    let events = rate * 2 * u64::from(partitions + loss_episodes + 1);
    let keys = 60;
    let (output, checkpoints) = (dir.path().join("out"), dir.path().join("ck"));
    let mut job_args = vec!["run".to_owned(), "running-count".into()];
    job_args.extend(job_args_of(
        events,
        keys,
        &output,
        &checkpoints,
        rate as u32,
    ));
    job_args.extend([
        // Each fault may fail a run over once or twice; the default budget is 3 in all.
        "--restart-attempts".into(),
        (2 * (partitions + loss_episodes) + 3).to_string(),
        "--coordinator".into(),
        addr.clone(),
        "--secret-file".into(),
        secret.clone(),
    ]);
    let mut client = Proc::spawn(&bin, "client", &job_args, &[]);
    client.wait_for_line("submitted ");
    let checkpoint = |job: &[String]| job.get(4).and_then(|c| c.parse::<u64>().ok());
    let started = Instant::now();
    while checkpoint(&nodes.list().1).unwrap_or(0) < 2 {
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "no checkpoint: {}\n{}",
            client.log(),
            nodes.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut pids = vec![nodes.coordinator.pid()];
    pids.extend(nodes.workers.iter().map(Proc::pid));
    let before = RssSampler::start(pids.clone());
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = before.max_mib();
    drop(before);
    let during = RssSampler::start(pids);
    let mut cuts = Vec::new();
    for p in 0..partitions {
        // A node the job runs on (the first, if the job has ended already).
        let (used, _) = nodes.list();
        let busy: Vec<usize> = (0..2)
            .filter(|i| used.get(&format!("w{}", i + 1)).is_some_and(|&u| u > 0))
            .collect();
        let node = match busy.len() {
            0 => 0,
            n => busy[rng.below(n as u64) as usize],
        };
        let how = if net.iptables && p % 2 == 0 {
            Cut::Drop
        } else {
            Cut::LinkDown
        };
        let ms = 1000 + rng.below(4001);
        net.partition(node, how);
        std::thread::sleep(Duration::from_millis(ms));
        net.heal(node, how);
        cuts.push(format!("w{}:{how:?}:{ms}ms", node + 1));
        // Both nodes registered again (the cut one rejoins if it was dropped), then a pause.
        let started = Instant::now();
        while nodes.list().0.len() < 2 {
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "w{} never rejoined after {cuts:?}:\n{}",
                node + 1,
                nodes.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500 + rng.below(1000)));
    }
    let mut losses = Vec::new();
    if net.iptables {
        for _ in 0..loss_episodes {
            let percent = if extended() { 1 + rng.below(20) } else { 5 };
            let p: Vec<String> = (0..2).map(|i| net.loss(i, percent)).collect();
            std::thread::sleep(Duration::from_millis(3000));
            for (i, p) in p.iter().enumerate() {
                net.no_loss(i, p);
            }
            losses.push(percent);
            std::thread::sleep(Duration::from_millis(500));
        }
    } else {
        say("cluster_netfaults: skipped the loss episode: no iptables");
    }
    let rss_during = during.max_mib();
    drop(during);
    // Memory stays bounded through the faults (R5 with R8's sampler): nothing a partition
    // queues grows without limit. Loose, for a loaded machine: twice the level before, plus
    // 128 MiB.
    for (i, (b, d)) in rss_before.iter().zip(&rss_during).enumerate() {
        assert!(
            *d <= 2 * b + 128,
            "process {i} (coordinator, w1, w2) grew from {b} MiB to {d} MiB during the faults"
        );
    }
    let faults_over = Instant::now();
    let status = client.wait_exit(WAIT_LIMIT);
    let after_faults_ms = faults_over.elapsed().as_millis();
    assert!(
        status.success(),
        "the job failed after {cuts:?} and loss {losses:?}: {}\n{}",
        client.log(),
        nodes.logs()
    );
    check_sequences_with(events, keys, &output, || {
        format!("{cuts:?} {losses:?}\n{}\n{}", client.log(), nodes.logs())
    });
    let restarts = client.log().matches("restarting from ").count();
    eprintln!(
        "{{\"suite\":\"R5\",\"seed\":{},\"events\":{events},\"partitions\":{},\
         \"loss_episodes\":{},\"restarts\":{restarts},\"lost\":0,\"duplicated\":0,\
         \"completed_ms_after_faults\":{after_faults_ms},\"rss_mib_before\":{rss_before:?},\
         \"rss_mib_max_during\":{rss_during:?}}}",
        rng.seed(),
        cuts.len(),
        losses.len()
    );
    eprintln!("partitions {cuts:?}, loss {losses:?} %");
    eprintln!("{}", client.log());
    drop(nodes);
    drop(net);
}

/// What the delayed-commit proxy did and saw.
#[derive(Debug, Default)]
struct ProxyReport {
    /// The `Complete` it held: run and checkpoint.
    held: Option<(u64, u64)>,
    /// The checkpoints of the `Complete`s that passed it while it held one.
    passed: Vec<u64>,
    /// How often it delivered the held message.
    delivered: u32,
    /// The output's committed files (name, bytes) just before the late deliveries and after.
    committed_before: Vec<(String, u64)>,
    committed_after: Vec<(String, u64)>,
    /// The pending files just before the late deliveries and after.
    pending_before: Vec<String>,
    pending_after: Vec<String>,
}

/// The committed part files of `dir` with their sizes, and its pending files, sorted.
fn output_files(dir: &Path) -> (Vec<(String, u64)>, Vec<String>) {
    let (mut committed, mut pending) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            pending.push(name);
        } else if let Ok(meta) = entry.metadata() {
            committed.push((name, meta.len()));
        }
    }
    committed.sort();
    pending.sort();
    (committed, pending)
}

/// The checkpoint a part file's name ends in (`part-<worker>-<run>-<epoch>`).
fn epoch_of(name: &str) -> u64 {
    name.trim_end_matches(".pending")
        .rsplit('-')
        .next()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0)
}

/// `Msg::Complete`'s run and checkpoint if `frame` (header and payload) carries one.
fn complete_in(frame: &[u8]) -> Option<(u64, u64)> {
    use sluice_cluster::protocol::{self, Msg};
    use sluice_net::wire::{Control, decode_control_message};
    if frame[2] != sluice_net::FrameKind::Control as u8 {
        return None;
    }
    let len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    // rkyv reads the payload in place: give it a 16-byte aligned copy.
    let mut buf = vec![0u8; len + 16];
    let off = (16 - buf.as_ptr() as usize % 16) % 16;
    buf[off..off + len].copy_from_slice(&frame[16..16 + len]);
    match decode_control_message(&buf[off..off + len]) {
        Ok(Control::App { bytes }) => match protocol::decode(&bytes) {
            Ok(Msg::Complete { run, checkpoint_id }) => Some((run, checkpoint_id)),
            _ => None,
        },
        _ => None,
    }
}

/// A TCP proxy in front of the coordinator for one worker node, in threads of the test. The
/// node → coordinator direction is copied as it is; the coordinator → node direction is cut
/// into frames (they are authenticated at the handshake, not encrypted), and the first
/// checkpoint-complete message for a checkpoint of at least `hold_from` is held while the
/// later messages pass — at least one later checkpoint's `Complete` and `hold` — so that it
/// arrives late and out of order, like a message of an older connection. Then the proxy
/// stops forwarding for a while (a delay of every message), records the output's files,
/// delivers the held message twice, records them again, and forwards the rest.
struct CommitDelayProxy {
    addr: String,
    report: std::sync::Arc<std::sync::Mutex<ProxyReport>>,
}

impl CommitDelayProxy {
    fn start(coordinator: &str, output: &Path, hold_from: u64, hold: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("bind the proxy: {e}"));
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let report = std::sync::Arc::new(std::sync::Mutex::new(ProxyReport::default()));
        let (upstream, output, shared) =
            (coordinator.to_owned(), output.to_owned(), report.clone());
        std::thread::spawn(move || {
            // Ends with the test process; a node that reconnects gets a new pair of pumps.
            for node in listener.incoming().flatten() {
                let Ok(coordinator) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (Ok(mut from_node), Ok(mut to_coordinator)) =
                    (node.try_clone(), coordinator.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_node, &mut to_coordinator);
                    let _ = to_coordinator.shutdown(std::net::Shutdown::Write);
                });
                let (output, report) = (output.clone(), shared.clone());
                std::thread::spawn(move || {
                    let mut pump = DownPump {
                        node,
                        output,
                        report,
                        hold_from,
                        hold,
                    };
                    pump.run(coordinator);
                });
            }
        });
        CommitDelayProxy { addr, report }
    }

    fn report(&self) -> std::sync::MutexGuard<'_, ProxyReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The coordinator → node direction of [`CommitDelayProxy`].
struct DownPump {
    node: std::net::TcpStream,
    output: PathBuf,
    report: std::sync::Arc<std::sync::Mutex<ProxyReport>>,
    hold_from: u64,
    hold: Duration,
}

impl DownPump {
    fn run(&mut self, mut coordinator: std::net::TcpStream) {
        use std::io::Read;
        let _ = coordinator.set_read_timeout(Some(Duration::from_millis(10)));
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let mut held: Option<(Vec<u8>, Instant)> = None;
        loop {
            match coordinator.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
            while buf.len() >= 16 {
                let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                let total = 16 + len.div_ceil(16) * 16;
                if buf.len() < total {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..total).collect();
                let complete = complete_in(&frame);
                {
                    let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
                    match complete {
                        Some((run, id)) if report.held.is_none() && id >= self.hold_from => {
                            report.held = Some((run, id));
                            held = Some((frame, Instant::now()));
                            continue;
                        }
                        Some((_, id)) if held.is_some() => report.passed.push(id),
                        _ => {}
                    }
                }
                if self.node.write_all(&frame).is_err() {
                    return;
                }
            }
            let due = held
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() >= self.hold)
                && !self
                    .report
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .passed
                    .is_empty();
            if due && let Some((frame, _)) = held.take() {
                self.deliver_late(&frame);
            }
        }
        let _ = self.node.shutdown(std::net::Shutdown::Write);
    }

    /// Stops forwarding, lets the node settle, records the output, delivers `frame` twice,
    /// lets the node handle it, records the output again.
    fn deliver_late(&mut self, frame: &[u8]) {
        let settle = Duration::from_millis(400);
        std::thread::sleep(settle);
        let (committed_before, pending_before) = output_files(&self.output);
        let mut delivered = 0;
        for _ in 0..2 {
            if self.node.write_all(frame).is_ok() {
                delivered += 1;
            }
        }
        std::thread::sleep(settle);
        let (committed_after, pending_after) = output_files(&self.output);
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        report.delivered = delivered;
        report.committed_before = committed_before;
        report.committed_after = committed_after;
        report.pending_before = pending_before;
        report.pending_after = pending_after;
    }
}

/// RELIABILITY R5's Kafka-transaction lesson from Jepsen's Bufstream report: the coordinator's
/// "checkpoint n complete" to a worker node is held for more than two checkpoint intervals
/// (100 ms each) while later messages — `Complete` n+1 among them — pass, then delivered twice,
/// after the node's traffic from the coordinator stopped for 0.4 s. The late and duplicate
/// commits of n change nothing: the committed files (those of n+1 included) are the same
/// before and after, no pending file is published by them; the run is not disturbed (no
/// restart); and the output holds the per-key sequence oracle.
#[test]
fn a_late_and_duplicated_checkpoint_complete_changes_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary dir: {e}"));
    let bin = example_bin("job_binary");
    let (output, checkpoints) = (dir.path().join("out"), dir.path().join("ck"));
    let mut cluster = sluice_tests::cluster::TestCluster::coordinator_of(&bin, &[]);
    let proxy = CommitDelayProxy::start(&cluster.addr, &output, 3, Duration::from_millis(500));
    let args = [
        "node",
        "worker",
        "--coordinator",
        &proxy.addr,
        "--listen",
        "127.0.0.2:0",
        "--workers",
        "2",
        "--name",
        "w1",
    ]
    .map(String::from);
    let mut worker = Proc::spawn(&bin, "w1", &args, &[]);
    worker.wait_for_line("registered with the coordinator");
    cluster.workers.push(worker);
    let (events, keys, rate) = (20_000u64, 40u64, 4000u64);
    let job_args = job_args_of(events, keys, &output, &checkpoints, rate as u32);
    let mut client = sluice_tests::cluster::submit(&cluster, "running-count", &job_args);
    let status = client.wait_exit(WAIT_LIMIT);
    assert!(status.success(), "{}\n{}", client.log(), cluster.logs());
    let report = proxy.report();
    let logs = || format!("{report:?}\n{}\n{}", client.log(), cluster.logs());
    let Some((_, held)) = report.held else {
        panic!("no checkpoint-complete message was held: {}", logs());
    };
    assert_eq!(report.delivered, 2, "{}", logs());
    assert!(
        report.passed.iter().all(|&id| id > held) && !report.passed.is_empty(),
        "{}",
        logs()
    );
    // Later checkpoints' files were committed before the late message came, and stay as
    // they were; no pending file was committed by it.
    assert!(
        report
            .committed_before
            .iter()
            .any(|(name, _)| epoch_of(name) > held),
        "{}",
        logs()
    );
    assert_eq!(
        report.committed_before,
        report.committed_after,
        "{}",
        logs()
    );
    let published: Vec<&String> = report
        .pending_before
        .iter()
        .filter(|p| !report.pending_after.contains(p))
        .collect();
    assert!(
        published.is_empty(),
        "published by a late commit: {published:?}\n{}",
        logs()
    );
    assert!(!client.log().contains("restarting"), "{}", logs());
    check_sequences_with(events, keys, &output, logs);
    eprintln!(
        "{{\"suite\":\"R5\",\"case\":\"delayed-commit\",\"held\":{held},\"passed\":{:?},\
         \"delivered\":2,\"restarts\":0,\"lost\":0,\"duplicated\":0}}",
        report.passed
    );
}
