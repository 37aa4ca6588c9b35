//! `agent-bench smoke`: a few seconds on SQLite, so that the harness cannot silently rot (the bench
//! crate's tests run it).

use std::path::PathBuf;
use std::time::Duration;

use crate::load::{Mode, closed_loop, open_loop};
use crate::mock_model::{MockModel, model_env, start_mock};
use crate::processes::{rss_kib, start_server};

pub async fn smoke(bin: PathBuf) {
    let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 10 }, 0).await;
    let s = start_server(&bin, &model_env(mock));
    let pid = s.child.id();
    let st = closed_loop(&s.url, Some(pid), 4, 2, Mode::Json).await;
    let streamed = closed_loop(&s.url, Some(pid), 2, 1, Mode::Streamed).await;
    let open = open_loop(&s.url, 100.0, 1).await;
    let (rss, _) = rss_kib(pid);
    println!(
        "smoke: {} turns ({:.0}/s, p99 {:.2} ms, {:.0} turns/CPU-s), {} streamed, {} open-loop, RSS {:.1} MiB, errors {}",
        st.ok,
        st.rate(),
        st.p(0.99) / 1000.0,
        st.ok as f64 / st.cpu.max(0.001),
        streamed.ok,
        open.ok,
        rss as f64 / 1024.0,
        st.errors + streamed.errors + open.errors
    );
    assert!(st.ok > 0 && streamed.ok > 0 && open.ok > 0 && rss > 0);
    assert_eq!(st.errors + streamed.errors + open.errors, 0);
}
