//! The transport over real loopback TCP, between two glommio executors on two threads: batches
//! in order and exactly once on multiplexed channels, flow control bounding a slow receiver's
//! memory, cancellation of a blocked sender, and the security cases (R12): wrong secret or
//! cluster, garbage, frames before the handshake, a 4 GiB announced length, a replayed nonce,
//! silent peers timing out, a flood of half-open connections, a non-loopback bind.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use sluice_net::wire::{Handshake, encode_archive};
use sluice_net::{
    ClusterSecret, Element, FrameKind, Listener, NetConfig, NetError, NetStats, Received,
    WatermarkStatus, WireBarrier, connect,
};

fn config(secret: &ClusterSecret) -> NetConfig {
    let mut c = NetConfig::new(secret.clone(), "test-cluster", "node");
    c.handshake_timeout = Duration::from_secs(2);
    c
}

fn secret() -> ClusterSecret {
    ClusterSecret::new(*b"a shared secret of enough bytes").unwrap()
}

/// Runs `server` on an executor thread with a bound listener, and `client` (given its address)
/// on another; returns what both returned.
fn two_executors<S, C, FS, FC, RS, RC>(cfg: NetConfig, server: S, client: C) -> (RS, RC)
where
    S: FnOnce(Listener) -> FS + Send + 'static,
    FS: Future<Output = RS> + 'static,
    RS: Send + 'static,
    C: FnOnce(SocketAddr) -> FC + Send + 'static,
    FC: Future<Output = RC> + 'static,
    RC: Send + 'static,
{
    let (addr_tx, addr_rx) = mpsc::channel();
    let server = LocalExecutorBuilder::new(Placement::Unbound)
        .name("net-server")
        .spawn(move || async move {
            let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), &cfg).unwrap();
            addr_tx.send(listener.local_addr()).unwrap();
            server(listener).await
        })
        .unwrap();
    let addr = addr_rx.recv().unwrap();
    let client = LocalExecutorBuilder::new(Placement::Unbound)
        .name("net-client")
        .spawn(move || async move { client(addr).await })
        .unwrap();
    let rc = client.join().unwrap();
    let rs = server.join().unwrap();
    (rs, rc)
}

/// What a receiver saw on one channel, compactly: records by value, control elements by name.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Records(Vec<(u64, u64)>, Vec<i64>),
    Watermark(i64),
    Status(WatermarkStatus),
    Barrier(u64),
    End,
}

fn script(channel: u64, batches: u64) -> Vec<Seen> {
    let mut out = Vec::new();
    for b in 0..batches {
        let n = 1 + (b * 37 + channel) % 700;
        let recs: Vec<(u64, u64)> = (0..n).map(|i| (channel, b * 1000 + i)).collect();
        let ts = if b % 3 == 0 {
            vec![]
        } else {
            (0..n as i64).collect()
        };
        out.push(Seen::Records(recs, ts));
        if b % 4 == 0 {
            out.push(Seen::Watermark(b as i64));
        }
        if b % 10 == 5 {
            out.push(Seen::Barrier(b));
        }
        if b % 13 == 7 {
            out.push(Seen::Status(WatermarkStatus::Idle));
            out.push(Seen::Status(WatermarkStatus::Active));
        }
    }
    out.push(Seen::End);
    out
}

async fn send_script(
    sender: &mut sluice_net::ChannelSender<(u64, u64)>,
    script: &[Seen],
) -> Result<(), NetError> {
    for s in script {
        let e = match s {
            Seen::Records(r, t) => Element::Records {
                records: r,
                timestamps: t,
            },
            Seen::Watermark(w) => Element::Watermark(*w),
            Seen::Status(st) => Element::Status(*st),
            Seen::Barrier(id) => Element::Barrier(WireBarrier {
                checkpoint_id: *id,
                timestamp_ms: 1,
            }),
            Seen::End => Element::EndOfInput,
        };
        sender.send(e).await?;
    }
    Ok(())
}

async fn receive_all(
    rx: &mut sluice_net::ChannelReceiver<(u64, u64)>,
    archived_path: bool,
) -> Result<Vec<Seen>, NetError> {
    let mut seen = Vec::new();
    let (mut r, mut t) = (Vec::new(), Vec::new());
    while let Some(e) = rx.recv().await? {
        seen.push(match e {
            Received::Records(b) => {
                if archived_path {
                    let a = b.archived()?;
                    r = a
                        .records
                        .iter()
                        .map(|p| (p.0.to_native(), p.1.to_native()))
                        .collect();
                    t = a.timestamps.iter().map(|x| x.to_native()).collect();
                } else {
                    b.read_into(&mut r, &mut t)?;
                }
                Seen::Records(r.clone(), t.clone())
            }
            Received::Watermark(w) => Seen::Watermark(w),
            Received::Status(s) => Seen::Status(s),
            Received::Barrier(b) => Seen::Barrier(b.checkpoint_id),
            Received::EndOfInput => Seen::End,
        });
    }
    Ok(seen)
}

#[test]
fn three_multiplexed_channels_deliver_in_order_exactly_once() {
    multiplexed_channels(config(&secret()));
}

/// With a 4 KiB read stage, the script's record frames are by turns small (read through the
/// stage), larger than a quarter of it (read in place, after which the stage reads a quarter
/// at a time) and larger than all of it, between small control frames.
#[test]
fn large_and_small_frames_interleave_through_a_small_read_stage() {
    let mut cfg = config(&secret());
    cfg.read_chunk_bytes = 4096;
    multiplexed_channels(cfg);
}

fn multiplexed_channels(cfg: NetConfig) {
    const CHANNELS: u64 = 3;
    const BATCHES: u64 = 120;
    let client_cfg = cfg.clone();
    let (seen, stats) = two_executors(
        cfg,
        |listener| async move {
            let conn = listener.accept().await.unwrap();
            assert_eq!(conn.peer_node(), "node");
            let mut tasks = Vec::new();
            for c in 0..CHANNELS {
                // Few credits, so that flow control is exercised throughout.
                let mut rx = conn.receiver::<(u64, u64)>(c as u32, 2).unwrap();
                tasks.push(glommio::spawn_local(async move {
                    receive_all(&mut rx, c == 1).await.unwrap()
                }));
            }
            let mut seen = Vec::new();
            for t in tasks {
                seen.push(t.await);
            }
            seen
        },
        move |addr| async move {
            let conn = connect(addr, &client_cfg).await.unwrap();
            assert_eq!(conn.peer_node(), "node");
            let mut tasks = Vec::new();
            for c in 0..CHANNELS {
                let mut tx = conn.sender::<(u64, u64)>(c as u32).unwrap();
                tasks.push(glommio::spawn_local(async move {
                    send_script(&mut tx, &script(c, BATCHES)).await.unwrap();
                }));
            }
            for t in tasks {
                t.await;
            }
            conn.stats()
        },
    );
    for (c, seen) in seen.iter().enumerate() {
        assert_eq!(seen, &script(c as u64, BATCHES), "channel {c}");
    }
    assert!(stats.frames_out > CHANNELS * BATCHES);
}

#[test]
fn a_slow_receiver_bounds_memory_and_stalls_its_sender() {
    const CREDITS: u32 = 4;
    const BATCHES: u64 = 150;
    let mut cfg = config(&secret());
    cfg.out_bytes_max = 256 << 10;
    let buffer = cfg.buffer_bytes as usize;
    let out_max = cfg.out_bytes_max;
    let client_cfg = cfg.clone();
    let ((queued_max, got), (out_seen, blocked_sends)) = two_executors(
        cfg,
        |listener| async move {
            let conn = listener.accept().await.unwrap();
            let mut rx = conn.receiver::<(u64, u64)>(0, CREDITS).unwrap();
            let mut got = 0u64;
            let mut r = Vec::new();
            let mut t = Vec::new();
            while let Some(e) = rx.recv().await.unwrap() {
                if let Received::Records(b) = e {
                    b.read_into(&mut r, &mut t).unwrap();
                    got += r.len() as u64;
                    // Slow: 2 ms per batch, while the sender could go far faster.
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
            }
            (rx.queued_bytes_max(), got)
        },
        move |addr| async move {
            let conn = connect(addr, &client_cfg).await.unwrap();
            let mut tx = conn.sender::<(u64, u64)>(0).unwrap();
            // 2,000 pairs: a 32 KiB payload, half a credit's buffer.
            let recs: Vec<(u64, u64)> = (0..2000).map(|i| (i, i)).collect();
            let mut blocked = 0;
            for _ in 0..BATCHES {
                let start = Instant::now();
                tx.send(Element::Records {
                    records: &recs,
                    timestamps: &[],
                })
                .await
                .unwrap();
                if start.elapsed() > Duration::from_millis(1) {
                    blocked += 1;
                }
            }
            tx.send(Element::EndOfInput).await.unwrap();
            (conn.stats().out_bytes_max_seen, blocked)
        },
    );
    assert_eq!(got, BATCHES * 2000);
    let bound = CREDITS as usize * buffer;
    eprintln!(
        "receiver queued at most {queued_max} bytes (bound {bound}); sender queued at most \
         {out_seen} (bound {out_max} + a frame); {blocked_sends} of {BATCHES} sends waited"
    );
    assert!(queued_max <= bound, "{queued_max} > {bound}");
    assert!(out_seen <= out_max + 40_000, "{out_seen}");
    assert!(blocked_sends > BATCHES / 2, "{blocked_sends}");
}

#[test]
fn a_blocked_sender_is_cancelled_by_the_job_flag() {
    let cfg = config(&secret());
    let client_cfg = cfg.clone();
    let (_, (result, waited)) = two_executors(
        cfg,
        |listener| async move {
            let conn = listener.accept().await.unwrap();
            // One credit, never read: the second batch blocks.
            let _rx = conn.receiver::<(u64, u64)>(0, 1).unwrap();
            glommio::timer::sleep(Duration::from_millis(2500)).await;
        },
        move |addr| async move {
            let conn = connect(addr, &client_cfg).await.unwrap();
            let mut tx = conn.sender::<(u64, u64)>(0).unwrap();
            let cancelled = Arc::new(AtomicBool::new(false));
            tx.set_cancel(cancelled.clone());
            let recs = [(1u64, 1u64); 10];
            let batch = Element::Records {
                records: &recs[..],
                timestamps: &[],
            };
            tx.send(batch).await.unwrap();
            let flag = cancelled.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                flag.store(true, Ordering::Relaxed);
            })
            .detach();
            let start = Instant::now();
            let r = tx.send(batch).await;
            (r, start.elapsed())
        },
    );
    assert!(matches!(result, Err(NetError::Cancelled)), "{result:?}");
    assert!(waited >= Duration::from_millis(90), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[test]
fn a_receiver_sees_its_sender_disconnect_as_an_error() {
    let cfg = config(&secret());
    let client_cfg = cfg.clone();
    let (result, ()) = two_executors(
        cfg,
        |listener| async move {
            let conn = listener.accept().await.unwrap();
            let mut rx = conn.receiver::<u64>(0, 4).unwrap();
            let first = rx.recv().await.unwrap();
            assert!(matches!(first, Some(Received::Watermark(5))));
            rx.recv().await.map(|_| ())
        },
        move |addr| async move {
            let conn = connect(addr, &client_cfg).await.unwrap();
            let mut tx = conn.sender::<u64>(0).unwrap();
            tx.send(Element::Watermark(5)).await.unwrap();
            // Dropped without an end of input: a failed sender.
        },
    );
    assert!(
        matches!(result, Err(NetError::Disconnected { .. })),
        "{result:?}"
    );
}

/// Waits (at most 10 s) until `done` is set, then a little longer for the listener's last
/// handshake task to count its peer.
async fn until(done: &AtomicBool) {
    let start = Instant::now();
    while !done.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(10) {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    glommio::timer::sleep(Duration::from_millis(50)).await;
}

/// Runs a listener until a plain-thread client `client` is done; returns the listener's stats.
fn listener_vs_raw_client(
    cfg: NetConfig,
    client: impl FnOnce(SocketAddr) + Send + 'static,
) -> NetStats {
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let (stats, ()) = two_executors(
        cfg,
        move |listener| async move {
            until(&done).await;
            listener.stats()
        },
        move |addr| async move {
            let t = std::thread::spawn(move || client(addr));
            while !t.is_finished() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            t.join().unwrap();
            done2.store(true, Ordering::Release);
        },
    );
    stats
}

/// Reads until the server closes the stream; true if it did within two seconds.
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn hello_frame(cluster: &str, nonce: [u8; 32]) -> Vec<u8> {
    let hello = Handshake::Hello {
        version: 1,
        cluster: cluster.into(),
        node: "raw".into(),
        nonce,
        buffer_bytes: 65536,
        frame_payload_max: 1 << 20,
    };
    encode_archive(FrameKind::Handshake, 0, &hello, Vec::new())
        .unwrap()
        .0
}

#[test]
fn a_wrong_secret_or_cluster_is_refused_both_ways() {
    let cfg = config(&secret());
    let mut wrong_secret = cfg.clone();
    wrong_secret.secret = ClusterSecret::new(*b"another secret of enough bytes").unwrap();
    let mut wrong_cluster = cfg.clone();
    wrong_cluster.cluster = "other".into();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let (stats, results) = two_executors(
        cfg,
        move |listener| async move {
            until(&done).await;
            listener.stats()
        },
        move |addr| async move {
            let a = connect(addr, &wrong_secret).await.map(|_| ());
            let b = connect(addr, &wrong_cluster).await.map(|_| ());
            done2.store(true, Ordering::Release);
            (a, b)
        },
    );
    // The server proves itself first, so a client with a wrong secret refuses the server.
    assert!(
        matches!(results.0, Err(NetError::Auth { .. })),
        "{:?}",
        results.0
    );
    assert!(results.1.is_err(), "{:?}", results.1);
    assert_eq!(stats.auth_failures, 1, "{stats:?}"); // the wrong cluster
    assert_eq!(stats.accepted, 0, "{stats:?}");
}

#[test]
fn a_client_with_a_wrong_secret_is_refused_by_the_server() {
    let cfg = config(&secret());
    let stats = listener_vs_raw_client(cfg, |addr| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&hello_frame("test-cluster", [3; 32])).unwrap();
        // Read the challenge, answer with a proof made with another secret.
        let mut challenge = vec![0u8; 16];
        s.read_exact(&mut challenge).unwrap();
        let len = u32::from_le_bytes(challenge[4..8].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; len.div_ceil(16) * 16];
        s.read_exact(&mut rest).unwrap();
        let response = Handshake::Response { proof: [0x55; 32] };
        let frame = encode_archive(FrameKind::Handshake, 0, &response, Vec::new())
            .unwrap()
            .0;
        s.write_all(&frame).unwrap();
        assert!(closed_by_server(&mut s));
    });
    assert_eq!(stats.auth_failures, 1, "{stats:?}");
}

#[test]
fn garbage_and_early_frames_and_a_4_gib_length_are_refused_before_allocating() {
    let cfg = config(&secret());
    let stats = listener_vs_raw_client(cfg, |addr| {
        // Garbage.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(closed_by_server(&mut s));
        // A data frame before the handshake.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut frame = Vec::new();
        sluice_net::frame::encode(FrameKind::Records, 0, &[0; 32], &mut frame);
        s.write_all(&frame).unwrap();
        assert!(closed_by_server(&mut s));
        // A handshake frame announcing 4 GiB: refused from the header alone (the process
        // would abort if it tried to allocate it).
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut frame = hello_frame("test-cluster", [1; 32]);
        frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        s.write_all(&frame[..16]).unwrap();
        assert!(closed_by_server(&mut s));
    });
    assert_eq!(stats.protocol_errors, 3, "{stats:?}");
    assert_eq!(stats.accepted, 0, "{stats:?}");
}

#[test]
fn a_replayed_hello_nonce_is_refused() {
    let cfg = config(&secret());
    let stats = listener_vs_raw_client(cfg, |addr| {
        let hello = hello_frame("test-cluster", [9; 32]);
        let mut first = std::net::TcpStream::connect(addr).unwrap();
        first.write_all(&hello).unwrap();
        let mut header = [0u8; 16];
        first.read_exact(&mut header).unwrap();
        assert_eq!(header[2], FrameKind::Handshake as u8, "a challenge");
        let mut again = std::net::TcpStream::connect(addr).unwrap();
        again.write_all(&hello).unwrap();
        assert!(closed_by_server(&mut again));
    });
    assert_eq!(stats.auth_failures, 1, "{stats:?}");
}

#[test]
fn silent_and_half_open_peers_time_out_and_cannot_exhaust_the_listener() {
    let mut cfg = config(&secret());
    cfg.handshake_timeout = Duration::from_millis(300);
    cfg.handshakes_pending_max = 16;
    let client_cfg = cfg.clone();
    let (stats, good) = two_executors(
        cfg,
        |listener| async move {
            let conn = listener.accept().await;
            (listener.stats(), conn.is_ok())
        },
        move |addr| async move {
            let flood = std::thread::spawn(move || {
                let mut streams: Vec<_> = (0..100)
                    .map(|_| std::net::TcpStream::connect(addr).unwrap())
                    .collect();
                // Every one is closed by the server: at once (busy) or after the timeout.
                streams.iter_mut().all(closed_by_server)
            });
            while !flood.is_finished() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            assert!(flood.join().unwrap(), "a half-open connection stayed open");
            // The listener still serves a real peer.
            connect(addr, &client_cfg).await.is_ok()
        },
    );
    let (stats, accepted) = stats;
    assert!(good && accepted);
    assert_eq!(
        stats.handshake_timeouts + stats.refused_busy,
        100,
        "{stats:?}"
    );
    assert!(
        stats.handshake_timeouts <= 100 && stats.handshake_timeouts >= 16,
        "{stats:?}"
    );
}

#[test]
fn listening_beyond_loopback_needs_an_explicit_opt_in() {
    let cfg = config(&secret());
    let (err, ()) = two_executors(
        cfg.clone(),
        move |_listener| async move {
            Listener::bind("0.0.0.0:0".parse().unwrap(), &cfg)
                .err()
                .map(|e| e.to_string())
        },
        |_| async {},
    );
    assert!(err.unwrap().contains("not a loopback address"));
}

#[test]
fn control_messages_cross_in_order_beside_data() {
    use sluice_net::wire::Control;
    let cfg = config(&secret());
    let client_cfg = cfg.clone();
    let (got, ()) = two_executors(
        cfg,
        |listener| async move {
            let conn = listener.accept().await.unwrap();
            let mut rx = conn.receiver::<u64>(0, 4).unwrap();
            let mut got = Vec::new();
            while let Some(m) = conn.recv_control().await.unwrap() {
                let last = matches!(m, Control::Goodbye { .. });
                got.push(m);
                if last {
                    break;
                }
            }
            assert!(matches!(
                rx.recv().await.unwrap(),
                Some(Received::EndOfInput)
            ));
            got
        },
        move |addr| async move {
            let conn = connect(addr, &client_cfg).await.unwrap();
            let mut tx = conn.sender::<u64>(0).unwrap();
            for sequence in 0..3 {
                conn.send_control(&Control::Heartbeat { sequence }).unwrap();
            }
            tx.send(Element::EndOfInput).await.unwrap();
            let bye = Control::Goodbye {
                reason: "done".into(),
            };
            conn.send_control(&bye).unwrap();
            while !conn.is_closed() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        },
    );
    assert_eq!(got.len(), 4);
    assert_eq!(got[2], sluice_net::wire::Control::Heartbeat { sequence: 2 });
}
