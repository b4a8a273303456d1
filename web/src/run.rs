//! One run: its DAG or timeline on the left, the selected task on the right (a resizable
//! split), run actions on top. The run stays live by following `runEvents`: task states
//! are applied as events arrive, and the run is re-read (debounced) for attempt details.
//! When the socket drops, the stream resumes after the last `seq` seen.

use std::time::Duration;

use leptos::ev::{KeyboardEvent, MouseEvent, PointerEvent};
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api::live::{self, Live, Subscription};
use crate::api::{self, Event, RunDetail, Task};
use crate::app::{error_line, typing, use_session};
use crate::route::{Route, use_router};
use crate::{dag, time, timeline};

const REFRESH_AFTER: Duration = Duration::from_millis(300);
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

pub fn is_terminal_run(state: &str) -> bool {
    matches!(state, "SUCCEEDED" | "FAILED" | "CANCELLED")
}

#[component]
pub fn RunView(id: String) -> impl IntoView {
    let session = use_session();
    let router = use_router();
    let detail = RwSignal::new(None::<RunDetail>);
    let error = RwSignal::new(None::<String>);
    let live_state = RwSignal::new("connecting");
    let panel_width = RwSignal::new(420.0f64);
    let dragging = RwSignal::new(false);

    let selected = Memo::new(move |_| match router.route.get() {
        Route::Run { task, .. } => task,
        _ => None,
    });
    let timeline_mode = Memo::new(move |_| matches!(router.route.get(), Route::Timeline { .. }));

    // Re-reads the run at most once per REFRESH_AFTER, however many events arrive.
    let refresh_pending = StoredValue::new(false);
    let run_id = StoredValue::new(id.clone());
    let refresh = move || {
        if refresh_pending.get_value() {
            return;
        }
        refresh_pending.set_value(true);
        set_timeout(
            move || {
                refresh_pending.set_value(false);
                let token = session.token();
                let id = run_id.get_value();
                spawn_local(async move {
                    match api::run(&token, &id).await {
                        Ok(run) => {
                            detail.set(Some(run));
                            error.set(None);
                        }
                        Err(err) => error.set(Some(err.to_string())),
                    }
                });
            },
            REFRESH_AFTER,
        );
    };
    refresh();

    // The subscription handle is not Send; it lives in local storage and is dropped
    // (closing the socket) when the view goes away.
    let subscription = StoredValue::new_local(None::<Subscription>);
    let last_seq = StoredValue::new(None::<String>);
    let connect = StoredValue::new_local(None::<std::rc::Rc<dyn Fn()>>);
    let start: std::rc::Rc<dyn Fn()> = std::rc::Rc::new(move || {
        let token = session.token();
        let id = run_id.get_value();
        let after = last_seq.get_value();
        let on_event = move |msg: Live<Event>| match msg {
            Live::Connected => live_state.set("live"),
            Live::Next(event) => {
                last_seq.set_value(Some(event.seq.clone()));
                apply(detail, &event);
                refresh();
            }
            Live::Completed => {
                live_state.set("finished");
                refresh();
            }
            Live::Failed(err) => {
                live_state.set("error");
                error.set(Some(err.to_string()));
            }
            Live::Disconnected => {
                live_state.set("reconnecting");
                set_timeout(
                    move || {
                        if let Some(again) = connect.get_value() {
                            again();
                        }
                    },
                    RECONNECT_AFTER,
                );
            }
        };
        match live::run_events(&token, &id, after.as_deref(), on_event) {
            Ok(sub) => subscription.set_value(Some(sub)),
            Err(err) => error.set(Some(err.to_string())),
        }
    });
    connect.set_value(Some(start.clone()));
    start();
    on_cleanup(move || {
        connect.set_value(None);
        subscription.set_value(None);
    });

    let on_move = window_event_listener(leptos::ev::pointermove, move |ev: PointerEvent| {
        if dragging.get_untracked()
            && let Some(w) = web_sys::window().and_then(|w| w.inner_width().ok()?.as_f64())
        {
            panel_width.set((w - f64::from(ev.client_x())).clamp(260.0, w * 0.7));
        }
    });
    let on_up = window_event_listener(leptos::ev::pointerup, move |_| dragging.set(false));
    on_cleanup(move || {
        on_move.remove();
        on_up.remove();
    });

    let select = move |task: Option<String>| {
        let id = run_id.get_value();
        router.go(Route::Run { id, task });
    };

    let action = RunActions::new(detail, error, refresh);
    let keys = window_event_listener(leptos::ev::keydown, move |ev: KeyboardEvent| {
        if typing(&ev) {
            return;
        }
        let tasks: Vec<String> = detail.with_untracked(|d| {
            d.as_ref()
                .map(|d| d.tasks.iter().map(|t| t.id.clone()).collect())
                .unwrap_or_default()
        });
        let current = selected
            .get_untracked()
            .and_then(|s| tasks.iter().position(|t| *t == s));
        match ev.key().as_str() {
            "j" | "ArrowDown" => {
                let next = current.map_or(0, |i| (i + 1).min(tasks.len().saturating_sub(1)));
                select(tasks.get(next).cloned());
            }
            "k" | "ArrowUp" => {
                let next = current.map_or(0, |i| i.saturating_sub(1));
                select(tasks.get(next).cloned());
            }
            "l" => {
                let attempt = selected.get_untracked().and_then(|task| {
                    detail.with_untracked(|d| {
                        d.as_ref()?
                            .tasks
                            .iter()
                            .find(|t| t.id == task)?
                            .attempts
                            .last()
                            .map(|a| a.id.clone())
                    })
                });
                if let Some(attempt) = attempt {
                    router.go(Route::Log { attempt });
                }
            }
            "c" => action.cancel(),
            "f" => action.rerun_failed(),
            "r" => {
                if let Some(task) = selected.get_untracked() {
                    action.retry(task);
                }
            }
            "t" => {
                let id = run_id.get_value();
                router.go(if timeline_mode.get_untracked() {
                    Route::Run { id, task: None }
                } else {
                    Route::Timeline { id }
                });
            }
            "Escape" => select(None),
            _ => return,
        }
        ev.prevent_default();
    });
    on_cleanup(move || keys.remove());

    let header = move || {
        detail.with(|d| {
            d.as_ref().map(|d| {
                let r = &d.run;
                let state = r.state.to_lowercase();
                let started = time::ms(r.started_at.as_deref());
                let finished = time::ms(r.finished_at.as_deref());
                let took = started.map(|s| time::duration(finished.unwrap_or_else(time::now) - s));
                view! {
                    <h2>{format!("{} #{}", r.pipeline.name, r.number)}</h2>
                    <span class=format!("badge state-{state}") data-testid="run-state" data-state=r.state.clone()>{state.clone()}</span>
                    <span class="muted">{r.git_ref.clone()}</span>
                    <code title=r.sha.clone()>{time::short(&r.sha).to_owned()}</code>
                    <span class="muted">{took}</span>
                    {d.parent_task.clone().map(|p| {
                        let target = Route::Run { id: p.run.id.clone(), task: Some(p.id.clone()) };
                        let href = target.path();
                        view! {
                            <a class="muted" data-testid="parent-run" href=href on:click=move |ev: MouseEvent| {
                                ev.prevent_default();
                                router.go(target.clone());
                            }>{format!("triggered by {} in {} #{}", p.name, p.run.pipeline.name, p.run.number)}</a>
                        }
                    })}
                }
            })
        })
    };
    let running =
        move || detail.with(|d| d.as_ref().is_some_and(|d| !is_terminal_run(&d.run.state)));
    let has_failed = move || {
        detail.with(|d| {
            d.as_ref().is_some_and(|d| {
                d.tasks
                    .iter()
                    .any(|t| matches!(t.state.as_str(), "FAILED" | "CANCELLED" | "SKIPPED"))
            })
        })
    };
    let graph_link = {
        let id = id.clone();
        move |ev: MouseEvent| {
            ev.prevent_default();
            router.go(Route::Run {
                id: id.clone(),
                task: selected.get_untracked(),
            });
        }
    };
    let timeline_link = {
        let id = id.clone();
        move |ev: MouseEvent| {
            ev.prevent_default();
            router.go(Route::Timeline { id: id.clone() });
        }
    };
    let selected_task = Memo::new(move |_| {
        let id = selected.get()?;
        detail.with(|d| d.as_ref()?.tasks.iter().find(|t| t.id == id).cloned())
    });

    view! {
        <div class="run-view" data-testid="run-view" data-run=id.clone()>
            <div class="toolbar">
                {header}
                <span class=move || format!("live {}", live_state.get()) data-testid="live-state">{move || live_state.get()}</span>
                <span class="spacer"></span>
                <div class="segmented">
                    <a href=format!("/runs/{id}") class:active=move || !timeline_mode.get() on:click=graph_link data-testid="show-graph">"Graph"</a>
                    <a href=format!("/runs/{id}/timeline") class:active=move || timeline_mode.get() on:click=timeline_link data-testid="show-timeline">"Timeline"</a>
                </div>
                <Show when=has_failed>
                    <button on:click=move |_| action.rerun_failed() data-testid="rerun-failed" title="Rerun failed (f)">"Rerun failed"</button>
                </Show>
                <Show when=running>
                    <button class="danger" on:click=move |_| action.cancel() data-testid="cancel-run" title="Cancel run (c)">"Cancel run"</button>
                </Show>
            </div>
            {error_line(error)}
            <div
                class="split"
                style=move || if selected.get().is_some() { format!("grid-template-columns: minmax(0, 1fr) 5px {}px", panel_width.get()) } else { "grid-template-columns: minmax(0, 1fr)".to_owned() }
            >
                <div class="pane">
                    {move || if timeline_mode.get() {
                        view! { <timeline::Timeline detail select=move |t| select(Some(t)) /> }.into_any()
                    } else {
                        view! { <dag::Dag detail selected select=move |t| select(Some(t)) /> }.into_any()
                    }}
                </div>
                <Show when=move || selected.get().is_some()>
                    <div class="splitter" on:pointerdown=move |ev: PointerEvent| { ev.prevent_default(); dragging.set(true); }></div>
                    <div class="pane panel">
                        // Keyed by content: any change of the task builds the panel afresh.
                        <For
                            each=move || selected_task.get().into_iter()
                            key=|task| format!("{task:?}")
                            children=move |task| view! { <TaskPanel task action close=move || select(None) /> }
                        />
                    </div>
                </Show>
            </div>
        </div>
    }
}

/// Applies an event to the loaded run at once, before the debounced re-read.
fn apply(detail: RwSignal<Option<RunDetail>>, event: &Event) {
    detail.update(|d| {
        let Some(d) = d.as_mut() else { return };
        match event.entity.as_str() {
            "RUN" => d.run.state = event.to.clone(),
            "TASK" => {
                if let Some(task) = d.tasks.iter_mut().find(|t| t.id == event.entity_id) {
                    task.state = event.to.clone();
                }
            }
            "ATTEMPT" => {
                let task = event.task.as_deref().unwrap_or_default();
                if let Some(attempt) = d
                    .tasks
                    .iter_mut()
                    .filter(|t| t.id == task)
                    .flat_map(|t| t.attempts.iter_mut())
                    .find(|a| a.id == event.entity_id)
                {
                    attempt.state = event.to.clone();
                }
            }
            _ => {}
        }
    });
}

/// The run's mutations, reporting failures on the view's error line.
#[derive(Clone, Copy)]
pub struct RunActions {
    detail: RwSignal<Option<RunDetail>>,
    error: RwSignal<Option<String>>,
    refresh: StoredValue<std::sync::Arc<dyn Fn() + Send + Sync>>,
    session: crate::app::Session,
    router: crate::route::Router,
}

impl RunActions {
    fn new(
        detail: RwSignal<Option<RunDetail>>,
        error: RwSignal<Option<String>>,
        refresh: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self {
            detail,
            error,
            refresh: StoredValue::new(std::sync::Arc::new(refresh)),
            // Captured here: actions run from event handlers, outside any owner.
            session: use_session(),
            router: use_router(),
        }
    }

    fn run_id(&self) -> Option<String> {
        self.detail
            .with_untracked(|d| d.as_ref().map(|d| d.run.id.clone()))
    }

    fn finish(&self, result: Result<(), api::ApiError>) {
        match result {
            Ok(()) => {
                self.error.set(None);
                (self.refresh.get_value())();
            }
            Err(err) => self.error.set(Some(err.to_string())),
        }
    }

    pub fn cancel(self) {
        let Some(run) = self.run_id() else { return };
        let token = self.session.token();
        spawn_local(async move { self.finish(api::cancel_run(&token, &run).await) });
    }

    pub fn retry(self, task: String) {
        let token = self.session.token();
        spawn_local(async move { self.finish(api::retry_task(&token, &task).await) });
    }

    pub fn rerun_failed(self) {
        let Some(run) = self.run_id() else { return };
        let token = self.session.token();
        let router = self.router;
        spawn_local(async move {
            match api::rerun_failed(&token, &run).await {
                Ok(id) => router.go(Route::Run { id, task: None }),
                Err(err) => self.error.set(Some(err.to_string())),
            }
        });
    }
}

#[component]
fn TaskPanel(
    task: Task,
    action: RunActions,
    close: impl Fn() + Send + Sync + 'static,
) -> impl IntoView {
    let router = use_router();
    let state = task.state.to_lowercase();
    let retryable = matches!(task.state.as_str(), "FAILED" | "CANCELLED" | "SKIPPED");
    let task_id = task.id.clone();
    let attempts = task
        .attempts
        .iter()
        .rev()
        .map(|a| {
            let attempt = a.id.clone();
            let href = Route::Log { attempt: attempt.clone() }.path();
            let started = time::ms(a.started_at.as_deref());
            let finished = time::ms(a.finished_at.as_deref());
            let ran = started.map(|s| time::duration(finished.unwrap_or_else(time::now) - s));
            let a_state = a.state.to_lowercase();
            view! {
                <tr data-testid="attempt-row" data-state=a.state.clone()>
                    <td>{a.index}</td>
                    <td><span class=format!("badge state-{a_state}")>{a_state.clone()}</span></td>
                    <td>{a.error_kind.clone().map(|k| k.to_lowercase())}</td>
                    <td>{a.exit_code}</td>
                    <td title=a.worker.clone().unwrap_or_default()>{a.worker.as_deref().map(crate::route::short_id).map(str::to_owned)}</td>
                    <td>{(a.backoff_ms > 0).then(|| time::duration(a.backoff_ms as f64))}</td>
                    <td>{ran}</td>
                    <td>
                        <a href=href data-testid="open-log" on:click=move |ev: MouseEvent| {
                            ev.prevent_default();
                            router.go(Route::Log { attempt: attempt.clone() });
                        }>"log"</a>
                    </td>
                </tr>
                {a.error_message.clone().map(|m| view! { <tr class="error-message"><td></td><td colspan="7">{m}</td></tr> })}
            }
        })
        .collect_view();
    view! {
        <div class="task-panel" data-testid="task-panel" data-task=task.id.clone()>
            <div class="panel-head">
                <h3>{task.name.clone()}</h3>
                <button class="link" title="Close (Esc)" on:click=move |_| close()>"×"</button>
            </div>
            <p>
                <span class=format!("badge state-{state}") data-testid="task-state">{state.clone()}</span>
                " queue "<code>{task.queue.clone()}</code>
                " · max attempts "{task.max_attempts}
            </p>
            {task.waiting_reason.clone().map(|r| view! { <p class="waiting" data-testid="waiting-reason">"Waiting: "{r}</p> })}
            {task.child_run.clone().map(|c| {
                let target = Route::Run { id: c.id.clone(), task: None };
                let href = target.path();
                let child_state = c.state.to_lowercase();
                view! {
                    <p data-testid="child-run">
                        "Child run: "
                        <a href=href on:click=move |ev: MouseEvent| {
                            ev.prevent_default();
                            router.go(target.clone());
                        }>{format!("{} #{}", c.pipeline.name, c.number)}</a>
                        " "<span class=format!("badge state-{child_state}")>{child_state.clone()}</span>
                    </p>
                }
            })}
            {(!task.needs.is_empty()).then(|| view! { <p class="muted">"Needs: "{task.needs.join(", ")}</p> })}
            <div class="actions">
                <Show when=move || retryable>
                    {
                        let task_id = task_id.clone();
                        view! { <button on:click=move |_| action.retry(task_id.clone()) data-testid="retry-task" title="Retry (r)">"Retry task"</button> }
                    }
                </Show>
            </div>
            <h4>"Attempts"</h4>
            <table class="attempts">
                <thead><tr><th>"#"</th><th>"State"</th><th>"Error"</th><th>"Exit"</th><th>"Worker"</th><th>"Backoff"</th><th>"Ran"</th><th></th></tr></thead>
                <tbody>{attempts}</tbody>
            </table>
            {task.attempts.is_empty().then(|| view! { <p class="muted">"No attempt yet."</p> })}
        </div>
    }
}
