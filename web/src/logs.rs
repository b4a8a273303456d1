//! The live log of one attempt: follows `attemptLog` from the start, draws ANSI colours,
//! folds each step (`##[step]` … `##[exit]`) into a section, searches, and follows the
//! tail. Only the lines in view exist in the DOM, so a log of 100,000 lines scrolls as
//! fast as a short one; incoming chunks are applied in batches.

use std::collections::HashSet;
use std::time::Duration;

use leptos::html::Div;
use leptos::prelude::*;

use crate::api::live::{self, Live, LogChunk, Subscription};
use crate::app::{error_line, use_session};

const LINE_HEIGHT: f64 = 18.0;
const OVERSCAN: usize = 30;
const BATCH: Duration = Duration::from_millis(60);

#[derive(Debug, Clone, PartialEq)]
struct Line {
    text: String,
    /// `stdout`, `stderr` or `system`.
    stream: &'static str,
    section: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct Section {
    title: String,
    /// `0`, `1`, `signal 15`… once the step ended.
    exit: Option<String>,
    /// Index of its first line, and how many it has.
    first: usize,
    lines: usize,
}

/// The parsed log; section 0 holds output before the first step.
#[derive(Debug, Clone, PartialEq)]
struct LogModel {
    lines: Vec<Line>,
    sections: Vec<Section>,
    partial: String,
    partial_stream: &'static str,
    bytes: usize,
}

impl Default for LogModel {
    fn default() -> Self {
        Self {
            lines: Vec::new(),
            sections: vec![Section {
                title: "Set up".to_owned(),
                exit: None,
                first: 0,
                lines: 0,
            }],
            partial: String::new(),
            partial_stream: "stdout",
            bytes: 0,
        }
    }
}

fn stream_name(stream: &str) -> &'static str {
    match stream {
        "stderr" => "stderr",
        "system" => "system",
        _ => "stdout",
    }
}

impl LogModel {
    fn push_chunk(&mut self, chunk: &LogChunk) {
        self.bytes = self
            .bytes
            .max(chunk.offset.max(0) as usize + chunk.data.len());
        let stream = stream_name(&chunk.stream);
        if !self.partial.is_empty() && stream != self.partial_stream {
            self.finish_partial();
        }
        self.partial_stream = stream;
        let mut rest = chunk.data.as_str();
        while let Some(end) = rest.find('\n') {
            self.partial.push_str(&rest[..end]);
            self.finish_partial();
            rest = &rest[end + 1..];
        }
        self.partial.push_str(rest);
    }

    fn finish_partial(&mut self) {
        let text = std::mem::take(&mut self.partial);
        let text = text.strip_suffix('\r').unwrap_or(&text).to_owned();
        if let Some(title) = text.strip_prefix("##[step] ") {
            self.sections.push(Section {
                title: title.to_owned(),
                exit: None,
                first: self.lines.len(),
                lines: 0,
            });
            return;
        }
        let last = self.sections.len() - 1;
        if let Some(code) = text.strip_prefix("##[exit] ") {
            self.sections[last].exit = Some(code.to_owned());
            return;
        }
        if let Some(signal) = text.strip_prefix("##[signal] ") {
            self.sections[last].exit = Some(format!("signal {signal}"));
            return;
        }
        let stream = if text.starts_with("##[") {
            "system"
        } else {
            self.partial_stream
        };
        self.sections[last].lines += 1;
        self.lines.push(Line {
            text,
            stream,
            section: last,
        });
    }
}

/// One visible row: a section header or a line.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Row {
    Header(usize),
    Line(usize),
}

#[component]
pub fn LogView(attempt: String) -> impl IntoView {
    let session = use_session();
    let model = RwSignal::new(LogModel::default());
    let folded = RwSignal::new(HashSet::<usize>::new());
    let query = RwSignal::new(String::new());
    let follow = RwSignal::new(true);
    let status = RwSignal::new("connecting");
    let error = RwSignal::new(None::<String>);
    let scroll_top = RwSignal::new(0.0f64);
    let viewport = RwSignal::new(700.0f64);
    let body = NodeRef::<Div>::new();

    let pending = StoredValue::new(Vec::<LogChunk>::new());
    let flush_scheduled = StoredValue::new(false);
    let flush = move || {
        flush_scheduled.set_value(false);
        let chunks = pending.try_update_value(std::mem::take).unwrap_or_default();
        if !chunks.is_empty() {
            model.update(|m| {
                for chunk in &chunks {
                    m.push_chunk(chunk);
                }
            });
        }
    };
    let on_message = move |msg: Live<LogChunk>| match msg {
        Live::Connected => status.set("live"),
        Live::Next(chunk) => {
            pending.update_value(|p| p.push(chunk));
            if !flush_scheduled.get_value() {
                flush_scheduled.set_value(true);
                set_timeout(flush, BATCH);
            }
        }
        Live::Completed => {
            flush();
            model.update(|m| {
                if !m.partial.is_empty() {
                    m.finish_partial();
                }
            });
            status.set("ended");
        }
        Live::Failed(err) => {
            status.set("error");
            error.set(Some(err.to_string()));
        }
        Live::Disconnected => status.set("disconnected"),
    };
    let subscription = StoredValue::new_local(None::<Subscription>);
    match live::attempt_log(&session.token(), &attempt, 0, on_message) {
        Ok(sub) => subscription.set_value(Some(sub)),
        Err(err) => error.set(Some(err.to_string())),
    }
    on_cleanup(move || subscription.set_value(None));

    let rows = Memo::new(move |_| {
        let needle = query.get().to_lowercase();
        model.with(|m| {
            folded.with(|folded| {
                let mut rows = Vec::new();
                if !needle.is_empty() {
                    for (i, line) in m.lines.iter().enumerate() {
                        if strip_ansi(&line.text).to_lowercase().contains(&needle) {
                            rows.push(Row::Line(i));
                        }
                    }
                    return rows;
                }
                // A step's lines are contiguous: steps only ever start at the end.
                for (s, section) in m.sections.iter().enumerate() {
                    if s == 0 && section.lines == 0 {
                        continue;
                    }
                    rows.push(Row::Header(s));
                    if !folded.contains(&s) {
                        rows.extend((section.first..section.first + section.lines).map(Row::Line));
                    }
                }
                rows
            })
        })
    });

    // Follow the tail: after new rows render, scroll to the bottom.
    Effect::new(move |_| {
        rows.track();
        if follow.get_untracked() {
            request_animation_frame(move || {
                if let Some(el) = body.get_untracked() {
                    el.set_scroll_top(el.scroll_height());
                }
            });
        }
    });
    let on_scroll = move |_| {
        if let Some(el) = body.get_untracked() {
            let top = f64::from(el.scroll_top());
            scroll_top.set(top);
            viewport.set(f64::from(el.client_height().max(200)));
            // Scrolling up leaves follow mode; reaching the bottom enters it again.
            let at_bottom =
                top + f64::from(el.client_height()) >= f64::from(el.scroll_height()) - 4.0;
            if follow.get_untracked() != at_bottom {
                follow.set(at_bottom);
            }
        }
    };

    let visible = move || {
        let first = ((scroll_top.get() / LINE_HEIGHT) as usize).saturating_sub(OVERSCAN);
        let count = (viewport.get() / LINE_HEIGHT) as usize + 2 * OVERSCAN;
        rows.with(|rows| {
            let last = (first + count).min(rows.len());
            model.with(|m| {
                (first..last)
                    .map(|i| match rows[i] {
                        Row::Header(s) => {
                            let section = &m.sections[s];
                            let failed = section.exit.as_deref().is_some_and(|e| e != "0");
                            let title = format!(
                                "{} {}{}",
                                if folded.with_untracked(|f| f.contains(&s)) { "▸" } else { "▾" },
                                section.title,
                                section.exit.as_deref().map(|e| if e == "0" { "  ✓".to_owned() } else { format!("  ✗ {e}") }).unwrap_or_default()
                            );
                            view! {
                                <div
                                    class="log-row section"
                                    class:failed=failed
                                    style=format!("transform: translateY({}px)", i as f64 * LINE_HEIGHT)
                                    data-testid="log-section"
                                    on:click=move |_| folded.update(|f| { if !f.remove(&s) { f.insert(s); } })
                                >
                                    {title}
                                </div>
                            }
                            .into_any()
                        }
                        Row::Line(l) => {
                            let line = &m.lines[l];
                            let spans = ansi_spans(&line.text)
                                .into_iter()
                                .map(|(text, class)| view! { <span class=class>{text}</span> })
                                .collect_view();
                            view! {
                                <div
                                    class=format!("log-row {}", line.stream)
                                    style=format!("transform: translateY({}px)", i as f64 * LINE_HEIGHT)
                                    data-testid="log-line"
                                >
                                    <span class="ln">{l + 1}</span>
                                    {spans}
                                </div>
                            }
                            .into_any()
                        }
                    })
                    .collect_view()
            })
        })
    };

    let fold_all = move |_| model.with_untracked(|m| folded.set((0..m.sections.len()).collect()));
    let unfold_all = move |_| folded.set(HashSet::new());

    view! {
        <div class="log-view" data-testid="log-view">
            <div class="toolbar">
                <h2>"Log"</h2>
                <code class="muted">{attempt.clone()}</code>
                <span class=move || format!("live {}", status.get()) data-testid="log-status">{move || status.get()}</span>
                <span class="muted">{move || model.with(|m| format!("{} lines · {} bytes", m.lines.len(), m.bytes))}</span>
                <span class="spacer"></span>
                <input id="search" placeholder="search (/)" prop:value=move || query.get() on:input=move |ev| query.set(event_target_value(&ev)) data-testid="log-search" />
                <Show when=move || !query.with(String::is_empty)>
                    <span class="muted" data-testid="log-matches">{move || format!("{} matches", rows.with(Vec::len))}</span>
                </Show>
                <button on:click=fold_all>"Fold all"</button>
                <button on:click=unfold_all>"Unfold all"</button>
                <label class="check"><input type="checkbox" prop:checked=move || follow.get() on:change=move |ev| follow.set(event_target_checked(&ev)) data-testid="log-follow" />"follow"</label>
            </div>
            {error_line(error)}
            <div class="log-body" node_ref=body on:scroll=on_scroll>
                <div class="vspace" style=move || format!("height: {}px", rows.with(Vec::len) as f64 * LINE_HEIGHT + 8.0)>
                    {visible}
                </div>
            </div>
        </div>
    }
}

/// Removes ANSI escape sequences.
fn strip_ansi(text: &str) -> String {
    ansi_spans(text).into_iter().map(|(t, _)| t).collect()
}

/// Splits a line into runs of text with the CSS classes of their SGR attributes
/// (bold, the 16 colours); other escape sequences are dropped.
fn ansi_spans(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut fg: Option<u8> = None;
    let mut bold = false;
    let mut current = String::new();
    let class = |fg: Option<u8>, bold: bool| {
        let mut c = String::new();
        if let Some(f) = fg {
            c.push_str(&format!("fg{f}"));
        }
        if bold {
            c.push_str(" bold");
        }
        c
    };
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '\u{1b}' {
            current.push(ch);
            continue;
        }
        if chars.peek() != Some(&'[') {
            continue;
        }
        chars.next();
        let mut params = String::new();
        let mut end = None;
        for c in chars.by_ref() {
            if c.is_ascii_alphabetic() {
                end = Some(c);
                break;
            }
            params.push(c);
        }
        if end != Some('m') {
            continue;
        }
        if !current.is_empty() {
            out.push((std::mem::take(&mut current), class(fg, bold)));
        }
        for code in params.split(';').map(|p| p.parse::<u8>().unwrap_or(0)) {
            match code {
                0 => {
                    fg = None;
                    bold = false;
                }
                1 => bold = true,
                22 => bold = false,
                30..=37 => fg = Some(code - 30),
                90..=97 => fg = Some(code - 90 + 8),
                39 => fg = None,
                _ => {}
            }
        }
    }
    if !current.is_empty() || out.is_empty() {
        out.push((current, class(fg, bold)));
    }
    out
}
