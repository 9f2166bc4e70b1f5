//! What an agent remembers of who it is across restarts, in `DATA_DIR/identity.json`: the node
//! name its data dir belongs to, the cluster it serves, and the highest desired-set generation it
//! applied.
//!
//! This is what keeps a coordinator that lost its memory (a deleted or emptied store) from
//! wiping the cluster: its desired sets carry another cluster id, or a generation below the one
//! remembered here, and the agent refuses them and keeps its instances until an operator adopts
//! the node (`pmcluster nodes adopt`). It also keeps a data dir from being reused under another
//! `--node-name` by mistake, which would stop every instance it holds.
//!
//! The decisions ([`check_node_name`], [`verdict`]) are pure; [`load`] and [`save`] do the I/O.

// Pure: no wall clock, random ids, environment or hash order (see clippy.toml).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The remembered identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_name: String,
    /// Empty until the first desired set of a coordinator is applied.
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub generation: u64,
    /// The name this data dir had before a `--rename-node` start, until a coordinator has
    /// accepted the new name (it moves the old node's instances over).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub renamed_from: String,
    /// The address the coordinator last recorded for this node (see `Registered.address`), so
    /// that `${HOST}` expands for instances an agent restarts before it reaches a coordinator.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
}

/// Why the identity file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is damaged ({reason}); move it aside to start this data dir afresh (the agent then \
         accepts the next coordinator's desired sets as a new node would)",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "data dir {} belongs to node {stored:?}, not {configured:?}: starting it under another \
         name would stop every instance it runs. Start with --node-name {stored}, or add \
         --rename-node to rename node {stored:?} to {configured:?} (its instances move with it)",
        data_dir.display()
    )]
    NodeNameMismatch {
        data_dir: PathBuf,
        stored: String,
        configured: String,
    },
}

/// The identity file of a data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.json")
}

/// The file a higher generation alone is saved to, without an fsync (see [`Flush::Lazily`]).
pub fn applied_path(data_dir: &Path) -> PathBuf {
    data_dir.join("applied.json")
}

/// A generation saved lazily, with the cluster it is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub cluster_id: String,
    pub generation: u64,
}

/// The identity with a lazily saved generation taken in: only one of the same cluster, and only
/// when it is higher. A missing or damaged `applied` (a power loss before its writeback) leaves
/// the generation of the last full save.
pub fn with_applied(identity: Identity, applied: Option<Applied>) -> Identity {
    match applied {
        Some(a) if a.cluster_id == identity.cluster_id && a.generation > identity.generation => {
            Identity {
                generation: a.generation,
                ..identity
            }
        }
        _ => identity,
    }
}

/// The stored identity, or `None` for a data dir that has none yet.
pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Io { path, source }),
    };
    let identity = serde_json::from_slice(&bytes).map_err(|e| IdentityError::Corrupt {
        path,
        reason: e.to_string(),
    })?;
    let applied = std::fs::read(applied_path(data_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    Ok(Some(with_applied(identity, applied)))
}

/// How a save reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// fsync before the rename: the node's name, cluster and address survive a power loss.
    Now,
    /// A higher applied generation alone, which every desired set brings: written to its own
    /// file ([`applied_path`]) without an fsync, and `identity.json` left as it is. The fsync
    /// took a runtime worker for about 1 ms at the start of every set's spawns. The kernel writes
    /// the file back within seconds and an agent restart (not a power loss) always reads it. A
    /// power loss in between may leave that file old, empty or damaged on some file systems:
    /// [`load`] then goes by `identity.json`, which only lets this node accept sets a few
    /// generations older than the last it applied. It never loses the name or the cluster.
    Lazily,
}

impl Flush {
    /// How to save `next` over `before`: lazily when only the generation changed.
    pub fn for_change(before: &Identity, next: &Identity) -> Flush {
        let same_but_generation = Identity {
            generation: before.generation,
            ..next.clone()
        };
        if same_but_generation == *before {
            Flush::Lazily
        } else {
            Flush::Now
        }
    }
}

/// Saves the identity, readable by its owner only: all of it atomically (temp file, fsync,
/// rename) with [`Flush::Now`], its generation alone to [`applied_path`] with [`Flush::Lazily`].
pub fn save(data_dir: &Path, identity: &Identity, flush: Flush) -> Result<(), IdentityError> {
    let (path, tmp, json) = match flush {
        Flush::Now => (
            path(data_dir),
            data_dir.join("identity.json.tmp"),
            serde_json::to_vec_pretty(identity),
        ),
        Flush::Lazily => (
            applied_path(data_dir),
            data_dir.join("applied.json.tmp"),
            serde_json::to_vec(&Applied {
                cluster_id: identity.cluster_id.clone(),
                generation: identity.generation,
            }),
        ),
    };
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    let json = json.map_err(|e| io(std::io::Error::other(e)))?;
    crate::persist::replace_private(&tmp, &path, &json, flush == Flush::Now).map_err(io)
}

/// The identity to start with, given what the data dir remembers and the configured name.
/// A different stored name is refused unless `rename` is set; then the old name is kept in
/// `renamed_from` until a coordinator takes the rename.
pub fn check_node_name(
    data_dir: &Path,
    stored: Option<Identity>,
    configured: &str,
    rename: bool,
) -> Result<Identity, IdentityError> {
    let Some(stored) = stored else {
        return Ok(Identity {
            node_name: configured.to_string(),
            ..Identity::default()
        });
    };
    if stored.node_name == configured {
        return Ok(stored);
    }
    if !rename {
        return Err(IdentityError::NodeNameMismatch {
            data_dir: data_dir.to_path_buf(),
            stored: stored.node_name,
            configured: configured.to_string(),
        });
    }
    // A rename of a rename that no coordinator took yet still moves the first name's instances.
    let renamed_from = if stored.renamed_from.is_empty() {
        stored.node_name
    } else {
        stored.renamed_from
    };
    Ok(Identity {
        node_name: configured.to_string(),
        renamed_from,
        ..stored
    })
}

/// What to do with a desired set, given the remembered identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it (and remember its cluster id and generation).
    Apply,
    /// Refuse it: it comes from another cluster.
    Foreign { ours: String, theirs: String },
    /// Refuse it: its generation is below the highest applied (the sender's state is older).
    Stale { generation: u64, highest: u64 },
}

/// Decides whether a desired set with `cluster_id`, `generation` and `adopt` may be applied by an
/// agent that remembers `identity`.
pub fn verdict(identity: &Identity, cluster_id: &str, generation: u64, adopt: bool) -> Verdict {
    let foreign = !identity.cluster_id.is_empty()
        && !cluster_id.is_empty()
        && identity.cluster_id != cluster_id;
    if foreign && !adopt {
        return Verdict::Foreign {
            ours: identity.cluster_id.clone(),
            theirs: cluster_id.to_string(),
        };
    }
    if generation < identity.generation {
        return Verdict::Stale {
            generation,
            highest: identity.generation,
        };
    }
    Verdict::Apply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node: &str, cluster: &str, generation: u64) -> Identity {
        Identity {
            node_name: node.into(),
            cluster_id: cluster.into(),
            generation,
            renamed_from: String::new(),
            address: String::new(),
        }
    }

    #[test]
    fn verdicts() {
        use Verdict::*;
        let foreign = || Foreign {
            ours: "c1".into(),
            theirs: "c2".into(),
        };
        let cases = [
            // (remembered, set cluster, set generation, adopt) -> verdict
            (id("a", "", 0), "c1", 0, false, Apply),
            (id("a", "c1", 5), "c1", 5, false, Apply),
            (id("a", "c1", 5), "c1", 9, false, Apply),
            (
                id("a", "c1", 5),
                "c1",
                4,
                false,
                Stale {
                    generation: 4,
                    highest: 5,
                },
            ),
            (id("a", "c1", 5), "c2", 9, false, foreign()),
            (id("a", "c1", 5), "c2", 0, false, foreign()),
            // Adoption switches clusters, but never to an older generation.
            (id("a", "c1", 5), "c2", 6, true, Apply),
            (
                id("a", "c1", 5),
                "c2",
                1,
                true,
                Stale {
                    generation: 1,
                    highest: 5,
                },
            ),
            // A coordinator of an older version sends no cluster id: generations still hold.
            (id("a", "c1", 5), "", 7, false, Apply),
        ];
        for (identity, cluster, generation, adopt, want) in cases {
            assert_eq!(
                verdict(&identity, cluster, generation, adopt),
                want,
                "{identity:?} {cluster} {generation} {adopt}"
            );
        }
    }

    #[test]
    fn node_name_checks() -> Result<(), Box<dyn std::error::Error>> {
        let dir = Path::new("/data");
        assert_eq!(check_node_name(dir, None, "a", false)?, id("a", "", 0));
        assert_eq!(
            check_node_name(dir, Some(id("a", "c", 3)), "a", false)?,
            id("a", "c", 3)
        );
        let err = check_node_name(dir, Some(id("a", "c", 3)), "b", false)
            .err()
            .ok_or("a rename without --rename-node was accepted")?;
        let text = err.to_string();
        assert!(
            text.contains("--rename-node") && text.contains("\"a\""),
            "{text}"
        );
        let renamed = check_node_name(dir, Some(id("a", "c", 3)), "b", true)?;
        assert_eq!(
            renamed,
            Identity {
                renamed_from: "a".into(),
                ..id("b", "c", 3)
            }
        );
        // Renamed twice before any coordinator saw it: the instances are still under "a".
        assert_eq!(
            check_node_name(dir, Some(renamed), "c", true)?.renamed_from,
            "a"
        );
        Ok(())
    }

    #[test]
    fn only_a_new_generation_is_saved_lazily() {
        let before = id("a", "c", 7);
        let cases = [
            (id("a", "c", 8), Flush::Lazily),
            (id("a", "c", 7), Flush::Lazily),
            (id("a", "d", 8), Flush::Now),
            (id("b", "c", 8), Flush::Now),
            (
                Identity {
                    address: "10.0.0.2".into(),
                    ..id("a", "c", 8)
                },
                Flush::Now,
            ),
            (
                Identity {
                    renamed_from: "old".into(),
                    ..id("a", "c", 7)
                },
                Flush::Now,
            ),
        ];
        for (next, want) in cases {
            assert_eq!(Flush::for_change(&before, &next), want, "{next:?}");
        }
    }

    #[test]
    fn a_lazily_saved_generation_counts_only_when_higher_and_of_the_same_cluster() {
        let applied = |cluster: &str, generation| {
            Some(Applied {
                cluster_id: cluster.into(),
                generation,
            })
        };
        let cases = [
            (None, 5),
            (applied("c", 9), 9),
            (applied("c", 5), 5),
            (applied("c", 3), 5),
            // Saved before the node joined another cluster: not this cluster's generation.
            (applied("old", 9), 5),
        ];
        for (lazy, want) in cases {
            assert_eq!(
                with_applied(id("a", "c", 5), lazy.clone()),
                id("a", "c", want),
                "{lazy:?}"
            );
        }
    }

    #[test]
    fn saves_and_loads_privately() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        assert_eq!(load(dir.path())?, None);
        let identity = id("a", "c", 7);
        save(dir.path(), &identity, Flush::Now)?;
        assert_eq!(load(dir.path())?, Some(identity));
        let later = id("a", "c", 8);
        save(dir.path(), &later, Flush::Lazily)?;
        assert_eq!(load(dir.path())?, Some(later));
        for file in [path(dir.path()), applied_path(dir.path())] {
            let mode = std::fs::metadata(&file)?.permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        // A lazy save leaves identity.json as the last full save wrote it.
        let full: Identity = serde_json::from_slice(&std::fs::read(path(dir.path()))?)?;
        assert_eq!(full.generation, 7);
        // What a power loss before the writeback may leave: the full save's generation counts.
        for damaged in [&b""[..], b"{\"cluster_id\":\"c\",\"gener"] {
            std::fs::write(applied_path(dir.path()), damaged)?;
            assert_eq!(load(dir.path())?, Some(id("a", "c", 7)));
        }
        save(dir.path(), &id("a", "c", 9), Flush::Lazily)?;
        assert_eq!(load(dir.path())?, Some(id("a", "c", 9)));
        std::fs::write(path(dir.path()), b"{not json")?;
        assert!(matches!(
            load(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
        Ok(())
    }
}
