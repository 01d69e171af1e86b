//! Names that resolve for every client: the load balancers' DNS names in
//! `/etc/hosts`, when lbctl may write it (root, typically in CI and
//! containers).
//!
//! curl and browsers resolve `*.localhost` to 127.0.0.1 themselves; wrk,
//! Python, `getent` and everything else on glibc ask `/etc/hosts`, and a
//! network load balancer does not listen on 127.0.0.1 anyway. Each name
//! is one line, marked with the stack's state directory:
//!
//! ```text
//! 127.251.0.1 edge.shop.elb.internal # lbctl /home/me/shop/.lbctl
//! ```
//!
//! added when its load balancer is made, removed when it is deleted or
//! the stack destroyed; lines of state directories that no longer exist are
//! dropped on every edit. Edits hold an exclusive `flock` on the file and
//! rewrite it in place (it is often a bind mount, which cannot be renamed
//! over). Where the file cannot be written, nothing is changed, and the
//! provider prints addresses instead of names it cannot make resolve.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// The hosts file the system resolver reads.
pub(crate) const HOSTS: &str = "/etc/hosts";

/// A hosts file and the marker of one stack's lines.
pub(crate) struct Hosts {
    path: PathBuf,
    marker: String,
}

impl Hosts {
    /// The stack whose state directory is `state_dir`, in `path`.
    pub(crate) fn new(path: impl Into<PathBuf>, state_dir: &Path) -> Hosts {
        Hosts { path: path.into(), marker: format!("# lbctl {}", state_dir.display()) }
    }

    /// Makes `name` resolve to `ip`; false when the file cannot be written.
    pub(crate) fn set(&self, name: &str, ip: Ipv4Addr) -> bool {
        self.edit(|lines| {
            lines.retain(|line| !self.is_ours(line, Some(name)));
            lines.push(format!("{ip} {name} {}", self.marker));
        })
    }

    /// Forgets `name`.
    pub(crate) fn remove(&self, name: &str) -> bool {
        self.edit(|lines| lines.retain(|line| !self.is_ours(line, Some(name))))
    }

    /// Forgets every name of the stack.
    pub(crate) fn remove_all(&self) -> bool {
        self.edit(|lines| lines.retain(|line| !self.is_ours(line, None)))
    }

    fn is_ours(&self, line: &str, name: Option<&str>) -> bool {
        line.ends_with(&self.marker) && name.is_none_or(|name| line.split_whitespace().nth(1) == Some(name))
    }

    /// Rewrites the file under its lock: `change` edits its lines; lines of
    /// stacks whose state directory is gone are dropped.
    fn edit(&self, change: impl FnOnce(&mut Vec<String>)) -> bool {
        let Ok(mut file) = std::fs::OpenOptions::new().read(true).write(true).open(&self.path) else { return false };
        if file.lock().is_err() {
            return false;
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            return false;
        }
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.retain(|line| match line.split_once(" # lbctl ") {
            Some((_, dir)) => Path::new(dir).is_dir(),
            None => true,
        });
        change(&mut lines);
        let mut new = lines.join("\n");
        new.push('\n');
        if new == text {
            return true;
        }
        let written = file.seek(SeekFrom::Start(0)).is_ok()
            && file.write_all(new.as_bytes()).is_ok()
            && file.set_len(new.len() as u64).is_ok();
        let _ = file.unlock();
        written
    }
}

/// Whether the system resolver gives `ip` for `name`.
pub(crate) fn resolves_to(name: &str, ip: Ipv4Addr) -> bool {
    (name, 0).to_socket_addrs().is_ok_and(|mut found| found.any(|it| it.ip() == IpAddr::V4(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_added_replaced_and_removed_by_stack() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one/.lbctl"), dir.path().join("two/.lbctl"));
        std::fs::create_dir_all(&one).unwrap();
        std::fs::create_dir_all(&two).unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n127.0.0.1 old.gone.elb.localhost # lbctl /nonexistent/.lbctl\n")
            .unwrap();
        let (first, second) = (Hosts::new(&path, &one), Hosts::new(&path, &two));
        assert!(first.set("public.shop.elb.localhost", Ipv4Addr::LOCALHOST));
        assert!(first.set("edge.shop.elb.localhost", Ipv4Addr::new(127, 251, 0, 1)));
        assert!(second.set("edge.other.elb.localhost", Ipv4Addr::new(127, 251, 0, 2)));
        assert!(first.set("edge.shop.elb.localhost", Ipv4Addr::new(127, 251, 0, 3)), "replaced, not added");
        let text = std::fs::read_to_string(&path).unwrap();
        let marker = format!("# lbctl {}", one.display());
        assert_eq!(
            text,
            format!(
                "127.0.0.1 localhost\n127.0.0.1 public.shop.elb.localhost {marker}\n127.251.0.2 edge.other.elb.localhost # lbctl {}\n127.251.0.3 edge.shop.elb.localhost {marker}\n",
                two.display()
            )
        );
        assert!(first.remove("public.shop.elb.localhost"));
        assert!(first.remove_all());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("127.0.0.1 localhost\n127.251.0.2 edge.other.elb.localhost # lbctl {}\n", two.display())
        );
        assert!(!Hosts::new(dir.path().join("missing"), &one).set("x", Ipv4Addr::LOCALHOST), "unwritable: false");
    }
}
