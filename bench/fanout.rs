//! The queueing half of fan-out, without sockets: one message encoded once
//! and its shared bytes queued on 1,000 members' output queues; one frame
//! queued and written per member (a quiet delivery: `send` in the server);
//! and queues drained through `write_vectored` (`sendmsg`) into a sink (the
//! write path's batching).

use bytes::Bytes;
use chinwag::{
    wire::{Encoded, Encoding, Msg, ServerFrame},
    OutQueue,
};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::io::{self, IoSlice, Write};

/// Accepts everything, like a socket with room, and counts the calls.
struct Sink(usize);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += 1;
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0 += 1;
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn fanout(c: &mut Criterion) {
    const MEMBERS: usize = 1000;
    let text = "x".repeat(100);
    let mut queues: Vec<OutQueue> = (0..MEMBERS).map(|_| OutQueue::default()).collect();
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("encode_once_queue_1000", |b| {
        let mut seq = 0;
        b.iter(|| {
            seq += 1;
            let mut frame = Msg::message("general", "alice", text.clone());
            frame.seq = seq;
            frame.ts = 1_732_250_000_123;
            let wire = Encoded::encode(&frame, true, false);
            let bytes: &Bytes = wire.get(Encoding::Json).unwrap();
            for q in queues.iter_mut() {
                q.push(bytes.clone());
            }
            for q in queues.iter_mut() {
                q.clear();
            }
        })
    });
    g.finish();

    // A delivery at a quiet moment: each member's queue gets one frame and
    // is written at once (one `send` each in the server), so a queue's
    // ring is taken and given back per delivery.
    let mut g = c.benchmark_group("deliver");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("one_frame_each_1000", |b| {
        let wire = Encoded::encode(&Msg::message("general", "alice", text.clone()), true, false);
        let bytes = wire.get(Encoding::Json).unwrap().clone();
        let mut sink = Sink(0);
        b.iter(|| {
            for q in queues.iter_mut() {
                q.push(bytes.clone());
            }
            for q in queues.iter_mut() {
                black_box(q.write_to(&mut sink).unwrap());
            }
        })
    });
    g.finish();

    // Draining: 16 queued frames per member written with one vectored write.
    let frame =
        Encoded::encode(&ServerFrame::Read { room: "general", seq: 1 }, true, false).json.unwrap();
    let mut g = c.benchmark_group("outq");
    g.throughput(Throughput::Elements(16));
    g.bench_function("write_16_frames", |b| {
        let mut q = OutQueue::default();
        let mut sink = Sink(0);
        b.iter(|| {
            for _ in 0..16 {
                q.push(frame.clone());
            }
            black_box(q.write_to(&mut sink).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
