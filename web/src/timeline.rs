//! A Gantt of attempts per task: for each attempt the backoff gap that preceded it, the
//! queue wait (scheduled → started) and the run time, on one time axis for the run.

use leptos::prelude::*;

use crate::api::RunDetail;
use crate::time;

/// One drawn piece of an attempt.
struct Segment {
    kind: &'static str,
    start: f64,
    end: f64,
    title: String,
    /// The attempt's state, for the colour of a run segment.
    state: String,
}

#[component]
pub fn Timeline(
    detail: RwSignal<Option<RunDetail>>,
    select: impl Fn(String) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let body = move || {
        detail.with(|d| {
            let Some(d) = d.as_ref() else {
                return view! { <p class="muted">"Loading…"</p> }.into_any();
            };
            let now = time::now();
            let mut rows = Vec::new();
            let mut t0 = f64::INFINITY;
            let mut t1 = f64::NEG_INFINITY;
            for task in &d.tasks {
                let mut segments = Vec::new();
                let mut previous_end: Option<f64> = None;
                for a in &task.attempts {
                    let scheduled = time::ms(Some(&a.scheduled_at)).unwrap_or(now);
                    let started = time::ms(a.started_at.as_deref());
                    let finished = time::ms(a.finished_at.as_deref());
                    let terminal = matches!(a.state.as_str(), "SUCCEEDED" | "FAILED" | "TIMED_OUT" | "LOST" | "CANCELLED");
                    if let Some(prev) = previous_end
                        && scheduled > prev
                    {
                        segments.push(Segment {
                            kind: "backoff",
                            start: prev,
                            end: scheduled,
                            title: format!("backoff before attempt {}: {}", a.index, time::duration(a.backoff_ms as f64)),
                            state: String::new(),
                        });
                    }
                    let wait_end = started.or(finished).unwrap_or(if terminal { scheduled } else { now });
                    if wait_end > scheduled {
                        segments.push(Segment {
                            kind: "wait",
                            start: scheduled,
                            end: wait_end,
                            title: format!("attempt {} waited {}", a.index, time::duration(wait_end - scheduled)),
                            state: String::new(),
                        });
                    }
                    if let Some(s) = started {
                        let e = finished.unwrap_or(now);
                        segments.push(Segment {
                            kind: "run",
                            start: s,
                            end: e.max(s),
                            title: format!(
                                "attempt {}: {} in {}{}",
                                a.index,
                                a.state.to_lowercase(),
                                time::duration(e - s),
                                a.error_kind.as_deref().map(|k| format!(" ({})", k.to_lowercase())).unwrap_or_default()
                            ),
                            state: a.state.to_lowercase(),
                        });
                    }
                    previous_end = finished.or(started).or(Some(scheduled));
                    for seg in &segments {
                        t0 = t0.min(seg.start);
                        t1 = t1.max(seg.end);
                    }
                }
                rows.push((task.id.clone(), task.name.clone(), task.state.to_lowercase(), segments));
            }
            if !t0.is_finite() || !t1.is_finite() {
                return view! { <p class="muted">"No attempt has been scheduled yet."</p> }.into_any();
            }
            let span = (t1 - t0).max(1000.0);
            let pct = move |t: f64| (t - t0) / span * 100.0;
            let ticks = (0..=4)
                .map(|i| {
                    let at = f64::from(i) * 25.0;
                    view! { <span class="tick" style=format!("left: {at}%")>{time::duration(span * at / 100.0)}</span> }
                })
                .collect_view();
            let rows = rows
                .into_iter()
                .map(|(id, name, state, segments)| {
                    let bars = segments
                        .into_iter()
                        .map(|seg| {
                            let left = pct(seg.start);
                            let width = (pct(seg.end) - left).max(0.3);
                            let attempt_state = seg.state;
                            view! {
                                <span
                                    class=format!("seg {} state-{}", seg.kind, attempt_state)
                                    style=format!("left: {left:.3}%; width: {width:.3}%")
                                    title=seg.title
                                ></span>
                            }
                        })
                        .collect_view();
                    view! {
                        <div class="gantt-row" data-testid="timeline-row" on:click=move |_| select(id.clone())>
                            <span class="gantt-label"><span class=format!("dot state-{state}")></span>{name}</span>
                            <span class="gantt-lane">{bars}</span>
                        </div>
                    }
                })
                .collect_view();
            view! {
                <div class="gantt" data-testid="timeline">
                    <div class="gantt-row axis"><span class="gantt-label muted">"task"</span><span class="gantt-lane">{ticks}</span></div>
                    {rows}
                    <div class="gantt-legend muted">
                        <span class="seg-key wait"></span>"queue wait"
                        <span class="seg-key run"></span>"running"
                        <span class="seg-key backoff"></span>"backoff"
                    </div>
                </div>
            }
            .into_any()
        })
    };
    view! { <div class="timeline-pane">{body}</div> }
}
