//! The runs table: filterable, paged by cursor as it scrolls, virtualised (only the rows
//! in view exist in the DOM, so 10,000 runs scroll like 50), and live: run-level events
//! from [`Stats`] update states in place and bring new runs in at the top.
//!
//! Also the trigger dialog, which opens over the table at `/trigger`.

use std::collections::HashMap;

use leptos::ev::{KeyboardEvent, MouseEvent, SubmitEvent};
use leptos::html::Div;
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api::{self, RunFilter, RunSummary};
use crate::app::{error_line, typing, use_session};
use crate::route::{Route, use_router};
use crate::stats::Stats;
use crate::time;

const ROW_HEIGHT: f64 = 32.0;
const PAGE: usize = 200;
/// Rows rendered above and below the visible ones, so fast scrolling shows no gaps.
const OVERSCAN: usize = 10;

const STATES: [&str; 6] = [
    "QUEUED",
    "RUNNING",
    "CANCELLING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
];

#[component]
pub fn RunsView(pipeline: Option<String>) -> impl IntoView {
    let session = use_session();
    let router = use_router();
    let stats = expect_context::<Stats>();

    let filter = RwSignal::new(RunFilter {
        pipeline: pipeline.clone().unwrap_or_default(),
        ..RunFilter::default()
    });
    let rows = RwSignal::new(Vec::<RunSummary>::new());
    let next = RwSignal::new(None::<String>);
    let loading = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let selected = RwSignal::new(0usize);
    let scroll_top = RwSignal::new(0.0f64);
    let viewport = RwSignal::new(800.0f64);
    let body = NodeRef::<Div>::new();
    // Bumped on every reload so that a page arriving for an old filter is dropped.
    let generation = StoredValue::new(0u64);

    let load_page = move |reset: bool| {
        if loading.get_untracked() && !reset {
            return;
        }
        let after = if reset { None } else { next.get_untracked() };
        if !reset && after.is_none() {
            return;
        }
        loading.set(true);
        if reset {
            generation.update_value(|g| *g += 1);
        }
        let mine = generation.get_value();
        let token = session.token();
        let current = filter.get_untracked();
        spawn_local(async move {
            let page = api::runs(&token, &current, PAGE, after.as_deref()).await;
            if generation.get_value() != mine {
                return;
            }
            loading.set(false);
            match page {
                Ok(page) => {
                    if reset {
                        rows.set(page.runs);
                        selected.set(0);
                    } else {
                        rows.update(|r| r.extend(page.runs));
                    }
                    next.set(page.next);
                    error.set(None);
                }
                Err(err) => error.set(Some(err.to_string())),
            }
        });
    };
    Effect::new(move |_| {
        filter.track();
        load_page(true);
    });

    // Live: apply run events to loaded rows; a run we have not seen is new, so the first
    // page is fetched again and merged in at the top.
    Effect::new(move |_| {
        let events = stats.run_events.get();
        if events.is_empty() {
            return;
        }
        let mut unknown = false;
        rows.update(|rows| {
            let index: HashMap<&str, usize> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id.as_str(), i))
                .collect();
            let mut changes = Vec::new();
            for event in &events {
                match index.get(event.run.as_str()) {
                    Some(&i) => changes.push((i, event.to.clone())),
                    None => unknown = true,
                }
            }
            for (i, state) in changes {
                rows[i].state = state;
            }
        });
        if unknown {
            let token = session.token();
            let current = filter.get_untracked();
            spawn_local(async move {
                if let Ok(page) = api::runs(&token, &current, 50, None).await {
                    rows.update(|rows| merge_head(rows, page.runs));
                }
            });
        }
    });

    Effect::new(move |_| {
        if let Some(el) = body.get() {
            viewport.set(f64::from(el.client_height().max(200)));
        }
    });

    let visible = move || {
        let total = rows.with(Vec::len);
        let first = ((scroll_top.get() / ROW_HEIGHT) as usize).saturating_sub(OVERSCAN);
        let count = (viewport.get() / ROW_HEIGHT) as usize + 2 * OVERSCAN;
        let last = (first + count).min(total);
        rows.with(|rows| {
            rows.get(first..last)
                .unwrap_or_default()
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, run)| (first + i, run))
                .collect::<Vec<_>>()
        })
    };

    let on_scroll = move |_| {
        if let Some(el) = body.get() {
            let top = f64::from(el.scroll_top());
            scroll_top.set(top);
            viewport.set(f64::from(el.client_height().max(200)));
            let total = rows.with_untracked(Vec::len) as f64 * ROW_HEIGHT;
            if top + f64::from(el.client_height()) > total - 20.0 * ROW_HEIGHT {
                load_page(false);
            }
        }
    };

    let open = move |i: usize| {
        if let Some(run) = rows.with_untracked(|r| r.get(i).cloned()) {
            router.go(Route::Run {
                id: run.id,
                task: None,
            });
        }
    };
    let keys = window_event_listener(leptos::ev::keydown, move |ev: KeyboardEvent| {
        if typing(&ev) {
            return;
        }
        let total = rows.with_untracked(Vec::len);
        match ev.key().as_str() {
            "j" | "ArrowDown" => selected.update(|s| *s = (*s + 1).min(total.saturating_sub(1))),
            "k" | "ArrowUp" => selected.update(|s| *s = s.saturating_sub(1)),
            "Enter" | "o" => open(selected.get_untracked()),
            _ => return,
        }
        ev.prevent_default();
        // Keep the selection in view.
        if let Some(el) = body.get_untracked() {
            let y = selected.get_untracked() as f64 * ROW_HEIGHT;
            let top = f64::from(el.scroll_top());
            let height = f64::from(el.client_height());
            if y < top {
                el.set_scroll_top(y as i32);
            } else if y + ROW_HEIGHT > top + height {
                el.set_scroll_top((y + ROW_HEIGHT - height) as i32);
            }
        }
    });
    on_cleanup(move || keys.remove());

    let set_state = move |ev| filter.update(|f| f.state = event_target_value(&ev));
    let set_ref =
        move |ev| filter.update(|f| f.git_ref = event_target_value(&ev).trim().to_owned());
    let set_sha = move |ev| filter.update(|f| f.sha = event_target_value(&ev).trim().to_owned());

    view! {
        <div class="runs-view">
            <div class="toolbar">
                <h2>{move || if filter.with(|f| f.pipeline.is_empty()) { "Runs".to_owned() } else { pipeline_name(&filter.with(|f| f.pipeline.clone())) }}</h2>
                <select on:change=set_state data-testid="filter-state" title="State">
                    <option value="">"any state"</option>
                    {STATES.map(|s| view! { <option value=s>{s.to_lowercase()}</option> })}
                </select>
                <input id="search" placeholder="ref (/ to focus)" on:change=set_ref data-testid="filter-ref" />
                <input placeholder="sha" on:change=set_sha data-testid="filter-sha" />
                <span class="muted">{move || {
                    let n = rows.with(Vec::len);
                    if next.get().is_some() { format!("{n}+ runs") } else { format!("{n} runs") }
                }}</span>
                <span class="spacer"></span>
                <button class="primary" on:click=move |_| router.go(Route::Trigger) data-testid="trigger-button">"Trigger run"</button>
            </div>
            {error_line(error)}
            <div class="table runs">
                <div class="thead">
                    <span class="c-num">"#"</span>
                    <span class="c-pipeline">"Pipeline"</span>
                    <span class="c-state">"State"</span>
                    <span class="c-ref">"Ref"</span>
                    <span class="c-sha">"Sha"</span>
                    <span class="c-time">"Created"</span>
                    <span class="c-dur">"Duration"</span>
                </div>
                <div class="tbody" node_ref=body on:scroll=on_scroll data-testid="runs-table">
                    <div class="vspace" style=move || format!("height: {}px", rows.with(Vec::len) as f64 * ROW_HEIGHT)>
                        <For each=visible key=|(i, run)| (*i, run.id.clone(), run.state.clone()) let:item>
                            <RunRow index=item.0 run=item.1 selected open />
                        </For>
                    </div>
                    <Show when=move || rows.with(Vec::is_empty) && !loading.get()>
                        <p class="empty muted" data-testid="empty-state">"No runs yet. Trigger one with the button above (n)."</p>
                    </Show>
                </div>
            </div>
        </div>
        <Show when=move || router.route.with(|r| *r == Route::Trigger)>
            <TriggerDialog pipeline=pipeline.clone() />
        </Show>
    }
}

fn pipeline_name(id: &str) -> String {
    use_session()
        .home
        .with_untracked(|h| {
            h.as_ref()
                .and_then(|h| h.pipelines.iter().find(|p| p.id == id))
                .map(|p| format!("Runs · {}", p.name))
        })
        .unwrap_or_else(|| "Runs".to_owned())
}

/// Puts the newest runs in front of the loaded ones, replacing rows that are already
/// there (their state may have moved on).
fn merge_head(rows: &mut Vec<RunSummary>, head: Vec<RunSummary>) {
    let fresh: HashMap<String, RunSummary> =
        head.iter().map(|r| (r.id.clone(), r.clone())).collect();
    let known: std::collections::HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    for row in rows.iter_mut() {
        if let Some(newer) = fresh.get(&row.id) {
            *row = newer.clone();
        }
    }
    let new: Vec<RunSummary> = head
        .into_iter()
        .filter(|r| !known.contains(&r.id))
        .collect();
    if !new.is_empty() {
        rows.splice(0..0, new);
    }
}

#[component]
fn RunRow(
    index: usize,
    run: RunSummary,
    selected: RwSignal<usize>,
    open: impl Fn(usize) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let created = time::ms(Some(&run.created_at)).unwrap_or_default();
    let started = time::ms(run.started_at.as_deref());
    let finished = time::ms(run.finished_at.as_deref());
    let duration = started.map(|s| time::duration(finished.unwrap_or_else(time::now) - s));
    let state = run.state.to_lowercase();
    view! {
        <div
            class="row"
            class:selected=move || selected.get() == index
            style=format!("transform: translateY({}px)", index as f64 * ROW_HEIGHT)
            data-testid="run-row"
            data-id=run.id.clone()
            data-state=run.state.clone()
            on:click=move |_| {
                selected.set(index);
                open(index);
            }
        >
            <span class="c-num">{run.number}</span>
            <span class="c-pipeline">{run.pipeline.name.clone()}</span>
            <span class="c-state"><span class=format!("badge state-{state}")>{state.clone()}</span></span>
            <span class="c-ref">{run.git_ref.clone()}</span>
            <span class="c-sha"><code>{time::short(&run.sha).to_owned()}</code></span>
            <span class="c-time" title=run.created_at.clone()>{time::ago(created)}</span>
            <span class="c-dur">{duration.unwrap_or_default()}</span>
        </div>
    }
}

#[component]
fn TriggerDialog(pipeline: Option<String>) -> impl IntoView {
    let session = use_session();
    let router = use_router();
    let pipelines = session
        .home
        .with_untracked(|h| h.as_ref().map(|h| h.pipelines.clone()))
        .unwrap_or_default();
    let chosen = RwSignal::new(
        pipeline
            .or_else(|| pipelines.first().map(|p| p.id.clone()))
            .unwrap_or_default(),
    );
    let git_ref = RwSignal::new("refs/heads/main".to_owned());
    let sha = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let pending = RwSignal::new(false);
    let close = move || router.go(Route::Runs { pipeline: None });

    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        let (p, r, s) = (
            chosen.get_untracked(),
            git_ref.get_untracked(),
            sha.get_untracked(),
        );
        if p.is_empty() || r.trim().is_empty() || s.trim().is_empty() {
            error.set(Some("pipeline, ref and sha are all needed".to_owned()));
            return;
        }
        pending.set(true);
        let token = session.token();
        spawn_local(async move {
            match api::trigger_run(&token, &p, r.trim(), s.trim()).await {
                Ok(id) => router.go(Route::Run { id, task: None }),
                Err(err) => {
                    pending.set(false);
                    error.set(Some(err.to_string()));
                }
            }
        });
    };

    view! {
        <div class="overlay" on:click=move |_| close()>
            <form class="card dialog" data-testid="trigger-form" on:submit=submit on:click=|ev: MouseEvent| ev.stop_propagation()>
                <h2>"Trigger a run"</h2>
                <label>"Pipeline"
                    <select data-testid="trigger-pipeline" on:change=move |ev| chosen.set(event_target_value(&ev)) prop:value=move || chosen.get()>
                        {pipelines
                            .into_iter()
                            .map(|p| view! { <option value=p.id.clone()>{p.name.clone()}</option> })
                            .collect_view()}
                    </select>
                </label>
                <label>"Ref"
                    <input data-testid="trigger-ref" prop:value=move || git_ref.get() on:input=move |ev| git_ref.set(event_target_value(&ev)) />
                </label>
                <label>"Commit sha"
                    <input data-testid="trigger-sha" placeholder="e.g. 3f2a9c1…" prop:value=move || sha.get() on:input=move |ev| sha.set(event_target_value(&ev)) autofocus />
                </label>
                {error_line(error)}
                <div class="actions">
                    <button type="button" on:click=move |_| close()>"Cancel"</button>
                    <button type="submit" class="primary" data-testid="trigger-submit" disabled=move || pending.get()>"Trigger"</button>
                </div>
            </form>
        </div>
    }
}
