//! The load view: per-second charts of the last five minutes (arrivals, completions,
//! queue depth per queue, queue wait p99), drawn as bars so bursts stand out as spikes,
//! and the workers list with heartbeat age.
//!
//! Every chart takes a plain series of `(second, value)`; today the series come from
//! [`Stats`] (the event log and fleet polling). Per-queue and per-tenant history from the
//! server plugs in as more series of the same shape.

use std::collections::BTreeMap;

use leptos::prelude::*;

use crate::stats::{Buckets, Stats, WINDOW_SECS};
use crate::time;

/// One named line of values, one per second, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

/// Lays the buckets on a fixed window ending now, so quiet seconds show as zero.
fn window(buckets: &Buckets, value: impl Fn(&crate::stats::Bucket) -> Option<f64>) -> Vec<f64> {
    let end = (time::now() / 1000.0).floor() * 1000.0;
    let start = end - (WINDOW_SECS as f64 - 1.0) * 1000.0;
    let mut out = vec![0.0; WINDOW_SECS];
    let mut last: Option<f64> = None;
    for b in &buckets.0 {
        if b.at < start || b.at > end {
            continue;
        }
        let i = ((b.at - start) / 1000.0) as usize;
        if let Some(v) = value(b) {
            out[i] = v;
            last = Some(v);
        } else if let Some(v) = last {
            // A gauge (queue depth) holds its last sample until the next one.
            out[i] = v;
        }
    }
    out
}

#[component]
pub fn LoadView() -> impl IntoView {
    let stats = expect_context::<Stats>();
    let arrivals = Memo::new(move |_| {
        stats.buckets.with(|b| {
            vec![Series {
                name: "arrivals".to_owned(),
                values: window(b, |x| Some(f64::from(x.arrivals))),
            }]
        })
    });
    let completions = Memo::new(move |_| {
        stats.buckets.with(|b| {
            vec![Series {
                name: "completions".to_owned(),
                values: window(b, |x| Some(f64::from(x.completions))),
            }]
        })
    });
    let waits = Memo::new(move |_| {
        stats.buckets.with(|b| {
            vec![Series {
                name: "wait p99 (ms)".to_owned(),
                values: window(b, |x| (!x.waits.is_empty()).then(|| x.wait_p99())),
            }]
        })
    });
    let depth = Memo::new(move |_| {
        stats.buckets.with(|b| {
            let mut names: BTreeMap<String, ()> = BTreeMap::new();
            for bucket in &b.0 {
                if let Some(d) = &bucket.depth {
                    for name in d.keys() {
                        names.insert(name.clone(), ());
                    }
                }
            }
            names
                .into_keys()
                .map(|name| Series {
                    values: window(b, |x| {
                        x.depth
                            .as_ref()
                            .map(|d| d.get(&name).copied().unwrap_or(0) as f64)
                    }),
                    name,
                })
                .collect::<Vec<_>>()
        })
    });
    view! {
        <div class="load-view" data-testid="load-view">
            <div class="toolbar">
                <h2>"Load"</h2>
                <span class="muted">"last 5 minutes, per second, all tenants"</span>
            </div>
            <div class="charts">
                <Chart title="Arrivals / s" series=arrivals unit="" />
                <Chart title="Completions / s" series=completions unit="" />
                <Chart title="Queue depth" series=depth unit="" />
                <Chart title="Queue wait p99" series=waits unit="ms" />
            </div>
            <WorkersTable />
        </div>
    }
}

#[component]
pub fn WorkersView() -> impl IntoView {
    view! {
        <div class="workers-view">
            <div class="toolbar"><h2>"Workers"</h2></div>
            <WorkersTable />
        </div>
    }
}

#[component]
fn WorkersTable() -> impl IntoView {
    let stats = expect_context::<Stats>();
    let rows = move || {
        stats.fleet.with(|f| {
            f.as_ref()
                .map(|f| f.workers.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|w| {
                    let age = time::ms(Some(&w.last_heartbeat_at)).map(|t| time::duration(time::now() - t));
                    let state = w.state.clone();
                    view! {
                        <tr data-testid="worker-row">
                            <td>{w.name.clone()}</td>
                            <td>{w.kind.clone()}</td>
                            <td><span class=format!("badge worker-{state}")>{state.clone()}</span></td>
                            <td>{w.queues.join(", ")}</td>
                            <td>{w.capacity}</td>
                            <td>{age}</td>
                        </tr>
                    }
                })
                .collect_view()
        })
    };
    view! {
        <table class="workers" data-testid="workers-table">
            <thead><tr><th>"Worker"</th><th>"Kind"</th><th>"State"</th><th>"Queues"</th><th>"Capacity"</th><th>"Heartbeat age"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

/// Bars per second, one colour per series (stacked side by side would hide spikes; the
/// series are drawn over each other with transparency instead).
#[component]
fn Chart(title: &'static str, series: Memo<Vec<Series>>, unit: &'static str) -> impl IntoView {
    const W: f64 = 600.0;
    const H: f64 = 140.0;
    let max = Memo::new(move |_| {
        series.with(|s| {
            s.iter()
                .flat_map(|s| s.values.iter().copied())
                .fold(0.0f64, f64::max)
        })
    });
    let bars = move || {
        let top = max.get().max(1.0);
        series.with(|all| {
            all.iter()
                .enumerate()
                .map(|(k, s)| {
                    let step = W / s.values.len().max(1) as f64;
                    let mut d = String::new();
                    for (i, v) in s.values.iter().enumerate() {
                        if *v > 0.0 {
                            let h = v / top * (H - 4.0);
                            d.push_str(&format!(
                                "M{:.1},{:.1}h{:.1}v{:.1}h{:.1}z",
                                i as f64 * step,
                                H - h,
                                (step - 0.5).max(0.5),
                                h,
                                -(step - 0.5).max(0.5)
                            ));
                        }
                    }
                    view! { <path d=d class=format!("bars c{}", k % 6) /> }
                })
                .collect_view()
        })
    };
    let legend = move || {
        series.with(|all| {
            all.iter()
                .enumerate()
                .map(|(k, s)| {
                    let latest = s.values.last().copied().unwrap_or(0.0);
                    view! { <span class=format!("key c{}", k % 6)>{format!("{} {latest:.0}{unit}", s.name)}</span> }
                })
                .collect_view()
        })
    };
    view! {
        <figure class="chart card" data-testid="chart">
            <figcaption>
                <strong>{title}</strong>
                <span class="muted">{move || format!(" peak {:.0}{unit}", max.get())}</span>
                <span class="legend">{legend}</span>
            </figcaption>
            <svg viewBox=format!("0 0 {W} {H}") preserveAspectRatio="none" class="chart-svg">
                <line x1="0" y1=H - 0.5 x2=W y2=H - 0.5 class="axis" />
                {bars}
            </svg>
            <div class="chart-axis muted"><span>"-5m"</span><span>"now"</span></div>
        </figure>
    }
}
