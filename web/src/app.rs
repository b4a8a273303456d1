//! The desktop-style shell: sidebar, tabbed main pane, status bar, keyboard shortcuts,
//! themes and sign-in. Views render inside it and find shared state through context
//! ([`Session`], [`crate::stats::Stats`], [`crate::route::Router`]).
//!
//! The shell owns no view logic: it picks the view for the current route and keeps the
//! tabs in step with it.

use leptos::ev::{KeyboardEvent, MouseEvent, PointerEvent, SubmitEvent};
use leptos::html::Input;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::api::{self, ApiError, Home};
use crate::auth;
use crate::route::{Route, Router, use_router};
use crate::stats::Stats;
use crate::{load, logs, run, runs};

const THEME_KEY: &str = "gantry.theme";

/// The signed-in token and what the shell loaded with it.
#[derive(Clone, Copy)]
pub struct Session {
    pub token: RwSignal<Option<String>>,
    pub home: RwSignal<Option<Home>>,
}

impl Session {
    /// The token for a request; views only render once signed in, so it is present.
    pub fn token(&self) -> String {
        self.token.get_untracked().unwrap_or_default()
    }
}

pub fn use_session() -> Session {
    expect_context::<Session>()
}

#[component]
pub fn App() -> impl IntoView {
    let router = Router::install();
    let token = RwSignal::new(auth::init_token());
    let home = RwSignal::new(None::<Home>);
    let session = Session { token, home };
    provide_context(session);
    let theme = Theme::install();

    let loaded = LocalResource::new(move || {
        let token = token.get();
        async move {
            match token {
                Some(token) => api::home(&token).await,
                None => Err(ApiError {
                    message: "no API token".to_owned(),
                    code: Some(api::UNAUTHENTICATED.to_owned()),
                }),
            }
        }
    });
    Effect::new(move |_| {
        if let Some(Ok(data)) = loaded.get() {
            home.set(Some(data));
        }
    });

    let content = move || {
        Suspend::new(async move {
            match loaded.await {
                Ok(_) => Ok(view! { <Shell theme router /> }.into_any()),
                Err(err) if err.is_unauthenticated() => {
                    let notice = token.with_untracked(Option::is_some).then_some(err.message);
                    Ok(view! { <LoginForm token notice /> }.into_any())
                }
                Err(err) => Err(err),
            }
        })
    };
    view! {
        <Transition fallback=|| view! { <p class="muted boot">"Loading…"</p> }>
            <ErrorBoundary fallback=move |errors| view! { <ErrorPanel errors retry=move || loaded.refetch() /> }>
                {content}
            </ErrorBoundary>
        </Transition>
    }
}

/// Light or dark, remembered in local storage; the first visit follows the system.
#[derive(Clone, Copy)]
pub struct Theme(RwSignal<&'static str>);

impl Theme {
    fn install() -> Theme {
        let stored = storage().and_then(|s| s.get_item(THEME_KEY).ok().flatten());
        let system_dark = web_sys::window()
            .and_then(|w| w.match_media("(prefers-color-scheme: dark)").ok().flatten())
            .is_some_and(|m| m.matches());
        let initial = match stored.as_deref() {
            Some("dark") => "dark",
            Some("light") => "light",
            _ if system_dark => "dark",
            _ => "light",
        };
        let theme = RwSignal::new(initial);
        Effect::new(move |_| {
            let name = theme.get();
            if let Some(root) = web_sys::window()
                .and_then(|w| w.document())
                .and_then(|d| d.document_element())
            {
                let _ = root.set_attribute("data-theme", name);
            }
        });
        Theme(theme)
    }

    pub fn toggle(&self) {
        let next = if self.0.get_untracked() == "dark" {
            "light"
        } else {
            "dark"
        };
        if let Some(s) = storage() {
            let _ = s.set_item(THEME_KEY, next);
        }
        self.0.set(next);
    }
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// One open tab of the main pane.
#[derive(Debug, Clone, PartialEq)]
struct Tab {
    key: String,
    route: Route,
}

fn tab_title(route: &Route, home: Option<&Home>) -> String {
    match route {
        Route::Runs { pipeline: None } | Route::Trigger => "Runs".to_owned(),
        Route::Runs { pipeline: Some(id) } => home
            .and_then(|h| h.pipelines.iter().find(|p| &p.id == id))
            .map_or_else(|| "Pipeline".to_owned(), |p| format!("Runs · {}", p.name)),
        Route::Run { id, .. } | Route::Timeline { id } => {
            format!("Run …{}", crate::route::short_id(id))
        }
        Route::Log { attempt } => format!("Log …{}", crate::route::short_id(attempt)),
        Route::Load => "Load".to_owned(),
        Route::Workers => "Workers".to_owned(),
    }
}

/// Whether a key press belongs to a text field rather than to the shortcuts.
pub fn typing(ev: &KeyboardEvent) -> bool {
    if ev.ctrl_key() || ev.meta_key() || ev.alt_key() {
        return true;
    }
    ev.target()
        .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
        .is_some_and(|el| matches!(el.tag_name().as_str(), "INPUT" | "TEXTAREA" | "SELECT"))
}

#[component]
fn Shell(theme: Theme, router: Router) -> impl IntoView {
    let session = use_session();
    let stats = Stats::install(session);
    let route = router.route;
    let help = RwSignal::new(false);
    let sidebar_width = RwSignal::new(240.0f64);

    let tabs = RwSignal::new(Vec::<Tab>::new());
    Effect::new(move |_| {
        let current = route.get();
        let key = current.tab_key();
        tabs.update(|tabs| match tabs.iter_mut().find(|t| t.key == key) {
            Some(tab) => tab.route = current,
            None => tabs.push(Tab {
                key,
                route: current,
            }),
        });
    });
    let close_tab = move |key: String| {
        let active = route.with_untracked(Route::tab_key) == key;
        tabs.update(|tabs| tabs.retain(|t| t.key != key));
        if active {
            let next = tabs
                .with_untracked(|t| t.last().map(|t| t.route.clone()))
                .unwrap_or(Route::Runs { pipeline: None });
            router.go(next);
        }
    };

    let keys = window_event_listener(leptos::ev::keydown, move |ev: KeyboardEvent| {
        if typing(&ev) {
            if ev.key() == "Escape"
                && let Some(el) = ev
                    .target()
                    .and_then(|t| t.dyn_into::<web_sys::HtmlElement>().ok())
            {
                let _ = el.blur();
            }
            return;
        }
        let handled = match ev.key().as_str() {
            "?" => {
                help.update(|h| *h = !*h);
                true
            }
            "Escape" => {
                help.set(false);
                true
            }
            "/" => {
                focus_search();
                true
            }
            "1" => {
                router.go(Route::Runs { pipeline: None });
                true
            }
            "2" => {
                router.go(Route::Load);
                true
            }
            "3" => {
                router.go(Route::Workers);
                true
            }
            "n" => {
                router.go(Route::Trigger);
                true
            }
            "d" => {
                theme.toggle();
                true
            }
            _ => false,
        };
        if handled {
            ev.prevent_default();
        }
    });
    on_cleanup(move || keys.remove());

    // Dragging the splitter resizes the sidebar; the listeners live for the shell.
    let dragging = RwSignal::new(false);
    let on_move = window_event_listener(leptos::ev::pointermove, move |ev: PointerEvent| {
        if dragging.get_untracked() {
            sidebar_width.set((ev.client_x() as f64).clamp(160.0, 600.0));
        }
    });
    let on_up = window_event_listener(leptos::ev::pointerup, move |_| dragging.set(false));
    on_cleanup(move || {
        on_move.remove();
        on_up.remove();
    });

    let sign_out = move |ev: MouseEvent| {
        ev.prevent_default();
        auth::clear_token();
        session.token.set(None);
    };

    let view_for_route = move || match route.get_untracked() {
        Route::Runs { pipeline } => view! { <runs::RunsView pipeline /> }.into_any(),
        Route::Trigger => view! { <runs::RunsView pipeline=None /> }.into_any(),
        Route::Run { id, .. } | Route::Timeline { id } => view! { <run::RunView id /> }.into_any(),
        Route::Log { attempt } => view! { <logs::LogView attempt /> }.into_any(),
        Route::Load => view! { <load::LoadView /> }.into_any(),
        Route::Workers => view! { <load::WorkersView /> }.into_any(),
    };
    // The view's identity: a new identity builds a new view (keyed below), while a
    // change inside one (a task selected in a run, the trigger dialog over the runs
    // table) is left to the view itself.
    let view_key = Memo::new(move |_| match route.get() {
        Route::Run { id, .. } | Route::Timeline { id } => format!("run:{id}"),
        Route::Trigger | Route::Runs { pipeline: None } => "runs:".to_owned(),
        Route::Runs { pipeline: Some(p) } => format!("runs:{p}"),
        other => other.path(),
    });

    view! {
        <div
            class="shell"
            style=move || format!("grid-template-columns: {}px 5px minmax(0, 1fr)", sidebar_width.get())
        >
            <Sidebar />
            <div
                class="splitter"
                role="separator"
                aria-orientation="vertical"
                on:pointerdown=move |ev: PointerEvent| {
                    ev.prevent_default();
                    dragging.set(true);
                }
            ></div>
            <section class="main">
                <nav class="tabs" data-testid="tabs">
                    <For each=move || tabs.get() key=|tab| (tab.key.clone(), tab.route.path()) let:tab>
                        {
                            let key = tab.key.clone();
                            let close_key = key.clone();
                            let target = tab.route.clone();
                            let title = tab_title(&tab.route, session.home.get_untracked().as_ref());
                            view! {
                                <div class="tab" class:active=move || route.with(Route::tab_key) == key>
                                    <a
                                        href=tab.route.path()
                                        on:click=move |ev: MouseEvent| {
                                            ev.prevent_default();
                                            router.go(target.clone());
                                        }
                                    >
                                        {title}
                                    </a>
                                    <button
                                        class="close"
                                        title="Close tab"
                                        on:click=move |_| close_tab(close_key.clone())
                                    >
                                        "×"
                                    </button>
                                </div>
                            }
                        }
                    </For>
                </nav>
                <div class="view">
                    <For each=move || [view_key.get()] key=String::clone children=move |_| view_for_route() />
                </div>
            </section>
            <footer class="statusbar" data-testid="statusbar">
                <span class="conn" class:ok=move || stats.connected.get() == Some(true) data-testid="connection">
                    {move || match stats.connected.get() {
                        Some(true) => "● connected",
                        Some(false) => "● offline",
                        None => "● connecting",
                    }}
                </span>
                <span data-testid="queue-depth">
                    {move || format!("queued {}", stats.fleet.with(|f| f.as_ref().map_or(0, |f| f.queues.iter().map(|q| q.depth).sum::<i64>())))}
                </span>
                <span data-testid="workers-count">
                    {move || stats.fleet.with(|f| match f {
                        Some(f) => format!(
                            "workers {} busy / {}",
                            f.workers.iter().filter(|w| w.state == "busy").count(),
                            f.workers.iter().filter(|w| w.state != "lost").count(),
                        ),
                        None => "workers –".to_owned(),
                    })}
                </span>
                <span class="spacer"></span>
                <span class="version" data-testid="version">{move || session.home.with(|h| h.as_ref().map(|h| format!("v{}", h.version)))}</span>
                <button class="link" on:click=move |_| help.set(true) title="Keyboard shortcuts (?)">"? shortcuts"</button>
                <button class="link" on:click=move |_| theme.toggle() data-testid="theme-toggle" title="Toggle theme (d)">
                    {move || if theme.0.get() == "dark" { "☀ light" } else { "☾ dark" }}
                </button>
                <a class="link" href="#" data-testid="sign-out" on:click=sign_out>"Sign out"</a>
            </footer>
        </div>
        <Show when=move || help.get()>
            <HelpOverlay close=move || help.set(false) />
        </Show>
    }
}

fn focus_search() {
    if let Some(el) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("search"))
        .and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok())
    {
        let _ = el.focus();
    }
}

#[component]
fn Sidebar() -> impl IntoView {
    let session = use_session();
    let router = use_router();
    let link = move |label: &'static str, to: Route, testid: &'static str| {
        let href = to.path();
        let active_to = to.clone();
        view! {
            <a
                href=href
                data-testid=testid
                class:active=move || router.route.get() == active_to
                on:click=move |ev: MouseEvent| {
                    ev.prevent_default();
                    router.go(to.clone());
                }
            >
                {label}
            </a>
        }
    };
    let pipelines = move || {
        session.home.with(|h| {
            h.as_ref()
                .map(|h| h.pipelines.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let to = Route::Runs {
                        pipeline: Some(p.id.clone()),
                    };
                    let href = to.path();
                    let active_to = to.clone();
                    view! {
                        <a
                            href=href
                            class="pipeline"
                            data-testid="sidebar-pipeline"
                            title=p.repository.clone()
                            class:active=move || router.route.get() == active_to
                            on:click=move |ev: MouseEvent| {
                                ev.prevent_default();
                                router.go(to.clone());
                            }
                        >
                            {p.name.clone()}
                        </a>
                    }
                })
                .collect_view()
        })
    };
    let tenants = move || {
        session.home.with(|h| {
            h.as_ref()
                .map(|h| h.tenants.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|t| view! { <li title=t.id>{t.name}</li> })
                .collect_view()
        })
    };
    view! {
        <aside class="sidebar">
            <div class="brand">"Gantry"</div>
            <nav class="views">
                {link("Runs", Route::Runs { pipeline: None }, "nav-runs")}
                {link("Load", Route::Load, "nav-load")}
                {link("Workers", Route::Workers, "nav-workers")}
            </nav>
            <button class="primary" data-testid="open-trigger" on:click=move |_| router.go(Route::Trigger)>
                "Trigger run"
            </button>
            <h3>"Pipelines"</h3>
            <nav class="pipelines">{pipelines}</nav>
            <Show when=move || session.home.with(|h| h.as_ref().is_some_and(|h| !h.tenants.is_empty()))>
                <h3>"Tenants"</h3>
                <ul class="tenants">{tenants}</ul>
            </Show>
        </aside>
    }
}

#[component]
fn HelpOverlay(close: impl Fn() + Send + Sync + Copy + 'static) -> impl IntoView {
    let rows = [
        ("?", "show or hide this help"),
        ("/", "search (runs filter, log search)"),
        ("1 / 2 / 3", "runs, load, workers"),
        ("n", "trigger a run"),
        ("j / k", "next / previous run or task"),
        ("Enter", "open the selected run"),
        ("l", "open the selected task's log"),
        ("c", "cancel the run"),
        ("r", "retry the selected task"),
        ("f", "rerun what failed"),
        ("t", "switch graph / timeline"),
        ("d", "light / dark theme"),
        ("Esc", "close, leave a field"),
    ];
    view! {
        <div class="overlay" on:click=move |_| close() data-testid="help">
            <div class="card help" on:click=|ev: MouseEvent| ev.stop_propagation()>
                <h2>"Keyboard shortcuts"</h2>
                <table>
                    {rows
                        .into_iter()
                        .map(|(key, what)| view! { <tr><td><kbd>{key}</kbd></td><td>{what}</td></tr> })
                        .collect_view()}
                </table>
            </div>
        </div>
    }
}

#[component]
fn LoginForm(token: RwSignal<Option<String>>, notice: Option<String>) -> impl IntoView {
    let input = NodeRef::<Input>::new();
    let on_submit = move |ev: SubmitEvent| {
        // The form only exists to get Enter-to-submit; nothing is posted.
        ev.prevent_default();
        let Some(input) = input.get() else {
            return;
        };
        let value = input.value().trim().to_owned();
        if value.is_empty() {
            return;
        }
        auth::store_token(&value);
        token.set(Some(value));
    };

    view! {
        <form class="card login" data-testid="login-form" on:submit=on_submit>
            <h2>"Sign in to Gantry"</h2>
            {notice.map(|notice| view! { <p class="notice">"The server rejected the token: "{notice}</p> })}
            <label for="token">"API token"</label>
            <input
                id="token"
                name="token"
                type="password"
                autocomplete="off"
                required
                data-testid="token-input"
                node_ref=input
            />
            <button type="submit" class="primary">"Sign in"</button>
        </form>
    }
}

/// Shows GraphQL errors with their message and code.
#[component]
pub fn ErrorPanel(
    errors: ArcRwSignal<Errors>,
    retry: impl Fn() + Send + Sync + 'static,
) -> impl IntoView {
    let list = move || {
        errors
            .get()
            .into_iter()
            .map(|(_, err)| {
                let (message, code) = match err.downcast_ref::<ApiError>() {
                    Some(api) => (api.message.clone(), api.code.clone()),
                    None => (err.to_string(), None),
                };
                view! {
                    <li>
                        <span class="message">{message}</span>
                        {code.map(|code| view! { <code class="code">{code}</code> })}
                    </li>
                }
            })
            .collect_view()
    };

    view! {
        <div class="card error" role="alert" data-testid="error">
            <h2>"Could not load the dashboard"</h2>
            <ul>{list}</ul>
            <button type="button" on:click=move |_| retry()>"Retry"</button>
        </div>
    }
}

/// A one-line error under an action, or nothing.
pub fn error_line(error: RwSignal<Option<String>>) -> impl IntoView {
    move || {
        error
            .get()
            .map(|e| view! { <p class="notice" role="alert" data-testid="action-error">{e}</p> })
    }
}
