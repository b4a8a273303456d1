//! Prints how long the DAG layout takes on CI-shaped graphs (`cargo bench -p
//! gantry-layout`). The dashboard's budget is 200 ms for 5,000 tasks.

use std::time::{Duration, Instant};

use gantry_layout::{Options, critical_path, layout, sample_dag};

fn main() {
    let options = Options::default();
    for &(tasks, stages) in &[
        (100, 5),
        (1_000, 12),
        (5_000, 20),
        (5_000, 50),
        (10_000, 30),
    ] {
        let edges = sample_dag(tasks, stages, 42);
        // One warm-up, then the median of several runs.
        let first = layout(tasks, &edges, &options);
        let runs = if tasks > 5_000 { 3 } else { 7 };
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(layout(tasks, &edges, &options));
                start.elapsed()
            })
            .collect();
        times.sort();
        let durations: Vec<u64> = (0..tasks as u64).map(|v| 1 + v % 97).collect();
        let start = Instant::now();
        std::hint::black_box(critical_path(tasks, &edges, &durations));
        let path = start.elapsed();
        println!(
            "layout {tasks:>6} tasks {:>6} edges {stages:>3} stages: median {:>8.2} ms (min {:.2} ms), {} crossings left; critical path {:.2} ms",
            edges.len(),
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            first.crossings,
            path.as_secs_f64() * 1e3,
        );
    }
}
