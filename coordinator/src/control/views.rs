//! Read-only views of the state: apps, instances (paged), nodes, rollouts, endpoints, autoscale
//! status.

use std::cell::OnceCell;
use std::collections::BTreeMap;

use uuid::Uuid;

use crate::core::reconcile;
use crate::core::status::{self, Note};
use crate::limits;
use crate::model::view::{AppFigures, AutoscaleCount, InstanceFigures, MetricsView, NodeFigures};
use crate::model::{AppRecord, InstanceObserved, InstanceRecord};
use crate::model::{
    AppView, AutoscaleView, Endpoint, EndpointsView, Event, EventKind, Health, InstanceState,
    InstanceView, NodeView, Rollouts,
};

use super::{
    Control, ControlConfig, ControlError, Inner, Leaving, Result, awaited, find_app, is_ready,
    seconds_phrase,
};

mod nodes;
use nodes::node_views;

/// Instances per `ListInstances` page unless the client asks for another size, and the most it
/// may ask for: a page of views is built under the state lock, so it must stay short.
pub(super) const DEFAULT_INSTANCE_PAGE: u32 = 1000;

pub(super) const MAX_INSTANCE_PAGE: u32 = 5000;

/// Apps per `ListApps` page, likewise (an app's view carries its spec, up to 1 MiB).
pub(super) const DEFAULT_APP_PAGE: u32 = 100;

pub(super) const MAX_APP_PAGE: u32 = 1000;

/// Where a `ListInstances` page ends, as its token says: the sort key of its last instance.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InstanceKey {
    app: String,
    index: u32,
    id: Uuid,
}

impl InstanceKey {
    /// `index/id/app`: the app name last, so that it needs no escaping.
    fn token(app: &str, index: u32, id: &str) -> String {
        format!("{index}/{id}/{app}")
    }

    fn parse(token: &str) -> Result<Option<InstanceKey>> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            ControlError::InvalidArgument(
                "page_token: not a token this coordinator gave; list again without it".into(),
            )
        };
        let mut parts = token.splitn(3, '/');
        let index = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let id = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let app = parts
            .next()
            .filter(|a| pmcluster_spec::app::validate_name(a).is_ok())
            .ok_or_else(bad)?;
        Ok(Some(InstanceKey {
            app: app.to_string(),
            index,
            id,
        }))
    }

    /// Whether `key` sorts after this one (and so belongs to a later page).
    fn is_before(&self, key: &(&str, u32, Uuid)) -> bool {
        (self.app.as_str(), self.index, self.id) < *key
    }
}

/// Where a `ListApps` page ends, as its token says: `app/NAME`, its last app. The app may be
/// deleted before the next call, so a token is read without looking the app up (the next page
/// starts where it would sort); what tells a garbled or made-up token from such a stale one is
/// its form: the prefix, and a name that an app could have.
const APP_TOKEN_PREFIX: &str = "app/";

fn app_token(name: &str) -> String {
    format!("{APP_TOKEN_PREFIX}{name}")
}

/// The app name a `ListApps` token names (`None` for the first page).
fn parse_app_token(token: &str) -> Result<Option<&str>> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix(APP_TOKEN_PREFIX)
        .filter(|name| pmcluster_spec::app::validate_name(name).is_ok())
        .map(Some)
        .ok_or_else(|| {
            ControlError::InvalidArgument(
                "page_token: not a token this coordinator gave; list again without it".into(),
            )
        })
}

impl Control {
    pub fn get_app(&self, name: &str) -> Result<AppView> {
        let inner = self.lock();
        let app = find_app(&inner.state, name)?;
        Ok(app_view(&inner, &self.config, app))
    }

    pub fn list_apps(&self) -> Vec<AppView> {
        let inner = self.lock();
        let counts = state_counts(&inner, &self.config);
        let max = MaxCounts::new(&inner, &self.config);
        inner
            .state
            .apps
            .values()
            .map(|a| app_view_counted(a, counts.get(a.spec.name.as_str()), max.of(a)))
            .collect()
    }

    /// The app's rollout, its history and the versions it keeps.
    pub fn rollouts(&self, name: &str) -> Result<Rollouts> {
        let inner = self.lock();
        let app = find_app(&inner.state, name)?;
        let mut versions: Vec<u64> = app.versions.keys().copied().collect();
        versions.push(app.version);
        Ok(Rollouts {
            current: app.deployment.clone(),
            history: app.history.clone(),
            versions,
            version: app.version,
        })
    }

    /// The app's endpoints: online, healthy, not draining instances with their node's address.
    pub fn endpoints(&self, name: &str) -> Result<EndpointsView> {
        let inner = self.lock();
        find_app(&inner.state, name)?;
        let mut endpoints: Vec<Endpoint> = inner
            .state
            .app_instances(name)
            .into_iter()
            .filter(|r| r.draining_since.is_none() && !r.disabled)
            .filter(|r| healthy_since(&inner, r).is_some())
            .filter_map(|r| {
                let node = r.node.as_ref()?;
                let port = inner
                    .observed
                    .get(&r.id)
                    .map(|o| o.port)
                    .filter(|p| *p != 0)
                    .or(r.port.map(u32::from))?;
                let host = inner
                    .state
                    .nodes
                    .get(node)
                    .map(|n| n.address.clone())
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| "127.0.0.1".into());
                Some(Endpoint {
                    host,
                    port,
                    index: r.index,
                    node: node.clone(),
                    version: r.app_version,
                    instance_id: r.id.to_string(),
                })
            })
            .collect();
        endpoints.sort_by_key(|e| (e.index, e.port));
        Ok(EndpointsView {
            app: name.to_string(),
            endpoints,
        })
    }

    /// The quarantined nodes that `app`'s records (of `index`, or all) are placed on: a start,
    /// stop or restart of those waits there until the node is adopted, which the caller is told
    /// rather than left to read a count as done.
    pub fn quarantined_holding(&self, app: &str, index: Option<u32>) -> Vec<String> {
        let inner = self.lock();
        let mut nodes: Vec<String> = inner
            .ahead
            .app_instances(app)
            .into_iter()
            .filter(|r| index.is_none_or(|i| i == r.index))
            .filter_map(|r| r.node.as_ref())
            .filter(|n| {
                inner
                    .nodes
                    .get(n.as_str())
                    .is_some_and(super::is_quarantined)
            })
            .cloned()
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    pub fn list_instances(&self, app: &str) -> Result<Vec<InstanceView>> {
        let inner = self.lock();
        if !app.is_empty() && held_views(&inner, app).is_empty() && !has_leaving(&inner, app) {
            find_app(&inner.state, app)?;
        }
        let mut out: Vec<InstanceView> = inner
            .state
            .instances
            .values()
            .filter(|i| app.is_empty() || i.app == app)
            .map(|i| instance_view(&inner, &self.config, i))
            .collect();
        out.extend(held_views(&inner, app));
        out.extend(
            leaving_of(&inner, app)
                .map(|(node, id, process)| leaving_view(&inner, node, id, process)),
        );
        out.sort_by(|a, b| (&a.app, a.index, &a.id).cmp(&(&b.app, b.index, &b.id)));
        Ok(out)
    }

    /// One page of `list_instances`: at most `page_size` instances (0: the default) after the
    /// position `page_token` names, within [`limits::LIST_REPLY_BUDGET`]. Returns the page and the
    /// token of the next one (empty after the last).
    pub fn list_instances_page(
        &self,
        app: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<InstanceView>, String)> {
        let page_size = match page_size {
            0 => DEFAULT_INSTANCE_PAGE,
            n => n.min(MAX_INSTANCE_PAGE),
        } as usize;
        let after = InstanceKey::parse(page_token)?;
        let inner = self.lock();
        let held = held_views(&inner, app);
        // Asked only on the first page: a deleted app's last process may end between two pages.
        if page_token.is_empty() && !app.is_empty() && held.is_empty() && !has_leaving(&inner, app)
        {
            find_app(&inner.state, app)?;
        }
        // Only keys are sorted; views are built for the page alone. A process still ending
        // after its record went (see `Leaving`) is keyed with its node.
        let mut keys: Vec<(&str, u32, Uuid, Option<&str>)> = inner
            .state
            .instances
            .values()
            .filter(|i| app.is_empty() || i.app == app)
            .map(|i| (i.app.as_str(), i.index, i.id, None))
            .chain(
                leaving_of(&inner, app)
                    .map(|(node, id, p)| (p.app.as_str(), p.index, *id, Some(node))),
            )
            .filter(|k| after.as_ref().is_none_or(|a| a.is_before(&(k.0, k.1, k.2))))
            .collect();
        // A partial sort: the page is all that is needed of the order.
        let wanted = page_size.min(keys.len());
        if wanted < keys.len() {
            keys.select_nth_unstable(wanted);
            keys.truncate(wanted + 1);
        }
        keys.sort_unstable();
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut more = keys.len() > wanted;
        for key in &keys {
            let view = match key.3 {
                None => inner
                    .state
                    .instances
                    .get(&key.2)
                    .map(|rec| instance_view(&inner, &self.config, rec)),
                Some(node) => (inner.leaving.get(node))
                    .and_then(|on_node| on_node.get(&key.2))
                    .map(|process| leaving_view(&inner, node, &key.2, process)),
            };
            let Some(view) = view else {
                continue;
            };
            if page.len() == wanted {
                break;
            }
            let size = limits::instance_view_bytes(&view);
            if !page.is_empty() && bytes + size > limits::LIST_REPLY_BUDGET {
                more = true;
                break;
            }
            bytes += size;
            page.push(view);
        }
        let next = match page.last() {
            Some(last) if more => InstanceKey::token(&last.app, last.index, &last.id),
            _ => String::new(),
        };
        // What quarantined nodes hold is not in the records' order; it comes with the first page
        // (a handful of instances per node, bounded by the desired-set budget).
        if page_token.is_empty() {
            page.extend(held);
            page.sort_by(|a, b| (&a.app, a.index, &a.id).cmp(&(&b.app, b.index, &b.id)));
        }
        Ok((page, next))
    }

    /// One page of `list_apps`, as [`Control::list_instances_page`] pages instances.
    pub fn list_apps_page(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<AppView>, String)> {
        let page_size = match page_size {
            0 => DEFAULT_APP_PAGE,
            n => n.min(MAX_APP_PAGE),
        } as usize;
        let after = parse_app_token(page_token)?;
        let inner = self.lock();
        let counts = state_counts(&inner, &self.config);
        let max = MaxCounts::new(&inner, &self.config);
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        let apps: Box<dyn Iterator<Item = &AppRecord>> = match after {
            None => Box::new(inner.state.apps.values()),
            Some(name) => {
                let start = (
                    std::ops::Bound::Excluded(name.to_string()),
                    std::ops::Bound::Unbounded,
                );
                Box::new(inner.state.apps.range(start).map(|(_, a)| a))
            }
        };
        for app in apps {
            if page.len() == page_size {
                more = true;
                break;
            }
            let view = app_view_counted(app, counts.get(app.spec.name.as_str()), max.of(app));
            let size = limits::app_view_bytes(&view);
            if !page.is_empty() && bytes + size > limits::LIST_REPLY_BUDGET {
                more = true;
                break;
            }
            bytes += size;
            page.push(view);
        }
        let next = match page.last() {
            Some(last) if more => app_token(&last.spec.name),
            _ => String::new(),
        };
        Ok((page, next))
    }

    pub fn list_nodes(&self) -> Vec<NodeView> {
        let inner = self.lock();
        node_views(&inner, &self.config)
    }

    /// The figures of `/metrics`: every instance (app, index, node, online, CPU time, memory,
    /// restarts), every app's counts and rollout, every node's status and capacity, the
    /// autoscaler's counts. One pass over the records under the lock, copying numbers and names.
    pub fn metrics_view(&self) -> MetricsView {
        let inner = self.lock();
        let mut apps: BTreeMap<&str, AppFigures> = inner
            .state
            .apps
            .iter()
            .map(|(name, app)| {
                let figures = AppFigures {
                    app: name.clone(),
                    desired: app.spec.instances,
                    rollout: app
                        .deployment
                        .as_ref()
                        .map(|d| (d.state.name(), d.done, d.total)),
                    ..AppFigures::default()
                };
                (name.as_str(), figures)
            })
            .collect();
        let mut instances: Vec<InstanceFigures> = Vec::with_capacity(inner.state.instances.len());
        for rec in inner.state.instances.values() {
            let observed = inner.observed.get(&rec.id);
            let node_up = rec
                .node
                .as_ref()
                .and_then(|n| inner.nodes.get(n))
                .is_some_and(|l| is_ready(l, &self.config, inner.now));
            let reported = observed.map(|o| (o.state, o.restart_epoch));
            let (state, _) = status::derive(rec, reported, node_up);
            if let Some(app) = apps.get_mut(rec.app.as_str()) {
                match state {
                    InstanceState::Online => app.online += 1,
                    InstanceState::Pending => app.pending += 1,
                    _ => {}
                }
            }
            // An agent's figures stand only while its node is up: a lost node's are stale.
            let figures = observed.filter(|_| node_up);
            instances.push(InstanceFigures {
                app: rec.app.clone(),
                index: rec.index,
                node: rec.node.clone().unwrap_or_default(),
                online: state == InstanceState::Online,
                cpu_time_ms: figures.map_or(0, |o| o.cpu_time_ms),
                memory_bytes: figures.map_or(0, |o| o.memory_bytes),
                restarts: figures.map_or(0, |o| u64::from(o.restarts)),
            });
        }
        let nodes = node_views(&inner, &self.config)
            .into_iter()
            .map(|n| NodeFigures {
                name: n.name,
                status: n.status,
                cores: n.cores,
                memory_bytes: n.memory_bytes,
                instances: n.instances,
                allocated_cpu_millis: n.allocated_cpu_millis,
                allocated_memory_bytes: n.allocated_memory_bytes,
            })
            .collect();
        let autoscale = inner
            .autoscale_counts
            .iter()
            .map(|((app, direction, outcome), count)| AutoscaleCount {
                app: app.clone(),
                direction,
                outcome,
                count: *count,
            })
            .collect();
        let apps = apps.into_values().collect();
        drop(inner);
        MetricsView {
            instances: merge_same_series(instances),
            apps,
            nodes,
            autoscale,
        }
    }
}

/// Sorts by (app, index, node) and merges records that share all three (a handoff's old and new
/// copy on one node, for a moment): a series must appear once in a scrape.
fn merge_same_series(mut instances: Vec<InstanceFigures>) -> Vec<InstanceFigures> {
    instances.sort_by(|a, b| (&a.app, a.index, &a.node).cmp(&(&b.app, b.index, &b.node)));
    let mut out: Vec<InstanceFigures> = Vec::with_capacity(instances.len());
    for i in instances {
        match out.last_mut() {
            Some(last) if (&last.app, last.index, &last.node) == (&i.app, i.index, &i.node) => {
                last.online |= i.online;
                // Agents' figures: saturating, so a wild one cannot fail a scrape.
                last.cpu_time_ms = last.cpu_time_ms.saturating_add(i.cpu_time_ms);
                last.memory_bytes = last.memory_bytes.saturating_add(i.memory_bytes);
                last.restarts = last.restarts.saturating_add(i.restarts);
            }
            _ => out.push(i),
        }
    }
    out
}

impl Control {
    pub fn get_autoscale(&self, name: &str) -> Result<AutoscaleView> {
        let inner = self.lock();
        let app = find_app(&inner.state, name)?;
        let sample = self.sample(&inner, name, self.now());
        let status = AutoscaleView {
            app: name.to_string(),
            policy: app.spec.autoscale.clone(),
            instances: app.spec.instances,
            online: sample.online,
            cpu_avg: sample.cpu,
            memory_avg_bytes: sample.memory.map(|m| m as u64),
            state: inner
                .scaling
                .get(name)
                .map(|s| s.last_reason.clone())
                .unwrap_or_default(),
            decisions: app
                .scaled
                .iter()
                .map(|d| Event {
                    at_ms: d.at_ms,
                    kind: EventKind::Autoscale,
                    app: name.to_string(),
                    node: String::new(),
                    index: None,
                    message: d.reason.clone(),
                })
                .collect(),
        };
        Ok(status)
    }
}

pub(super) fn instance_view(
    inner: &Inner,
    config: &ControlConfig,
    rec: &InstanceRecord,
) -> InstanceView {
    let observed = inner.observed.get(&rec.id);
    let host = node_address(inner, rec.node.as_deref().unwrap_or_default());
    let mut out = InstanceView {
        id: rec.id.to_string(),
        app: rec.app.clone(),
        index: rec.index,
        node: rec.node.clone().unwrap_or_default(),
        port: rec.port.map(u32::from).unwrap_or(0),
        app_version: rec.app_version,
        stopped: rec.stopped,
        host,
        disabled: rec.disabled,
        leak: inner
            .memory
            .get(&rec.id)
            .and_then(|t| t.suspected.clone())
            .unwrap_or_default(),
        ..InstanceView::default()
    };
    if let Some(o) = observed {
        reported(&mut out, o);
        out.last_exit_code = o.last_exit_code;
        out.message = o.message.clone();
    }
    let live = rec.node.as_ref().and_then(|n| inner.nodes.get(n));
    let node_up = live.is_some_and(|l| is_ready(l, config, inner.now));
    let reported = observed.map(|o| (o.state, o.restart_epoch));
    let (status, note) = status::derive(rec, reported, node_up);
    let agents_own = matches!(note, Note::Reported);
    match note {
        Note::Pending => {
            out.message = inner
                .pending
                .get(&rec.app)
                .cloned()
                .unwrap_or_else(|| "waiting for a node".into());
        }
        Note::NodeDown(n) if live.is_some_and(|l| awaited(l, inner.now)) => {
            let left = live
                .and_then(|l| l.down_since_ms)
                .map_or(0, |at| at.saturating_sub(inner.now));
            out.message = format!(
                "node {n} has not reconnected to this coordinator yet (it started or took over \
                 lately); the node counts as down if it has not in {}",
                seconds_phrase(left)
            );
        }
        Note::NodeDown(n) => {
            out.message = format!("node {n} is down");
            // The last figures are no longer measured: a trial read a CPU figure and an uptime
            // that kept growing on a node that was gone. The pid and port still say what ran.
            out.cpu_percent = 0.0;
            out.memory_bytes = 0;
            out.started_at_ms = 0;
        }
        Note::Reported => {}
        Note::Restarting => {
            out.message = "restart asked; its agent has not started it again yet".into();
        }
    }
    // Its node is up but takes no desired set (a store restored from an older copy, say):
    // whatever the record asks, a start, a stop or a restart, waits for an operator, and that
    // is the reason a user waiting on it must see. Beside the agent's own message, which may
    // say more (and which `--wait` reads). The reason itself is long and the node's: `nodes`
    // shows it once.
    let quarantined = rec
        .node
        .as_ref()
        .filter(|_| node_up && live.is_some_and(super::is_quarantined));
    if let Some(node) = quarantined {
        let why = format!(
            "node {node} is quarantined: nothing starts, stops or restarts it until `pmcluster \
             nodes adopt {node}` (`pmcluster nodes` says why)"
        );
        out.message = if agents_own && !out.message.is_empty() {
            format!("{}; {why}", out.message)
        } else {
            why
        };
    }
    out.state = status;
    out
}

/// The address recorded for `node` (empty for none, or a node never registered).
fn node_address(inner: &Inner, node: &str) -> String {
    inner
        .state
        .nodes
        .get(node)
        .map(|n| n.address.clone())
        .unwrap_or_default()
}

/// The instances that quarantined nodes hold and this cluster has no record of (of `app`, or of
/// every app when empty), as the agents report them: listed, so that an operator sees what runs
/// before adopting it.
pub(super) fn held_views(inner: &Inner, app: &str) -> Vec<InstanceView> {
    let mut out = Vec::new();
    for (node, live) in &inner.nodes {
        let Some(why) = live.session.as_ref().and_then(|s| s.quarantine.as_ref()) else {
            continue;
        };
        for a in &live.held {
            if (!app.is_empty() && a.spec.name != app) || inner.state.instances.contains_key(&a.id)
            {
                continue;
            }
            let mut view = InstanceView {
                id: a.id.to_string(),
                app: a.spec.name.clone(),
                index: a.index,
                node: node.clone(),
                port: a.port,
                app_version: a.app_version,
                stopped: !a.run,
                state: InstanceState::Unknown,
                host: node_address(inner, node),
                unmanaged: true,
                ..InstanceView::default()
            };
            if let Some(o) = inner.observed.get(&a.id) {
                reported(&mut view, o);
                view.state = o.state;
            }
            view.message = format!("not managed: node {node} is quarantined ({why})");
            out.push(view);
        }
    }
    out
}

/// The processes still ending after their records went (see `Leaving`), of `app` or of every
/// app: node, instance id and process.
fn leaving_of<'a>(
    inner: &'a Inner,
    app: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Uuid, &'a Leaving)> + 'a {
    inner.leaving.iter().flat_map(move |(node, on_node)| {
        on_node
            .iter()
            .filter(move |(_, p)| app.is_empty() || p.app == app)
            .map(move |(id, p)| (node.as_str(), id, p))
    })
}

fn has_leaving(inner: &Inner, app: &str) -> bool {
    leaving_of(inner, app).next().is_some()
}

/// A process still ending after its record went, as `list` shows it: stopping, with what its
/// agent last reported.
fn leaving_view(inner: &Inner, node: &str, id: &Uuid, process: &Leaving) -> InstanceView {
    let mut view = InstanceView {
        id: id.to_string(),
        app: process.app.clone(),
        index: process.index,
        node: node.to_string(),
        state: InstanceState::Stopping,
        app_version: process.app_version,
        message: if process.status.pid == 0 {
            "removed; waiting for its agent to confirm that it runs no process for it"
        } else {
            "removed; its agent is stopping the process"
        }
        .to_string(),
        host: node_address(inner, node),
        removed: true,
        ..InstanceView::default()
    };
    reported(&mut view, &process.status);
    view
}

/// What an agent's report says of the process, onto a view: its pid, the port it took (when it
/// reported one), its figures and its health.
fn reported(view: &mut InstanceView, o: &InstanceObserved) {
    view.pid = o.pid;
    if o.port != 0 {
        view.port = o.port;
    }
    view.cpu_percent = o.cpu_percent;
    view.memory_bytes = o.memory_bytes;
    view.restarts = o.restarts;
    view.started_at_ms = o.started_at_ms;
    view.health = o.health;
}

pub(super) fn app_view(inner: &Inner, config: &ControlConfig, app: &AppRecord) -> AppView {
    let mut counts = StateCounts::default();
    for rec in inner.state.app_instances(&app.spec.name) {
        counts.add(instance_view(inner, config, rec).state);
    }
    app_view_counted(app, Some(&counts), resolved_count(inner, config, app))
}

/// The instance count of `app` now: its spec's, or what `instances: "max"` comes to with the
/// nodes registered now.
pub(super) fn resolved_count(inner: &Inner, config: &ControlConfig, app: &AppRecord) -> u32 {
    MaxCounts::new(inner, config).of(app)
}

/// [`resolved_count`] for the many apps of one call: the nodes' views that max is counted over
/// are the same for every app, and built once, at the first app at max (a page may hold a
/// thousand apps, a cluster as many nodes).
struct MaxCounts<'a> {
    inner: &'a Inner,
    config: &'a ControlConfig,
    nodes: OnceCell<Vec<reconcile::NodeView<'a>>>,
}

impl<'a> MaxCounts<'a> {
    fn new(inner: &'a Inner, config: &'a ControlConfig) -> MaxCounts<'a> {
        MaxCounts {
            inner,
            config,
            nodes: OnceCell::new(),
        }
    }

    fn of(&self, app: &AppRecord) -> u32 {
        if !app.spec.instances_max {
            return app.spec.instances;
        }
        let nodes = self
            .nodes
            .get_or_init(|| super::node_views(self.inner, &self.inner.state, self.config));
        reconcile::desired_count(app, nodes)
    }
}

/// An app's instances by state, as its view shows them: the states a user waits out or acts on.
/// Launching, stopping, draining and unknown (a node down) are passing and not counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct StateCounts {
    online: u32,
    pending: u32,
    stopped: u32,
    errored: u32,
    restarting: u32,
    exited: u32,
}

impl StateCounts {
    fn add(&mut self, state: InstanceState) {
        let count = match state {
            InstanceState::Online => &mut self.online,
            InstanceState::Pending => &mut self.pending,
            InstanceState::Stopped => &mut self.stopped,
            InstanceState::Errored => &mut self.errored,
            InstanceState::Restarting => &mut self.restarting,
            InstanceState::Exited => &mut self.exited,
            _ => return,
        };
        *count += 1;
    }
}

/// [`StateCounts`] of every app in one pass over the instances.
pub(super) fn state_counts<'a>(
    inner: &'a Inner,
    config: &ControlConfig,
) -> BTreeMap<&'a str, StateCounts> {
    let mut counts: BTreeMap<&str, StateCounts> = BTreeMap::new();
    for rec in inner.state.instances.values() {
        counts
            .entry(rec.app.as_str())
            .or_default()
            .add(instance_view(inner, config, rec).state);
    }
    counts
}

/// `instances` is [`resolved_count`]'s: with `instances: "max"` the view's spec carries what
/// max comes to now (the wire ignores a count beside max, so a spec fetched and sent back stays
/// "max").
pub(super) fn app_view_counted(
    app: &AppRecord,
    counts: Option<&StateCounts>,
    instances: u32,
) -> AppView {
    let counts = counts.copied().unwrap_or_default();
    AppView {
        spec: pmcluster_spec::AppSpec {
            instances,
            ..app.spec.clone()
        },
        version: app.version,
        updated_at_ms: app.updated_at_ms,
        online: counts.online,
        pending: counts.pending,
        stopped: counts.stopped,
        errored: counts.errored,
        restarting: counts.restarting,
        exited: counts.exited,
    }
}

/// Online, and healthy when the app has a health check: since when, without a break.
pub(super) fn healthy_since(inner: &Inner, r: &InstanceRecord) -> Option<i64> {
    let since = *inner.online_since.get(&r.id)?;
    let o = inner.observed.get(&r.id)?;
    let has_check = inner
        .state
        .apps
        .get(&r.app)
        .is_some_and(|a| a.spec_of(r.app_version).supervision.health_check.is_some());
    match o.health {
        Health::Unhealthy => None,
        Health::Healthy => Some(since),
        _ if has_check => None,
        _ => Some(since),
    }
}
