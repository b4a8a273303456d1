//! Event subscriptions rendered once for all their subscribers.
//!
//! A commit on a run that many clients watch makes every subscription produce a message
//! per event at once. Executed one by one, the schema would resolve the same selection on
//! the same event once per subscriber. Instead, the WebSocket layer first *probes* a
//! subscription: the schema executes it as usual (parsing, validation, authorization and
//! the resolver's own checks all run), but the resolver records where its events come
//! from and which fields it selects instead of streaming them. The connection then reads
//! the events itself and has each one *rendered*: executed through the schema with the
//! subscriber's own request, once per event and per distinct selection (and caller
//! scope), and the resulting text sent to every subscriber that shares it. What a client
//! receives is byte for byte what the schema would have sent it.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use async_graphql::{Context, Data, Request, SelectionField};
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::OnceCell;
use tokio::sync::broadcast::error::RecvError;

use super::types::Event;
use super::{GantrySchema, gql, live};
use crate::domain::EventRecord;
use crate::service::{Caller, EventFilter, Service};

/// One item of an event subscription: an event, or the error that ends it.
pub(crate) type Item = Result<Arc<EventRecord>, async_graphql::Error>;

/// Where a subscription's events come from.
pub(crate) enum Source {
    /// A run's events after `after`, replayed then live, ending with the run.
    Run {
        service: Service,
        run: String,
        after: i64,
    },
    /// Filtered events of every run the caller sees.
    Events {
        service: Service,
        caller: Caller,
        filter: EventFilter,
        after: Option<i64>,
    },
}

impl Source {
    /// The subscription's items: replay from the log, then live ones, without a gap or a
    /// duplicate (the live feed is subscribed before the log is read, and live events at
    /// or below the last replayed `seq` are dropped).
    pub(crate) fn items(self) -> BoxStream<'static, Item> {
        match self {
            Source::Run {
                service: s,
                run,
                after,
            } => {
                let mut last = after;
                let mut live = s.bus().subscribe();
                async_stream::stream! {
                    loop {
                        let batch = match s.events_of_run(&run, last, 1000).await {
                            Ok(b) => b,
                            Err(e) => { yield Err(gql(e)); return; }
                        };
                        let done = batch.len() < 1000;
                        for e in batch {
                            last = e.seq;
                            let end = e.ends_run();
                            yield Ok(Arc::new(e));
                            if end { return; }
                        }
                        if done { break; }
                    }
                    loop {
                        match live.recv().await {
                            Ok(e) if e.run_id == run && e.seq > last => {
                                last = e.seq;
                                let end = e.ends_run();
                                yield Ok(e);
                                if end { return; }
                            }
                            Ok(_) => {}
                            Err(RecvError::Lagged(_)) => {
                                yield Err(live::lagged(last));
                                return;
                            }
                            Err(RecvError::Closed) => return,
                        }
                    }
                }
                .boxed()
            }
            Source::Events {
                service,
                caller,
                filter,
                after,
            } => {
                let mut feed = live::Feed::new(service, caller, filter, after);
                async_stream::stream! {
                    loop {
                        match feed.next().await {
                            Ok(live::Next::Event(e)) => yield Ok(e),
                            Ok(live::Next::Lagged) => { yield Err(live::lagged(feed.last)); return; }
                            Ok(live::Next::Closed) => return,
                            Err(e) => { yield Err(gql(e)); return; }
                        }
                    }
                }
                .boxed()
            }
        }
    }
}

/// What a subscription resolver is asked to do, given as request data.
pub(crate) enum Mode {
    /// Record the subscription's source and selection; stream nothing.
    Probe(Arc<Mutex<Vec<Plan>>>),
    /// Stream this one item.
    Render(Mutex<Option<Item>>),
}

/// A probed subscription: its source, and the key of everything that shapes the text of
/// one of its events (the selection with its arguments and directives resolved, and the
/// caller's scope).
pub(crate) struct Plan {
    pub(crate) source: Source,
    pub(crate) key: Arc<str>,
}

/// The stream an event subscription resolver returns: its events, or, when probed or
/// rendering, what the mode asks for. `source` checks the request and names the source;
/// rendering skips it, as the subscription was checked when probed.
pub(crate) async fn events(
    ctx: &Context<'_>,
    caller: &Caller,
    source: impl Future<Output = async_graphql::Result<Source>>,
) -> async_graphql::Result<BoxStream<'static, async_graphql::Result<Event>>> {
    let to_event = |i: Item| i.map(|e| Event(Arc::unwrap_or_clone(e)));
    match ctx.data_opt::<Mode>() {
        None => Ok(source.await?.items().map(to_event).boxed()),
        Some(Mode::Render(item)) => {
            let item = item.lock().unwrap_or_else(|p| p.into_inner()).take();
            Ok(stream::iter(item).map(to_event).boxed())
        }
        Some(Mode::Probe(plans)) => {
            let source = source.await?;
            let key = selection_key(ctx, caller)?;
            plans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Plan { source, key });
            Ok(stream::empty().boxed())
        }
    }
}

fn selection_key(ctx: &Context<'_>, caller: &Caller) -> async_graphql::Result<Arc<str>> {
    let field = ctx.field();
    let mut key = format!(
        "{}/{:?}/{}:{}",
        caller.tenant_id,
        caller.scopes,
        field.alias().unwrap_or_default(),
        field.name()
    );
    write_selection(&mut key, field)?;
    Ok(key.into())
}

fn write_selection(key: &mut String, field: SelectionField<'_>) -> async_graphql::Result<()> {
    key.push('{');
    for f in field.selection_set() {
        let _ = write!(key, "{}:{}(", f.alias().unwrap_or_default(), f.name());
        for (name, value) in f.arguments()? {
            let _ = write!(key, "{name}:{value},");
        }
        key.push(')');
        for d in f.directives()? {
            let _ = write!(key, "@{}(", d.name.node);
            for (name, value) in &d.arguments {
                let _ = write!(key, "{}:{},", name.node, value.node);
            }
            key.push(')');
        }
        write_selection(key, f)?;
        key.push(' ');
    }
    key.push('}');
    Ok(())
}

/// A subscriber's request, kept to execute it again.
pub(crate) struct Query {
    query: String,
    operation_name: Option<String>,
    variables: async_graphql::Variables,
    extensions: async_graphql::Extensions,
}

impl Query {
    pub(crate) fn of(r: &Request) -> Query {
        Query {
            query: r.query.clone(),
            operation_name: r.operation_name.clone(),
            variables: r.variables.clone(),
            extensions: r.extensions.clone(),
        }
    }

    fn request(&self, mode: Mode) -> Request {
        let mut r = Request::new(self.query.clone()).variables(self.variables.clone());
        r.operation_name = self.operation_name.clone();
        r.extensions = self.extensions.clone();
        r.data(mode)
    }
}

/// Probes a subscription request: the plan of its event subscription, or `None` when
/// it is anything else or the schema refuses it (then it is executed as usual and reports
/// its errors itself). Only a subscription whose one root field is `runEvents` or
/// `events` is executed here: those do nothing when probed.
pub(crate) async fn probe(
    schema: &GantrySchema,
    session: &Arc<Data>,
    query: &Query,
) -> Option<Plan> {
    if !is_event_subscription(query) {
        return None;
    }
    let plans = Arc::new(Mutex::new(Vec::new()));
    let request = query.request(Mode::Probe(plans.clone()));
    let mut responses = schema.execute_stream_with_session_data(request, session.clone());
    // Refused, a probe yields a response with errors; accepted, it ends with none.
    if responses.next().await.is_some() {
        return None;
    }
    drop(responses);
    let mut plans = std::mem::take(&mut *plans.lock().unwrap_or_else(|p| p.into_inner()));
    match plans.len() {
        1 => plans.pop(),
        _ => None,
    }
}

fn is_event_subscription(query: &Query) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
    let Ok(doc) = async_graphql::parser::parse_query(&query.query) else {
        return false;
    };
    let op = match (&doc.operations, &query.operation_name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => match ops.get(name.as_str()) {
            Some(op) => op,
            None => return false,
        },
        (DocumentOperations::Multiple(_), None) => return false,
    };
    let items = &op.node.selection_set.node.items;
    op.node.ty == OperationType::Subscription
        && items.len() == 1
        && matches!(&items[0].node, Selection::Field(f)
            if matches!(f.node.name.node.as_str(), "runEvents" | "events"))
}

/// How many rendered events are kept for the subscribers still behind.
const KEPT_RENDERS: usize = 16_384;

/// The texts of rendered events, by selection key and `seq`, shared by all connections.
#[derive(Default)]
pub struct Renders {
    inner: Mutex<RenderMap>,
}

/// A rendering: filled by the first subscriber that needs it.
type Cell = Arc<OnceCell<Arc<str>>>;

/// Which rendering: the selection key and the event's `seq`.
type RenderId = (Arc<str>, i64);

#[derive(Default)]
struct RenderMap {
    cells: HashMap<RenderId, Cell>,
    order: VecDeque<RenderId>,
}

impl Renders {
    /// The payload text of `item` for subscribers of `key`: an event is executed once
    /// for all of them (the first to ask renders it, the others wait for it); an error
    /// is rendered for its subscriber alone.
    pub(crate) async fn render(
        &self,
        schema: &GantrySchema,
        session: &Arc<Data>,
        query: &Query,
        key: &Arc<str>,
        item: Item,
    ) -> Arc<str> {
        let seq = match &item {
            Ok(e) => e.seq,
            Err(_) => return render_once(schema, session, query, item).await,
        };
        let cell = self.cell(key, seq);
        cell.get_or_init(|| render_once(schema, session, query, item))
            .await
            .clone()
    }

    fn cell(&self, key: &Arc<str>, seq: i64) -> Cell {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = (key.clone(), seq);
        if let Some(cell) = map.cells.get(&id) {
            return cell.clone();
        }
        let cell = Arc::new(OnceCell::new());
        map.cells.insert(id.clone(), cell.clone());
        map.order.push_back(id);
        while map.order.len() > KEPT_RENDERS {
            if let Some(old) = map.order.pop_front() {
                map.cells.remove(&old);
            }
        }
        cell
    }
}

async fn render_once(
    schema: &GantrySchema,
    session: &Arc<Data>,
    query: &Query,
    item: Item,
) -> Arc<str> {
    crate::metrics::global()
        .subscription_renders
        .with(&[])
        .inc();
    let request = query.request(Mode::Render(Mutex::new(Some(item))));
    let response = schema
        .execute_stream_with_session_data(request, session.clone())
        .next()
        .await
        .unwrap_or_else(|| {
            async_graphql::Response::from_errors(vec![async_graphql::ServerError::new(
                "the event could not be rendered",
                None,
            )])
        });
    serde_json::to_string(&response).unwrap_or_default().into()
}
