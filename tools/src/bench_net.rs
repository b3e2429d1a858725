//! `sluice bench net`: record-batch throughput through the `sluice-net` transport between two
//! executors over loopback TCP, against raw glommio TCP streaming the same bytes in writes of
//! the same size (no framing, no crc, no serialization, no flow control), interleaved run by
//! run; medians, records/s, bytes/s and the ratio.
//!
//! Both endpoints are glommio executors in this one process, pinned to two different CPUs when
//! two are allowed: the bytes still cross the kernel's loopback TCP stack exactly as between
//! two processes, while one process keeps the two variants on identical placement and lets one
//! command drive and check both. The transport variant is measured twice at the receiver:
//! reading the records in place (validated `rkyv::access`, summing a field) and deserializing
//! every batch into a reused `Vec` of owned records.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use rkyv::{Archive, Deserialize, Serialize};
use sluice_bench::stats::median;
use sluice_net::wire::{self, Element};
use sluice_net::{ClusterSecret, Listener, NetConfig, Received};

use sluice::cli::progress::human;

/// Options of `sluice bench net`.
#[derive(Args, Debug)]
pub struct NetBench {
    /// Batches to send per run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    batches: u64,
    /// Records per batch.
    #[arg(long, default_value_t = 1024, value_parser = records_range())]
    records_per_batch: u64,
    /// Bytes per record: 16, 32, 64, 128 or 256 (a key, a value and padding).
    #[arg(long, default_value_t = 16)]
    record_bytes: usize,
    /// Credits the receiver grants (each one 64 KiB receive buffer).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    credits: u32,
    /// Runs of each variant.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Print a JSON record to stdout.
    #[arg(long)]
    json: bool,
    /// Instead of throughput: end-to-end latency percentiles of a keyed pipeline across two
    /// nodes at 10%, 50% and 90% of its maximum rate (see `bench_net_latency.rs`).
    #[arg(long)]
    latency: bool,
    /// With --latency: events of each maximum-rate run (long enough that connecting is a
    /// small part of it).
    #[arg(
        long,
        default_value_t = 10_000_000,
        value_parser = clap::value_parser!(u64).range(1000..)
    )]
    latency_events: u64,
    /// With --latency: seconds of each latency run.
    #[arg(long, default_value_t = 3.0)]
    latency_secs: f64,
    /// With --latency: distinct keys.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// With --latency: leave the two nodes' workers unpinned (by default each is pinned to a
    /// CPU of its own, as on two machines, where the process may use two).
    #[arg(long)]
    unpinned: bool,
}

fn records_range() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=1_000_000)
}

/// A benchmark record of `16 + N` bytes.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
struct Rec<const N: usize> {
    key: u64,
    value: u64,
    pad: [u8; N],
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Raw,
    Archived,
    Owned,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw glommio TCP",
            Variant::Archived => "sluice-net, archived",
            Variant::Owned => "sluice-net, owned",
        }
    }
}

/// One run's result, measured at the receiver from its first to its last byte.
#[derive(Clone, Copy, Debug, Default)]
struct RunResult {
    secs: f64,
    records: u64,
    bytes: u64,
    /// Receive buffers the transport allocated (the rest were reused).
    recv_buffers_allocated: u64,
    checksum: u64,
}

fn placements() -> (Placement, Placement) {
    let cpus = sluice::available_cpus();
    match cpus.as_slice() {
        [a, b, ..] => (Placement::Fixed(*a), Placement::Fixed(*b)),
        _ => (Placement::Unbound, Placement::Unbound),
    }
}

fn config() -> Result<NetConfig> {
    let secret = ClusterSecret::random().context("make a cluster secret")?;
    Ok(NetConfig::new(secret, "bench", "bench"))
}

fn records<const N: usize>(n: u64) -> Vec<Rec<N>> {
    (0..n)
        .map(|i| Rec {
            key: i,
            value: i * 3,
            pad: [i as u8; N],
        })
        .collect()
}

/// Wire bytes of one batch frame (what the raw baseline sends per write, too).
fn frame_bytes<const N: usize>(batch: &[Rec<N>]) -> Result<usize> {
    let element = Element::Records {
        records: batch,
        timestamps: &[],
    };
    let (buf, _) = wire::encode_element(1, &element, Vec::new())
        .map_err(|e| anyhow::anyhow!("serialize a batch: {e}"))?;
    Ok(buf.len())
}

fn run_pair<RS, RC, FS, FC>(
    server: impl FnOnce() -> FS + Send + 'static,
    client: impl FnOnce(SocketAddr) -> FC + Send + 'static,
    addr_rx: std::sync::mpsc::Receiver<SocketAddr>,
) -> Result<(RS, RC)>
where
    FS: Future<Output = RS> + 'static,
    FC: Future<Output = RC> + 'static,
    RS: Send + 'static,
    RC: Send + 'static,
{
    let (ps, pc) = placements();
    let s = LocalExecutorBuilder::new(ps)
        .name("bench-net-rx")
        .spawn(server)
        .map_err(|e| anyhow::anyhow!("start the receiving executor: {e}"))?;
    let addr = addr_rx.recv().context("receiver did not start")?;
    let c = LocalExecutorBuilder::new(pc)
        .name("bench-net-tx")
        .spawn(move || client(addr))
        .map_err(|e| anyhow::anyhow!("start the sending executor: {e}"))?;
    let rc = c.join().map_err(|e| anyhow::anyhow!("sender: {e}"))?;
    let rs = s.join().map_err(|e| anyhow::anyhow!("receiver: {e}"))?;
    Ok((rs, rc))
}

fn raw_run(frame: usize, batches: u64, records_per_batch: u64) -> Result<RunResult> {
    let (tx, rx) = std::sync::mpsc::channel();
    let total = frame as u64 * batches;
    let (received, sent) = run_pair(
        move || async move {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let _ = tx.send(listener.local_addr()?);
            let mut stream = listener.accept().await?;
            let mut buf = vec![0u8; 256 << 10];
            let mut got = 0u64;
            let mut sum = 0u64;
            let mut start = None;
            while got < total {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                start.get_or_insert_with(Instant::now);
                sum = sum.wrapping_add(buf[n - 1] as u64);
                got += n as u64;
            }
            let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
            std::io::Result::Ok((got, secs, sum))
        },
        move |addr| async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let data = vec![7u8; frame];
            for _ in 0..batches {
                stream.write_all(&data).await?;
            }
            stream.flush().await?;
            std::io::Result::Ok(())
        },
        rx,
    )?;
    sent.context("raw sender")?;
    let (bytes, secs, checksum) = received.context("raw receiver")?;
    if bytes != total {
        bail!("raw receiver got {bytes} of {total} bytes");
    }
    Ok(RunResult {
        secs,
        records: records_per_batch * batches,
        bytes,
        recv_buffers_allocated: 0,
        checksum,
    })
}

fn net_run<const N: usize>(
    variant: Variant,
    batches: u64,
    records_per_batch: u64,
    credits: u32,
) -> Result<RunResult> {
    let cfg = config()?;
    let client_cfg = cfg.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let (received, sent) = run_pair(
        move || async move {
            let listener = Listener::bind("127.0.0.1:0".parse().map_err(|_| "addr")?, &cfg)
                .map_err(|e| e.to_string())?;
            let _ = tx.send(listener.local_addr());
            let conn = listener.accept().await.map_err(|e| e.to_string())?;
            let mut rx = conn
                .receiver::<Rec<N>>(1, credits)
                .map_err(|e| e.to_string())?;
            receive::<N>(&mut rx, variant, &conn)
                .await
                .map_err(|e| e.to_string())
        },
        move |addr| async move {
            let conn = sluice_net::connect(addr, &client_cfg)
                .await
                .map_err(|e| e.to_string())?;
            let mut tx = conn.sender::<Rec<N>>(1).map_err(|e| e.to_string())?;
            let batch = records::<N>(records_per_batch);
            for _ in 0..batches {
                let element = Element::Records {
                    records: &batch,
                    timestamps: &[],
                };
                tx.send(element).await.map_err(|e| e.to_string())?;
            }
            tx.send(Element::EndOfInput)
                .await
                .map_err(|e| e.to_string())?;
            drop(tx);
            // Keep the connection until the receiver has everything.
            while !conn.is_closed() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            Result::<_, String>::Ok(())
        },
        rx,
    )?;
    sent.map_err(|e| anyhow::anyhow!("sender: {e}"))?;
    let r = received.map_err(|e| anyhow::anyhow!("receiver: {e}"))?;
    if r.records != batches * records_per_batch {
        bail!(
            "received {} of {} records",
            r.records,
            batches * records_per_batch
        );
    }
    Ok(r)
}

async fn receive<const N: usize>(
    rx: &mut sluice_net::ChannelReceiver<Rec<N>>,
    variant: Variant,
    conn: &sluice_net::Connection,
) -> Result<RunResult, sluice_net::NetError> {
    let mut start = None;
    let (mut records, mut timestamps) = (Vec::new(), Vec::new());
    let mut r = RunResult::default();
    while let Some(e) = rx.recv().await? {
        start.get_or_insert_with(Instant::now);
        if let Received::Records(b) = e {
            r.bytes += b.payload_len() as u64;
            if variant == Variant::Archived {
                let a = b.archived()?;
                r.records += a.records.len() as u64;
                for rec in a.records.iter() {
                    r.checksum = r.checksum.wrapping_add(rec.value.to_native());
                }
            } else {
                b.read_into(&mut records, &mut timestamps)?;
                r.records += records.len() as u64;
                for rec in &records {
                    r.checksum = r.checksum.wrapping_add(rec.value);
                }
            }
        }
    }
    r.secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let stats = conn.stats();
    r.bytes = stats.bytes_in;
    r.recv_buffers_allocated = stats.recv_buffers_allocated;
    Ok(r)
}

fn net_variant(args: &NetBench, variant: Variant) -> Result<RunResult> {
    let (b, r, c) = (args.batches, args.records_per_batch, args.credits);
    match args.record_bytes {
        16 => net_run::<0>(variant, b, r, c),
        32 => net_run::<16>(variant, b, r, c),
        64 => net_run::<48>(variant, b, r, c),
        128 => net_run::<112>(variant, b, r, c),
        256 => net_run::<240>(variant, b, r, c),
        other => bail!("--record-bytes {other}: use 16, 32, 64, 128 or 256"),
    }
}

fn batch_frame_bytes(args: &NetBench) -> Result<usize> {
    let n = args.records_per_batch;
    match args.record_bytes {
        16 => frame_bytes(&records::<0>(n)),
        32 => frame_bytes(&records::<16>(n)),
        64 => frame_bytes(&records::<48>(n)),
        128 => frame_bytes(&records::<112>(n)),
        256 => frame_bytes(&records::<240>(n)),
        other => bail!("--record-bytes {other}: use 16, 32, 64, 128 or 256"),
    }
}

pub fn net(args: &NetBench) -> Result<()> {
    if args.latency {
        if !(args.latency_secs > 0.0 && args.latency_secs <= 3600.0) {
            bail!("--latency-secs {}: between 0 and 3600", args.latency_secs);
        }
        let mut json = crate::bench_net_latency::latency(
            args.latency_events,
            args.latency_secs,
            args.runs,
            args.keys,
            !args.unpinned,
        )?;
        if args.json {
            json["schema"] = "sluice-bench/1".into();
            json["bench"] = "net-latency".into();
            json["runs"] = args.runs.into();
            json["machine"] = serde_json::json!({
                "cpus": sluice::available_cpus().len(),
                "load_avg_1m": load_average(),
            });
            println!("{json}");
        }
        return Ok(());
    }
    let frame = batch_frame_bytes(args)?;
    if frame > (16 << 20) {
        bail!("a batch of {frame} bytes exceeds the 16 MiB frame limit");
    }
    let variants = [Variant::Raw, Variant::Archived, Variant::Owned];
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); variants.len()];
    // A warm-up run of each, not counted.
    for &v in &variants {
        one(args, v, frame, args.batches.min(1000))?;
    }
    for run in 0..args.runs {
        for (i, &v) in variants.iter().enumerate() {
            results[i].push(one(args, v, frame, args.batches)?);
        }
        eprintln!("run {}/{} done", run + 1, args.runs);
    }
    report(args, frame, &variants, &results)
}

fn one(args: &NetBench, v: Variant, frame: usize, batches: u64) -> Result<RunResult> {
    match v {
        Variant::Raw => raw_run(frame, batches, args.records_per_batch),
        _ => net_variant(
            &NetBench {
                batches,
                records_per_batch: args.records_per_batch,
                record_bytes: args.record_bytes,
                credits: args.credits,
                runs: 1,
                json: false,
                latency: false,
                latency_events: 0,
                latency_secs: 0.0,
                keys: 1,
                unpinned: false,
            },
            v,
        ),
    }
}

/// The 1-minute load average, for the record of a noisy machine.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn report(
    args: &NetBench,
    frame: usize,
    variants: &[Variant],
    results: &[Vec<RunResult>],
) -> Result<()> {
    let rps = |r: &RunResult| r.records as f64 / r.secs.max(1e-9);
    let bps = |r: &RunResult| r.bytes as f64 / r.secs.max(1e-9);
    let medians: Vec<(f64, f64)> = results
        .iter()
        .map(|rs| {
            let r: Vec<f64> = rs.iter().map(rps).collect();
            let b: Vec<f64> = rs.iter().map(bps).collect();
            (median(&r), median(&b))
        })
        .collect();
    let records = args.batches * args.records_per_batch;
    eprintln!(
        "\n{} batches of {} records of {} bytes ({} wire bytes per batch), {} runs, medians:",
        args.batches, args.records_per_batch, args.record_bytes, frame, args.runs
    );
    eprintln!("{:<24} {:>12} {:>12}", "variant", "records/s", "MB/s");
    for (v, (r, b)) in variants.iter().zip(&medians) {
        eprintln!("{:<24} {:>12} {:>12.0}", v.name(), human(*r), b / 1e6);
    }
    let raw = medians[0].0;
    let ratios: Vec<f64> = medians[1..].iter().map(|(r, _)| r / raw).collect();
    for (v, ratio) in variants[1..].iter().zip(&ratios) {
        eprintln!("{} / raw: {ratio:.2}", v.name());
    }
    let allocated = results[1..]
        .iter()
        .flatten()
        .map(|r| r.recv_buffers_allocated)
        .max()
        .unwrap_or(0);
    eprintln!(
        "receive buffers allocated per run: at most {allocated} (for {records} records: {:.6} \
         per record)",
        allocated as f64 / records as f64
    );
    if args.json {
        let json = serde_json::json!({
            "schema": "sluice-bench/1",
            "bench": "net",
            "topology": "two pinned glommio executors, one process, loopback TCP",
            "batches": args.batches,
            "records_per_batch": args.records_per_batch,
            "record_bytes": args.record_bytes,
            "wire_bytes_per_batch": frame,
            "credits": args.credits,
            "runs": args.runs,
            "variants": variants.iter().zip(&medians).zip(results).map(|((v, m), rs)| {
                serde_json::json!({
                    "name": v.name(),
                    "records_per_s_median": m.0,
                    "bytes_per_s_median": m.1,
                    "records_per_s": rs.iter().map(rps).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
            "ratio_archived_vs_raw": ratios[0],
            "ratio_owned_vs_raw": ratios[1],
            "recv_buffers_allocated_max": allocated,
            "recv_buffer_allocations_per_record": allocated as f64 / records as f64,
            "machine": {
                "cpus": sluice::available_cpus().len(),
                "load_avg_1m": load_average(),
            },
        });
        println!("{json}");
    }
    Ok(())
}
