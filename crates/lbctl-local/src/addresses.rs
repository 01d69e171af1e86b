//! Static ("elastic") IPs of network load balancers.
//!
//! A network load balancer without `static_ip` gets an address from
//! `ALLOCATION_RANGE` once, and keeps it across its re-creation (a killed
//! proxy, a replacement, removing it from the spec and adding it back)
//! until its stack is destroyed, like an Elastic IP that outlives the load
//! balancer it is attached to. A `static_ip` given in the spec is recorded
//! too, so that no other stack is given it.
//!
//! The table is machine-wide (one per user), so that two stacks never get
//! the same address: `addresses.json`, read and written under an exclusive
//! `flock` of `addresses.lock` beside it. Each address names its owner: the
//! stack's state directory and the load balancer. Addresses whose state
//! directory is gone are reclaimed.
//!
//! The table lives in a directory only its user can create and write:
//! `$XDG_RUNTIME_DIR/lbctl` when that is set, else
//! `$XDG_STATE_HOME/lbctl` or `~/.local/state/lbctl`. Its owner and mode
//! are checked before every use (a symlink, another user's directory or
//! one others may enter is refused, naming it), and every file in it is
//! written through an exclusively created temporary file (`lbctl_files`).
//! A table left by older releases in `$TMPDIR/lbctl-<uid>` is taken over
//! once, when it passes the same checks.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lbctl_runtime as runtime;
use serde::{Deserialize, Serialize};

/// Where allocated addresses come from: 127.251.0.1 - 127.251.255.254,
/// outside the range instances get theirs from (127.16-250.x.x), and a
/// range no spec may give as `static_ip` (validation refuses it).
const ALLOCATION_RANGE: (Ipv4Addr, Ipv4Addr) = (
    Ipv4Addr::new(127, lbctl_spec::ALLOCATED_STATIC_IPS.1, 0, 1),
    Ipv4Addr::new(127, lbctl_spec::ALLOCATED_STATIC_IPS.1, 255, 254),
);

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The stack's state directory (`.lbctl` beside its spec).
    pub state_dir: PathBuf,
    /// The load balancer.
    pub load_balancer: String,
    /// Whether the spec gave it (`static_ip`) rather than lbctl allocating it.
    pub given: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    addresses: BTreeMap<Ipv4Addr, Owner>,
}

/// The machine's address table.
#[derive(Debug, Clone)]
pub struct AddressTable {
    /// Its directory; `None`: this user's, found from the environment when used.
    dir: Option<PathBuf>,
    /// Where older releases kept the table, taken over when `dir` has none.
    legacy: Option<PathBuf>,
}

/// The table, locked for as long as this lives.
struct Locked {
    path: PathBuf,
    table: Table,
    _lock: File,
}

impl Locked {
    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.table)?;
        runtime::write_atomic(&self.path, &bytes)
    }
}

/// The directory of this user's table, from the environment (see the
/// module's documentation).
fn user_dir() -> Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|it| !it.is_empty()).map(PathBuf::from);
    if let Some(runtime_dir) = var("XDG_RUNTIME_DIR") {
        return Ok(runtime_dir.join("lbctl"));
    }
    if let Some(state_home) = var("XDG_STATE_HOME") {
        return Ok(state_home.join("lbctl"));
    }
    match var("HOME") {
        Some(home) => Ok(home.join(".local/state/lbctl")),
        None => bail!("no place for the machine's address table: set XDG_RUNTIME_DIR or HOME to a directory of yours"),
    }
}

impl AddressTable {
    /// This user's table (see the module's documentation).
    pub fn for_user() -> AddressTable {
        let uid = lbctl_files::current_uid();
        AddressTable { dir: None, legacy: Some(std::env::temp_dir().join(format!("lbctl-{uid}"))) }
    }

    /// The table kept in `dir`.
    #[cfg(test)]
    pub fn new(dir: impl Into<PathBuf>) -> AddressTable {
        AddressTable { dir: Some(dir.into()), legacy: None }
    }

    /// The table of an older release, when it can be trusted (its
    /// directory this user's and private to it, or at least not writable
    /// by others, as older releases made it).
    fn legacy_table(&self) -> Option<Table> {
        let dir = self.legacy.as_ref()?;
        let meta = std::fs::symlink_metadata(dir).ok()?;
        use std::os::unix::fs::MetadataExt;
        let safe = meta.is_dir() && meta.uid() == lbctl_files::current_uid() && meta.mode() & 0o022 == 0;
        if !safe {
            return None;
        }
        runtime::read_json(&dir.join("addresses.json")).ok().flatten()
    }

    fn lock(&self) -> Result<Locked> {
        let dir = match &self.dir {
            Some(dir) => dir.clone(),
            None => user_dir()?,
        };
        // Made when missing; whatever is there is checked, never followed.
        if std::fs::symlink_metadata(&dir).is_err_and(|it| it.kind() == std::io::ErrorKind::NotFound) {
            lbctl_files::create_private_dir(&dir)?;
        }
        lbctl_files::verify_private_dir(&dir).context("the machine's address table is not safe to use")?;
        let lock_path = dir.join("addresses.lock");
        let lock = lbctl_files::open_private_rw(&lock_path)?;
        lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
        let path = dir.join("addresses.json");
        let mut table: Table = match runtime::read_json(&path)? {
            Some(table) => table,
            None => self.legacy_table().unwrap_or_default(),
        };
        // An owner whose stack directory is gone will never release its addresses.
        table.addresses.retain(|_, owner| owner.state_dir.is_dir());
        Ok(Locked { path, table, _lock: lock })
    }

    /// The address the table holds for `load_balancer` of the stack in
    /// `state_dir`, if any; changes nothing.
    pub fn lookup(&self, state_dir: &Path, load_balancer: &str) -> Result<Option<Ipv4Addr>> {
        let locked = self.lock()?;
        Ok(locked
            .table
            .addresses
            .iter()
            .find(|(_, owner)| owner.state_dir == state_dir && owner.load_balancer == load_balancer)
            .map(|(ip, _)| *ip))
    }

    /// Who else holds `ip`: an owner other than `load_balancer` of the stack
    /// in `state_dir`; `None` when nobody or that load balancer does.
    pub fn holder_other_than(&self, ip: Ipv4Addr, state_dir: &Path, load_balancer: &str) -> Result<Option<Owner>> {
        let locked = self.lock()?;
        Ok(locked
            .table
            .addresses
            .get(&ip)
            .filter(|owner| owner.state_dir != state_dir || owner.load_balancer != load_balancer)
            .cloned())
    }

    /// The address of `load_balancer` of the stack in `state_dir`: `given`
    /// (its `static_ip`), recorded as its own; else the one allocated to it
    /// before; else a new one from the allocation range that nobody holds
    /// and that is not in `avoid` (the stack's given addresses).
    pub fn assign(
        &self,
        state_dir: &Path,
        load_balancer: &str,
        given: Option<Ipv4Addr>,
        avoid: &[Ipv4Addr],
    ) -> Result<Ipv4Addr> {
        let mut locked = self.lock()?;
        let addresses = &mut locked.table.addresses;
        let owns = |owner: &Owner| owner.state_dir == state_dir && owner.load_balancer == load_balancer;
        let ip = match given {
            Some(ip) => {
                if let Some(other) = addresses.get(&ip).filter(|it| !owns(it) && it.state_dir != state_dir) {
                    bail!(
                        "static_ip {ip} is held by load balancer `{}` of the stack in {}",
                        other.load_balancer,
                        other.state_dir.display()
                    );
                }
                // A given address replaces what this load balancer held.
                addresses.retain(|_, owner| !owns(owner));
                ip
            }
            None => match addresses.iter().find(|(_, owner)| owns(owner)) {
                Some((ip, owner)) if !owner.given => *ip,
                _ => {
                    addresses.retain(|_, owner| !owns(owner));
                    let (first, last) = (u32::from(ALLOCATION_RANGE.0), u32::from(ALLOCATION_RANGE.1));
                    (first..=last)
                        .map(Ipv4Addr::from)
                        .find(|ip| !addresses.contains_key(ip) && !avoid.contains(ip))
                        .context("every address of 127.251.0.0/16 is allocated")?
                }
            },
        };
        let owner = Owner {
            state_dir: state_dir.to_path_buf(),
            load_balancer: load_balancer.to_string(),
            given: given.is_some(),
        };
        addresses.insert(ip, owner);
        locked.save()?;
        Ok(ip)
    }

    /// Releases every address of the stack in `state_dir` (its destroy).
    pub fn release_stack(&self, state_dir: &Path) -> Result<Vec<Ipv4Addr>> {
        let mut locked = self.lock()?;
        let released: Vec<Ipv4Addr> = locked
            .table
            .addresses
            .iter()
            .filter(|(_, owner)| owner.state_dir == state_dir)
            .map(|(ip, _)| *ip)
            .collect();
        locked.table.addresses.retain(|_, owner| owner.state_dir != state_dir);
        locked.save()?;
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocated_addresses_are_kept_unique_and_released_with_the_stack() {
        let dir = tempfile::tempdir().unwrap();
        let table = AddressTable::new(dir.path().join("table"));
        let (shop, blog) = (dir.path().join("shop"), dir.path().join("blog"));
        std::fs::create_dir_all(&shop).unwrap();
        std::fs::create_dir_all(&blog).unwrap();
        let first = Ipv4Addr::new(127, 251, 0, 1);

        assert_eq!(table.lookup(&shop, "edge").unwrap(), None);
        assert_eq!(table.assign(&shop, "edge", None, &[]).unwrap(), first);
        // Kept: asked again (a re-creation), the same address.
        assert_eq!(table.assign(&shop, "edge", None, &[]).unwrap(), first);
        assert_eq!(table.lookup(&shop, "edge").unwrap(), Some(first));
        // Another stack's load balancer of the same name gets another one,
        // and allocation skips the stack's own given addresses.
        let third = Ipv4Addr::new(127, 251, 0, 3);
        assert_eq!(table.assign(&blog, "edge", None, &[Ipv4Addr::new(127, 251, 0, 2)]).unwrap(), third);

        // A given address another stack holds is refused, with who holds it.
        let err = table.assign(&blog, "other", Some(first), &[]).unwrap_err().to_string();
        assert!(err.starts_with("static_ip 127.251.0.1 is held by load balancer `edge` of the stack in "), "{err}");
        assert_eq!(table.holder_other_than(first, &blog, "other").unwrap().unwrap().load_balancer, "edge");
        assert_eq!(table.holder_other_than(first, &shop, "edge").unwrap(), None);

        // Destroying a stack frees its addresses for others.
        assert_eq!(table.release_stack(&shop).unwrap(), vec![first]);
        assert_eq!(table.assign(&blog, "other", Some(first), &[]).unwrap(), first);

        // A stack whose directory is gone loses its addresses.
        std::fs::remove_dir_all(&blog).unwrap();
        assert_eq!(table.assign(&shop, "edge", None, &[]).unwrap(), first);
    }
}
