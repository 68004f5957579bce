//! The benchmark's own bookkeeping, checked on a short in-process run: if these figures were
//! wrong, every number `confab bench` prints would be too.

use std::time::Duration;

use crate::cli::bench::{self, BenchEnv, FanoutOpts, ServerChoice};

fn in_process() -> BenchEnv {
    BenchEnv {
        server: ServerChoice::InProcess,
        timeout: Duration::from_secs(60),
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_fanout_delivers_everything_once_and_in_order() {
    let opts = FanoutOpts {
        sessions: 1,
        members: 5,
        senders: 5,
        messages: 20,
        rate: None,
        window: 0,
        open_loop: true,
    };
    let report = bench::fanout(&in_process(), &opts).await.unwrap();
    assert_eq!(report.expected, 5 * 5 * 20);
    assert_eq!(report.delivered, report.expected);
    assert_eq!(report.lost, 0);
    assert_eq!(report.duplicated, 0);
    assert_eq!(report.out_of_order, 0);
    assert_eq!(report.disconnected, 0);
    assert_eq!(report.per_sender.len(), 5);
    assert!(report.per_sender.iter().all(|s| s.sent == 20));
    assert_eq!(report.latency.samples, report.expected);
    assert!(report.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_sessions_run_keeps_every_session_apart() {
    let opts = FanoutOpts {
        sessions: 3,
        members: 3,
        senders: 2,
        messages: 10,
        rate: None,
        window: 4,
        open_loop: false,
    };
    let report = bench::sessions(&in_process(), &opts).await.unwrap();
    assert_eq!(report.expected, 3 * 3 * 2 * 10);
    assert_eq!(report.delivered, report.expected);
    assert_eq!(report.per_sender.len(), 3 * 2);
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_join_seats_everyone() {
    let opts = bench::JoinOpts {
        members: 20,
        concurrency: Some(20),
    };
    let report = bench::join(&in_process(), &opts).await.unwrap();
    assert_eq!(report.welcomed, 20);
    assert_eq!(report.seated, 20);
    assert_eq!(report.failures, 0);
    assert_eq!(report.dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_dm_runs_ack_and_show_each_message_once_whichever_way_they_go() {
    for via in [
        super::dm::DmPath::Direct,
        super::dm::DmPath::Server,
        super::dm::DmPath::Coordinator,
    ] {
        let opts = bench::DmOpts {
            pairs: 2,
            messages: 10,
            via,
        };
        let report = bench::dm(&in_process(), &opts).await.unwrap();
        assert_eq!(report.sent, 2 * 2 * 10, "{via:?}");
        assert_eq!(report.acked, report.sent, "{via:?}");
        assert_eq!(report.received, report.sent, "{via:?}");
        assert_eq!(report.duplicated, 0, "{via:?}");
        assert_eq!(report.out_of_order, 0, "{via:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_coordinator_run_answers_every_request_sealed_or_plain() {
    for plain in [false, true] {
        let opts = bench::RequestsOpts {
            requests: 200,
            sockets: 2,
            window: 8,
            sessions: 3,
            plain,
        };
        let report = bench::requests(&in_process(), &opts).await.unwrap();
        for op in &report.ops {
            assert_eq!(op.answered, 200, "{op:?}");
            assert_eq!(op.errors, 0, "{op:?}");
        }
    }
}

/// Issue 11's case: 50 members, every one writing 200 lines at once with no window. Before flow
/// control one run in three dropped members as too slow within milliseconds of each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_fanout_drops_no_one_and_loses_nothing_run_after_run() {
    let opts = FanoutOpts {
        open_loop: true,
        ..FanoutOpts::default()
    };
    for run in 0..20 {
        let report = bench::fanout(&in_process(), &opts).await.unwrap();
        assert_eq!(report.expected, 50 * 50 * 200);
        assert_eq!(report.disconnected, 0, "run {run}: {report:?}");
        assert_eq!(report.delivered, report.expected, "run {run}");
        assert!(report.is_clean(), "run {run}: {report:?}");
    }
}
