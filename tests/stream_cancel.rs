//! A cancelled stream stops: its own test binary, so that the process's CPU time measures only it.
mod common;

use std::time::{Duration, Instant};

use common::*;
use rotations::engine::{BatchLimits, Engine};
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_server::RotationService;
use rotations::proto::RotationRequest;
use rotations::service::convert::RequestLimits;
use rotations::service::RotationServiceImpl;
use tokio_stream::StreamExt;
use tonic::Request;

/// CPU time this process has used (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn her(n: usize) -> RotationRequest {
    let sentences = (0..n).map(|i| format!("On day {i} we saw her at the market near the old station.")).collect();
    RotationRequest { sentences, target: Some(Target::TargetText(" her".into())), ..Default::default() }
}

/// A client that cancels a 300k-sentence stream right away leaves no work behind: the slot is
/// held until the work has stopped, and once it is free the process is idle. Before, the whole
/// corpus was tokenized up front, on after the client had gone and after its slot was freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_stops_and_holds_its_slot_until_then() {
    let (model, computed) = slow_model(Duration::from_millis(20));
    let limits = RequestLimits { max_sentences: 10, max_stream_sentences: 1_000_000 };
    let svc =
        RotationServiceImpl::ready(Engine::new(model, BatchLimits { max_tokens: 4096, max_sentences: 8 }), limits, 4);
    let request = her(300_000);

    // Cancelled while the call is being set up (a deadline of 50 ms, or the client going away).
    let call = svc.stream_rotations(Request::new(request.clone()));
    if let Ok(response) = tokio::time::timeout(Duration::from_millis(50), call).await {
        drop(response);
    }
    idle_once_the_slots_are_free(&svc).await;

    // Cancelled after its first chunk, which comes without tokenizing the whole corpus first.
    let started = Instant::now();
    let mut stream = svc.stream_rotations(Request::new(request)).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "the first chunk took {:?}", started.elapsed());
    drop(stream);
    idle_once_the_slots_are_free(&svc).await;
    let sentences = computed.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Within one chunk: the delivered chunk, two in flight, and the batch on the model.
    let after = computed.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after, sentences, "sentences computed after the slots were freed");
    assert!(after <= 8 * 4, "{after} sentences computed for a stream cancelled after one chunk");
}

/// Waits (at most 5 s) for every slot to be free, then checks that the process is idle: no work
/// goes on once a request has given its slot back.
async fn idle_once_the_slots_are_free(svc: &RotationServiceImpl) {
    let started = Instant::now();
    while svc.in_flight() > 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the slots are still held after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = cpu_time();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = cpu_time().saturating_sub(cpu);
    assert!(busy < Duration::from_millis(150), "{busy:?} of CPU in the 500 ms after the slots were freed");
}
