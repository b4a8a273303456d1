//! The run's DAG as SVG: laid out by `gantry-layout`, coloured by live task state, the
//! critical path highlighted, matrix jobs folded into one node that opens on click, with
//! pan (drag) and zoom (wheel, buttons).
//!
//! The layout depends only on the graph's shape, which is memoised apart from task states,
//! so a state change recolours nodes without laying anything out again. Pan and zoom move
//! one transform attribute, so they stay smooth however many nodes there are.

use std::collections::{HashMap, HashSet};

use gantry_layout::{Fold, Layout, Options, critical_path, fold, layout};
use leptos::ev::{MouseEvent, PointerEvent, WheelEvent};
use leptos::html::Div;
use leptos::prelude::*;

use crate::api::{RunDetail, Task};
use crate::time;

const NODE_W: f32 = 190.0;
const NODE_H: f32 = 38.0;

/// The shape of the graph: (name, job id, needs) per task, in plan order.
type Shape = Vec<(String, String, Vec<String>)>;

#[derive(Debug, Clone, PartialEq)]
struct Drawing {
    fold: Fold,
    layout: Layout,
    /// Labels per folded node.
    labels: Vec<String>,
}

fn options() -> Options {
    Options {
        node_width: NODE_W,
        node_height: NODE_H,
        ..Options::default()
    }
}

/// Edges between tasks: a need names a task, or a whole (matrix) job by its id.
fn task_edges(shape: &Shape) -> Vec<(usize, usize)> {
    let by_name: HashMap<&str, usize> = shape
        .iter()
        .enumerate()
        .map(|(i, t)| (t.0.as_str(), i))
        .collect();
    let mut by_job: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, t) in shape.iter().enumerate() {
        by_job.entry(t.1.as_str()).or_default().push(i);
    }
    let mut edges = Vec::new();
    for (to, t) in shape.iter().enumerate() {
        for need in &t.2 {
            if let Some(&from) = by_name.get(need.as_str()) {
                edges.push((from, to));
            } else if let Some(froms) = by_job.get(need.as_str()) {
                edges.extend(froms.iter().map(|&from| (from, to)));
            }
        }
    }
    edges
}

fn draw(shape: &Shape, expanded: &HashSet<String>) -> Drawing {
    let edges = task_edges(shape);
    let groups: Vec<&str> = shape.iter().map(|t| t.1.as_str()).collect();
    let folded = fold(&groups, &edges, 2, |g| expanded.contains(g));
    let layout = layout(folded.nodes.len(), &folded.edges, &options());
    let labels = folded
        .nodes
        .iter()
        .map(|n| match &n.group {
            Some(g) => format!("{g} ×{}", n.members.len()),
            None => shape[n.members[0]].0.clone(),
        })
        .collect();
    Drawing {
        fold: folded,
        layout,
        labels,
    }
}

/// The state a folded node shows: the most urgent of its members.
fn combined_state<'a>(states: impl Iterator<Item = &'a str>) -> String {
    const URGENCY: [&str; 9] = [
        "FAILED",
        "RUNNING",
        "RETRYING",
        "READY",
        "BLOCKED",
        "CANCELLED",
        "SKIPPED",
        "SUCCEEDED",
        "CACHED",
    ];
    let mut best = URGENCY.len();
    let mut all_cached = true;
    for s in states {
        all_cached &= s == "CACHED";
        if let Some(i) = URGENCY.iter().position(|u| *u == s) {
            best = best.min(i);
        }
    }
    if all_cached {
        return "CACHED".to_owned();
    }
    URGENCY.get(best).map_or("BLOCKED", |s| s).to_owned()
}

fn duration_ms(task: &Task) -> u64 {
    let Some(start) = time::ms(task.started_at.as_deref()) else {
        return 0;
    };
    let end = time::ms(task.finished_at.as_deref()).unwrap_or_else(time::now);
    (end - start).max(0.0) as u64
}

#[component]
pub fn Dag(
    detail: RwSignal<Option<RunDetail>>,
    selected: Memo<Option<String>>,
    select: impl Fn(String) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let expanded = RwSignal::new(HashSet::<String>::new());
    let shape = Memo::new(move |_| {
        detail.with(|d| {
            d.as_ref()
                .map(|d| {
                    d.tasks
                        .iter()
                        .map(|t| (t.name.clone(), t.job_id.clone(), t.needs.clone()))
                        .collect::<Shape>()
                })
                .unwrap_or_default()
        })
    });
    let drawing = Memo::new(move |_| shape.with(|s| expanded.with(|e| draw(s, e))));

    // Per folded node: its state, and whether it lies on the critical path.
    let states = Memo::new(move |_| {
        drawing.with(|dr| {
            detail.with(|d| {
                let Some(d) = d.as_ref() else {
                    return Vec::new();
                };
                dr.fold
                    .nodes
                    .iter()
                    .map(|n| combined_state(n.members.iter().map(|&m| d.tasks[m].state.as_str())))
                    .collect::<Vec<_>>()
            })
        })
    });
    let critical = Memo::new(move |_| {
        drawing.with(|dr| {
            detail.with(|d| {
                let Some(d) = d.as_ref() else {
                    return Vec::new();
                };
                let durations: Vec<u64> = dr
                    .fold
                    .nodes
                    .iter()
                    .map(|n| {
                        n.members
                            .iter()
                            .map(|&m| duration_ms(&d.tasks[m]))
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                if durations.iter().all(|&d| d == 0) {
                    return Vec::new();
                }
                critical_path(dr.fold.nodes.len(), &dr.fold.edges, &durations)
            })
        })
    });
    let on_path = Memo::new(move |_| critical.with(|c| c.iter().copied().collect::<HashSet<_>>()));
    let path_edges = Memo::new(move |_| {
        critical.with(|c| c.windows(2).map(|w| (w[0], w[1])).collect::<HashSet<_>>())
    });

    // Pan and zoom.
    let pan = RwSignal::new((24.0f64, 24.0f64));
    let zoom = RwSignal::new(1.0f64);
    let drag = StoredValue::new(None::<(f64, f64, f64, f64)>);
    let frame = NodeRef::<Div>::new();
    let fit = move || {
        let Some(el) = frame.get_untracked() else {
            return;
        };
        let (w, h) =
            drawing.with_untracked(|d| (f64::from(d.layout.width), f64::from(d.layout.height)));
        let (cw, ch) = (f64::from(el.client_width()), f64::from(el.client_height()));
        if w <= 0.0 || h <= 0.0 || cw <= 0.0 {
            return;
        }
        let z = ((cw - 48.0) / w).min((ch - 48.0) / h).clamp(0.05, 1.0);
        zoom.set(z);
        pan.set(((cw - w * z) / 2.0, 24.0_f64.max((ch - h * z) / 2.0)));
    };
    // Fit once the first drawing with nodes exists.
    let fitted = StoredValue::new(false);
    Effect::new(move |_| {
        let has_nodes = drawing.with(|d| !d.layout.nodes.is_empty());
        if has_nodes && !fitted.get_value() {
            fitted.set_value(true);
            request_animation_frame(fit);
        }
    });
    let on_wheel = move |ev: WheelEvent| {
        ev.prevent_default();
        let Some(el) = frame.get_untracked() else {
            return;
        };
        let rect = el.get_bounding_client_rect();
        let (mx, my) = (
            f64::from(ev.client_x()) - rect.left(),
            f64::from(ev.client_y()) - rect.top(),
        );
        let old = zoom.get_untracked();
        let new = (old * (-ev.delta_y() * 0.0015).exp()).clamp(0.05, 3.0);
        // Zoom around the pointer: the point under it stays put.
        let (px, py) = pan.get_untracked();
        pan.set((mx - (mx - px) * new / old, my - (my - py) * new / old));
        zoom.set(new);
    };
    let on_down = move |ev: PointerEvent| {
        let (px, py) = pan.get_untracked();
        drag.set_value(Some((
            f64::from(ev.client_x()),
            f64::from(ev.client_y()),
            px,
            py,
        )));
    };
    let on_move = move |ev: PointerEvent| {
        if let Some((sx, sy, px, py)) = drag.get_value() {
            pan.set((
                px + f64::from(ev.client_x()) - sx,
                py + f64::from(ev.client_y()) - sy,
            ));
        }
    };
    let on_up = move |_| drag.set_value(None);
    let zoom_by = move |factor: f64| zoom.update(|z| *z = (*z * factor).clamp(0.05, 3.0));

    let edges = move || {
        drawing.with(|dr| {
            dr.layout
                .edges
                .iter()
                .map(|e| {
                    let d = spline(&e.points);
                    let key = (e.from, e.to);
                    view! {
                        <path d=d class="edge" marker-end="url(#arrow)" class:critical=move || path_edges.with(|p| p.contains(&key)) />
                    }
                })
                .collect_view()
        })
    };
    let nodes = move || {
        drawing.with(|dr| {
            dr.fold
                .nodes
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    let p = dr.layout.nodes[i];
                    let label = dr.labels[i].clone();
                    let group = node.group.clone();
                    let folded = group.is_some();
                    let first_task = node.members[0];
                    let task_id = move || detail.with_untracked(|d| d.as_ref().map(|d| d.tasks[first_task].id.clone()));
                    let state = move || states.with(|s| s.get(i).cloned().unwrap_or_default());
                    let class = move || format!("node state-{}", state().to_lowercase());
                    let count = node.members.len();
                    let members = node.members.clone();
                    let progress = move || {
                        folded.then(|| {
                            let done = detail.with(|d| {
                                d.as_ref().map_or(0, |d| {
                                    members
                                        .iter()
                                        .filter(|&&m| matches!(d.tasks[m].state.as_str(), "SUCCEEDED" | "CACHED"))
                                        .count()
                                })
                            });
                            format!("{done}/{count} done · click to expand")
                        })
                    };
                    let is_selected = move || {
                        !folded && selected.get().is_some_and(|s| Some(s) == task_id())
                    };
                    let on_click = {
                        let group = group.clone();
                        move |ev: MouseEvent| {
                            ev.stop_propagation();
                            match &group {
                                Some(g) => expanded.update(|e| {
                                    e.insert(g.clone());
                                }),
                                None => {
                                    if let Some(id) = task_id() {
                                        select(id);
                                    }
                                }
                            }
                        }
                    };
                    let title = label.clone();
                    view! {
                        <g
                            class=class
                            class:folded=folded
                            class:selected=is_selected
                            class:critical=move || on_path.with(|c| c.contains(&i))
                            transform=format!("translate({},{})", p.x, p.y)
                            data-testid="dag-node"
                            data-name=label.clone()
                            data-state=state
                            on:click=on_click
                            on:pointerdown=|ev: PointerEvent| ev.stop_propagation()
                        >
                            <title>{title}</title>
                            <rect width=NODE_W height=NODE_H rx="6" />
                            <circle class="dot" cx="14" cy=NODE_H / 2.0 r="5" />
                            <text x="26" y=if folded { 16.0 } else { NODE_H / 2.0 + 4.0 }>{clip(&label, 24)}</text>
                            {move || progress().map(|p| view! { <text class="sub" x="26" y="30">{p}</text> })}
                        </g>
                    }
                })
                .collect_view()
        })
    };
    let collapse = move |_| expanded.set(HashSet::new());

    view! {
        <div class="dag" node_ref=frame on:wheel=on_wheel on:pointerdown=on_down on:pointermove=on_move on:pointerup=on_up on:pointerleave=on_up data-testid="dag">
            <div class="dag-tools">
                <button on:click=move |_| zoom_by(1.25) title="Zoom in">"+"</button>
                <button on:click=move |_| zoom_by(0.8) title="Zoom out">"−"</button>
                <button on:click=move |_| fit() title="Fit to view">"Fit"</button>
                <Show when=move || expanded.with(|e| !e.is_empty())>
                    <button on:click=collapse title="Fold matrix jobs again">"Fold matrices"</button>
                </Show>
                <span class="legend"><span class="swatch critical"></span>"critical path"</span>
            </div>
            <svg class="dag-svg" width="100%" height="100%">
                <defs>
                    <marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse">
                        <path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead" />
                    </marker>
                </defs>
                <g transform=move || { let (x, y) = pan.get(); format!("translate({x},{y}) scale({})", zoom.get()) }>
                    // A new shape (a matrix opened or folded) draws everything afresh.
                    <For each=move || [drawing.with(|d| d.labels.join("\n"))] key=String::clone let:_shape>
                        <g class="edges">{untrack(edges)}</g>
                        <g class="nodes">{untrack(nodes)}</g>
                    </For>
                </g>
            </svg>
        </div>
    }
}

/// A smooth path through the points: cubic segments with horizontal tangents.
fn spline(points: &[gantry_layout::Point]) -> String {
    let mut d = String::new();
    let Some(first) = points.first() else {
        return d;
    };
    d.push_str(&format!("M{:.1},{:.1}", first.x, first.y));
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let dx = (b.x - a.x) / 2.0;
        if (b.y - a.y).abs() < 0.5 {
            d.push_str(&format!(" L{:.1},{:.1}", b.x, b.y));
        } else {
            d.push_str(&format!(
                " C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
                a.x + dx,
                a.y,
                b.x - dx,
                b.y,
                b.x,
                b.y
            ));
        }
    }
    d
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}
