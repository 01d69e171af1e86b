//! Who holds a port: for the error that tells a user why a listener cannot
//! be had ("held by load balancer `public` of the stack in ~/shop (pid
//! 4242)", "held by pid 77 (`nginx: master process`)").
//!
//! Read from `/proc` (procfs): the socket tables give the inode of the
//! socket bound to the port, the processes' descriptors the process that
//! holds it. Processes of other users may not be readable: then the answer
//! says so.

use std::net::{IpAddr, Ipv4Addr};

/// Who holds `ip:port` (TCP listening, or UDP when `udp`), in words; `None`
/// when no socket on the machine is bound there (nothing to say).
pub(crate) fn holder_of(ip: Ipv4Addr, port: u16, udp: bool) -> Option<String> {
    let inodes = socket_inodes(ip, port, udp);
    if inodes.is_empty() {
        return None;
    }
    for process in procfs::process::all_processes().ok()?.flatten() {
        let Ok(descriptors) = process.fd() else { continue };
        let holds = descriptors
            .flatten()
            .any(|it| matches!(it.target, procfs::process::FDTarget::Socket(inode) if inodes.contains(&inode)));
        if holds {
            let command = process.cmdline().unwrap_or_default();
            return Some(describe(process.pid as u32, &command));
        }
    }
    Some("a process this user cannot see (another user's)".to_string())
}

/// The inodes of the sockets bound to `port` at `ip` or at the wildcard
/// address (which takes the port on every address).
fn socket_inodes(ip: Ipv4Addr, port: u16, udp: bool) -> Vec<u64> {
    let covers = |address: IpAddr| address.is_unspecified() || address == IpAddr::V4(ip);
    if udp {
        let entries = procfs::net::udp().unwrap_or_default().into_iter().chain(procfs::net::udp6().unwrap_or_default());
        entries
            .filter(|it| it.local_address.port() == port && covers(it.local_address.ip()))
            .map(|it| it.inode)
            .collect()
    } else {
        let entries = procfs::net::tcp().unwrap_or_default().into_iter().chain(procfs::net::tcp6().unwrap_or_default());
        entries
            .filter(|it| it.state == procfs::net::TcpState::Listen)
            .filter(|it| it.local_address.port() == port && covers(it.local_address.ip()))
            .map(|it| it.inode)
            .collect()
    }
}

/// A process in words: an lbctl load balancer by its stack and name, else
/// its command line.
fn describe(pid: u32, command: &[String]) -> String {
    // `lbctl internal proxy --config <dir>/.lbctl/run/lb/<name>/config.json`
    let config = command.iter().position(|it| it == "--config").and_then(|at| command.get(at + 1));
    let is_proxy = command.iter().any(|it| it == "internal") && command.iter().any(|it| it == "proxy");
    if let (true, Some(config)) = (is_proxy, config) {
        let path = std::path::Path::new(config);
        let name = path.parent().and_then(|it| it.file_name()).map(|it| it.to_string_lossy().into_owned());
        let stack_dir = path.ancestors().nth(5);
        if let (Some(name), Some(stack_dir)) = (name, stack_dir) {
            return format!("load balancer `{name}` of the lbctl stack in {} (pid {pid})", stack_dir.display());
        }
    }
    let shown = command.join(" ");
    let shown =
        if shown.chars().count() > 60 { format!("{}...", shown.chars().take(60).collect::<String>()) } else { shown };
    format!("pid {pid} (`{shown}`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_of_a_taken_port_is_named() {
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let holder = holder_of(Ipv4Addr::LOCALHOST, port, false).unwrap();
        assert!(holder.starts_with(&format!("pid {} (`", std::process::id())), "{holder}");
        drop(taken);
        assert_eq!(holder_of(Ipv4Addr::LOCALHOST, port, false), None);
    }

    #[test]
    fn an_lbctl_proxy_is_named_by_its_stack_and_load_balancer() {
        let command: Vec<String> =
            ["/usr/bin/lbctl", "internal", "proxy", "--config", "/home/u/shop/.lbctl/run/lb/public/config.json"]
                .map(String::from)
                .to_vec();
        assert_eq!(describe(42, &command), "load balancer `public` of the lbctl stack in /home/u/shop (pid 42)");
    }
}
