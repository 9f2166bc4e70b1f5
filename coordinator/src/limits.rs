//! Size budgets of what the coordinator stores and sends, and how things are weighed against
//! them (prost `encoded_len`, no I/O).
//!
//! Every link carries messages up to [`pmcluster_proto::MAX_MESSAGE_BYTES`]. A node's desired
//! set, an app spec and a list reply are kept well below it here, so that no write can produce a
//! message its receiver refuses: a desired set its agent cannot decode takes the whole node (and
//! every other app on it) offline, which is what issue 9 found.

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use prost::Message;

use crate::model::{AppView, InstanceView};

/// Most bytes one app spec may encode to. One app must fit a single key of a future etcd store
/// (its default request limit is 1.5 MiB), and Kubernetes holds a ConfigMap to the same 1 MiB.
/// Large data belongs in files the app reads, not in its spec.
pub const MAX_APP_SPEC_BYTES: usize = 1 << 20;

/// Most bytes one node's desired set may encode to: three quarters of the link's limit, leaving
/// room for the message envelope and for growth of the assignment fields.
pub const DESIRED_SET_BUDGET: usize = pmcluster_proto::MAX_MESSAGE_BYTES / 4 * 3;

/// Most bytes of one list reply (`ListInstances`, `ListApps`). Below the 4 MiB that gRPC clients
/// other than ours (grpcurl, generated clients) accept by default, so any client can page.
pub const LIST_REPLY_BUDGET: usize = 3 << 20;

/// Bytes an assignment takes in a desired set besides its spec: an upper bound of its own fields
/// (a 36-character id, five numbers, a flag) plus the framing of it and of the spec inside it.
pub const ASSIGNMENT_OVERHEAD: usize = 96;

/// Bytes of one assignment running a spec that encodes to `spec_bytes`.
pub fn assignment_bytes(spec_bytes: usize) -> usize {
    ASSIGNMENT_OVERHEAD + spec_bytes
}

/// Bytes `spec` encodes to on the wire (in a desired set, a list reply, the store's key).
pub fn spec_bytes(spec: &AppSpec) -> usize {
    pb::AppSpec::from(spec).encoded_len()
}

/// Bytes one app takes in a `ListApps` reply, its framing included.
pub fn app_view_bytes(view: &AppView) -> usize {
    pb::App::from(view).encoded_len() + LIST_ENTRY_OVERHEAD
}

/// Bytes one instance takes in a `ListInstances` reply, its framing included.
pub fn instance_view_bytes(view: &InstanceView) -> usize {
    pb::Instance::from(view).encoded_len() + LIST_ENTRY_OVERHEAD
}

/// An upper bound of the framing of one entry of a repeated field (tag and length).
const LIST_ENTRY_OVERHEAD: usize = 8;

/// "1.5 MiB", "900 KiB", "12 B": sizes as error messages show them.
pub fn human(bytes: usize) -> String {
    const UNITS: [(&str, usize); 2] = [("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            let whole = bytes / size;
            let tenths = (bytes % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenths} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

/// The field of `spec` that weighs most, as a user names it (`env.KEY`, `args[2]`, `script`),
/// and its size in bytes. Maps and lists are looked at per entry: one huge value is what a
/// user has to find.
pub fn largest_field(spec: &AppSpec) -> (String, usize) {
    largest_wire_field(&pb::AppSpec::from(spec))
}

/// [`largest_field`] of a spec as it travels.
fn largest_wire_field(spec: &pb::AppSpec) -> (String, usize) {
    let mut fields: Vec<(String, usize)> = vec![
        ("name".into(), spec.name.len()),
        ("script".into(), spec.script.len()),
        ("cwd".into(), spec.cwd.len()),
        ("port".into(), spec.port.len()),
        ("instance_var".into(), spec.instance_var.len()),
        ("user".into(), spec.user.len()),
        ("group".into(), spec.group.len()),
        ("cron_restart".into(), spec.cron_restart.len()),
        ("stop_signal".into(), spec.stop_signal.len()),
        ("exec_mode".into(), spec.exec_mode.len()),
        (
            "placement".into(),
            spec.placement.as_ref().map_or(0, Message::encoded_len),
        ),
        (
            "resources".into(),
            spec.resources.as_ref().map_or(0, Message::encoded_len),
        ),
        (
            "health_check".into(),
            spec.health_check.as_ref().map_or(0, Message::encoded_len),
        ),
        (
            "autoscale".into(),
            spec.autoscale.as_ref().map_or(0, Message::encoded_len),
        ),
        (
            "update".into(),
            spec.update.as_ref().map_or(0, Message::encoded_len),
        ),
        ("cpu_affinity".into(), spec.cpu_affinity.len() * 5),
    ];
    fields.extend(
        spec.env
            .iter()
            .map(|(k, v)| (format!("env.{k}"), k.len() + v.len())),
    );
    fields.extend(
        spec.args
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("args[{i}]"), a.len())),
    );
    fields.extend(
        spec.limits
            .keys()
            .map(|k| (format!("limits.{k}"), k.len() + 10)),
    );
    // Ties go to the first name in order: maps are unordered, the message must not be.
    fields
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .unwrap_or_default()
}

/// Refuses a spec over [`MAX_APP_SPEC_BYTES`], naming its largest field. Returns its size.
pub fn check_spec(spec: &AppSpec) -> Result<usize, String> {
    check_wire_spec(&pb::AppSpec::from(spec))
}

/// [`check_spec`] of a spec as it travels.
fn check_wire_spec(spec: &pb::AppSpec) -> Result<usize, String> {
    let bytes = spec.encoded_len();
    if bytes <= MAX_APP_SPEC_BYTES {
        return Ok(bytes);
    }
    let (field, size) = largest_wire_field(spec);
    // Echo the name only when it is short: it may itself be what is too large.
    let app = if spec.name.len() <= 64 {
        format!("app {:?}", spec.name)
    } else {
        "the app".to_string()
    };
    Err(format!(
        "{field}: {app} encodes to {}, over the {} limit of one app spec; its largest field is \
         {field} ({}): keep large data in a file the app reads instead",
        human(bytes),
        human(MAX_APP_SPEC_BYTES),
        human(size)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_person_wrote_them() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (900 * 1024, "900 KiB"),
            (1 << 20, "1 MiB"),
            (3 << 19, "1.5 MiB"),
            (12 << 20, "12 MiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(human(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn the_largest_field_is_named_as_users_write_it() {
        let spec = |f: &dyn Fn(&mut pb::AppSpec)| {
            let mut s = pb::AppSpec {
                name: "web".into(),
                script: "node".into(),
                ..pb::AppSpec::default()
            };
            f(&mut s);
            s
        };
        let big = "x".repeat(2 << 20);
        let cases: Vec<(pb::AppSpec, &str)> = vec![
            (spec(&|_| {}), "script"),
            (
                spec(&|s| {
                    s.env.insert("SMALL".into(), "1".into());
                    s.env.insert("BIG".into(), big.clone());
                }),
                "env.BIG",
            ),
            (
                spec(&|s| s.args = vec!["-v".into(), big.clone()]),
                "args[1]",
            ),
            (spec(&|s| s.script = big.clone()), "script"),
            (
                spec(&|s| {
                    for k in ["B", "C", "A"] {
                        s.env.insert(k.into(), "y".repeat(1 << 19));
                    }
                }),
                "env.A",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(largest_wire_field(&s).0, want);
            if s.encoded_len() > MAX_APP_SPEC_BYTES {
                let err = check_wire_spec(&s).err().unwrap_or_default();
                assert!(err.starts_with(&format!("{want}: app \"web\"")), "{err}");
                assert!(err.contains("over the 1 MiB limit"), "{err}");
            } else {
                assert!(check_wire_spec(&s).is_ok());
            }
        }
    }
}
