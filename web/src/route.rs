//! Deep links: every view has a path, and the path is the source of truth for what is
//! shown. The server answers every unknown path with `index.html`, so a reload or a
//! pasted link lands on the same view.
//!
//! A hand-written parser instead of a router crate keeps the bundle small; the routes are
//! few and flat.

use leptos::prelude::*;
use wasm_bindgen::JsValue;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// All runs, or one pipeline's runs.
    Runs {
        pipeline: Option<String>,
    },
    /// A run: its DAG, optionally with a task selected.
    Run {
        id: String,
        task: Option<String>,
    },
    /// A run's timeline of attempts.
    Timeline {
        id: String,
    },
    /// The live log of an attempt.
    Log {
        attempt: String,
    },
    Load,
    Workers,
    Trigger,
}

impl Route {
    pub fn parse(path: &str) -> Route {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        match parts.as_slice() {
            ["pipelines", id] => Route::Runs {
                pipeline: Some((*id).to_owned()),
            },
            ["runs", id] => Route::Run {
                id: (*id).to_owned(),
                task: None,
            },
            ["runs", id, "tasks", task] => Route::Run {
                id: (*id).to_owned(),
                task: Some((*task).to_owned()),
            },
            ["runs", id, "timeline"] => Route::Timeline {
                id: (*id).to_owned(),
            },
            ["attempts", id, "log"] => Route::Log {
                attempt: (*id).to_owned(),
            },
            ["load"] => Route::Load,
            ["workers"] => Route::Workers,
            ["trigger"] => Route::Trigger,
            _ => Route::Runs { pipeline: None },
        }
    }

    pub fn path(&self) -> String {
        match self {
            Route::Runs { pipeline: None } => "/runs".to_owned(),
            Route::Runs { pipeline: Some(id) } => format!("/pipelines/{id}"),
            Route::Run { id, task: None } => format!("/runs/{id}"),
            Route::Run {
                id,
                task: Some(task),
            } => format!("/runs/{id}/tasks/{task}"),
            Route::Timeline { id } => format!("/runs/{id}/timeline"),
            Route::Log { attempt } => format!("/attempts/{attempt}/log"),
            Route::Load => "/load".to_owned(),
            Route::Workers => "/workers".to_owned(),
            Route::Trigger => "/trigger".to_owned(),
        }
    }

    /// The tab this route belongs to: a run's DAG, task and timeline share one tab.
    pub fn tab_key(&self) -> String {
        match self {
            Route::Run { id, .. } | Route::Timeline { id } => format!("run:{id}"),
            Route::Trigger => "/runs".to_owned(),
            other => other.path(),
        }
    }
}

/// The current route, shared through context.
#[derive(Clone, Copy)]
pub struct Router {
    pub route: RwSignal<Route>,
}

impl Router {
    /// Reads the address bar and follows the browser's back and forward buttons.
    pub fn install() -> Router {
        let route = RwSignal::new(Route::parse(&current_path()));
        let handle = window_event_listener(leptos::ev::popstate, move |_| {
            route.set(Route::parse(&current_path()));
        });
        // The router lives as long as the page.
        std::mem::forget(handle);
        let router = Router { route };
        provide_context(router);
        router
    }

    pub fn go(&self, to: Route) {
        if self.route.with_untracked(|r| *r == to) {
            return;
        }
        if let Some(history) = web_sys::window().and_then(|w| w.history().ok()) {
            let _ = history.push_state_with_url(&JsValue::NULL, "", Some(&to.path()));
        }
        self.route.set(to);
    }
}

pub fn use_router() -> Router {
    expect_context::<Router>()
}

fn current_path() -> String {
    web_sys::window()
        .and_then(|w| w.location().pathname().ok())
        .unwrap_or_default()
}

/// A short, still distinguishing form of an id for labels: UUIDv7 ids share their
/// leading (time) digits, so the tail is used.
pub fn short_id(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}
