//! The dashboard's home page: server version, pipeline list and sign-in.
//!
//! All data comes from one `Home` query. A missing token and a token the
//! server rejects (`UNAUTHENTICATED`) both end in the sign-in form; every other
//! failure goes to the error boundary, which shows the GraphQL message and code.

use leptos::ev::{MouseEvent, SubmitEvent};
use leptos::html::Input;
use leptos::prelude::*;

use crate::api::{self, ApiError, Home, Pipeline};
use crate::auth;

#[component]
pub fn HomePage() -> impl IntoView {
    let token = RwSignal::new(auth::init_token());
    // Reading `token` inside the fetcher makes signing in or out refetch.
    let home = LocalResource::new(move || load(token.get()));

    let version = move || home.get().and_then(Result::ok).map(|home| home.version);
    let sign_out = move |ev: MouseEvent| {
        ev.prevent_default();
        auth::clear_token();
        token.set(None);
    };

    let content = move || {
        Suspend::new(async move {
            match home.await {
                Ok(home) => Ok(view! { <PipelineTable pipelines=home.pipelines /> }.into_any()),
                Err(err) if err.is_unauthenticated() => {
                    // Only a token we actually sent can have been rejected;
                    // without one the form needs no explanation.
                    let notice = token.with_untracked(Option::is_some).then_some(err.message);
                    Ok(view! { <LoginForm token notice /> }.into_any())
                }
                Err(err) => Err(err),
            }
        })
    };

    view! {
        <header class="topbar">
            <h1>"Gantry"</h1>
            {move || {
                version().map(|version| view! { <span class="version" data-testid="version">{version}</span> })
            }}
            <Show when=move || token.with(Option::is_some)>
                <a class="sign-out" href="#" data-testid="sign-out" on:click=sign_out>"Sign out"</a>
            </Show>
        </header>
        <main>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                <ErrorBoundary fallback=move |errors| view! { <ErrorPanel errors retry=move || home.refetch() /> }>
                    {content}
                </ErrorBoundary>
            </Transition>
        </main>
    }
}

/// A missing token is treated like a rejected one so the view has a single
/// sign-in path, and no request is sent that is bound to fail.
async fn load(token: Option<String>) -> Result<Home, ApiError> {
    match token {
        Some(token) => api::home(&token).await,
        None => Err(ApiError {
            message: "no API token".to_owned(),
            code: Some(api::UNAUTHENTICATED.to_owned()),
        }),
    }
}

#[component]
fn PipelineTable(pipelines: Vec<Pipeline>) -> impl IntoView {
    if pipelines.is_empty() {
        return view! {
            <div class="empty" data-testid="empty-state">
                <h2>"No pipelines yet"</h2>
                <p class="muted">"Pipelines appear here once they are registered with the server."</p>
            </div>
        }
        .into_any();
    }

    view! {
        <table data-testid="pipelines-table">
            <thead>
                <tr>
                    <th scope="col">"Name"</th>
                    <th scope="col">"Provider"</th>
                    <th scope="col">"Repository"</th>
                </tr>
            </thead>
            <tbody>
                {pipelines
                    .into_iter()
                    .map(|pipeline| {
                        view! {
                            <tr data-testid="pipeline-row" data-id=pipeline.id>
                                <td>{pipeline.name}</td>
                                <td><span class="badge">{pipeline.provider}</span></td>
                                <td><code>{pipeline.repository}</code></td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
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
            <h2>"Sign in"</h2>
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
            <button type="submit">"Sign in"</button>
        </form>
    }
}

#[component]
fn ErrorPanel(
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
