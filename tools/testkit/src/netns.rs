//! Hosts on one machine, for faults that cut the network: each host is a network
//! namespace (`ip netns`, Debian's iproute2) with a veth into one bridge; the test process
//! stays in the root namespace and reaches every host through the bridge. Cutting a
//! host's link really drops its traffic, both ways, to its peers and to clients alike.
//! Needs root (CAP_NET_ADMIN), as tests and CI run here.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// A bridge and its hosts. Dropping it removes them.
#[derive(Debug)]
pub struct NetLab {
    tag: String,
    subnet: [u8; 3],
    hosts: usize,
}

impl NetLab {
    /// Creates a bridge on a /24 of its own and `hosts` namespaces on it, with addresses
    /// `.11`, `.12`, ...; the root namespace gets `.1`.
    pub fn create(hosts: usize) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let unique = std::process::id().wrapping_mul(31).wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        // Interface names are at most 15 bytes: "pdk" + 6 hex + suffix.
        let tag = format!("pdk{:06x}", unique & 0xff_ffff);
        let subnet = [10, 200 + (unique % 50) as u8, ((unique / 50) % 250) as u8];
        let mut lab = Self { tag, subnet, hosts: 0 };
        let bridge = lab.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["link", "set", &bridge, "up"])?;
        ip(&["addr", "add", &format!("{}/24", lab.gateway()), "dev", &bridge])?;
        for index in 0..hosts {
            let (namespace, veth) = (lab.namespace(index), format!("{}v{index}", lab.tag));
            ip(&["netns", "add", &namespace])?;
            lab.hosts = index + 1;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&[
                "netns",
                "exec",
                &namespace,
                "ip",
                "addr",
                "add",
                &format!("{}/24", lab.address(index)),
                "dev",
                "eth0",
            ])?;
            ip(&["netns", "exec", &namespace, "ip", "link", "set", "eth0", "up"])?;
            ip(&["netns", "exec", &namespace, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1)
    }

    /// The namespace of host `index` (for `ip netns exec`).
    pub fn namespace(&self, index: usize) -> String {
        format!("{}n{index}", self.tag)
    }

    /// The address of host `index`.
    pub fn address(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 11 + index as u8)
    }

    /// A command that runs `program` inside host `index` (`ip netns exec` execs it, so the
    /// child's pid is the program's).
    pub fn command(&self, index: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(index), program]);
        command
    }

    /// Cuts host `index` off: its link goes down, every packet to or from it is dropped.
    pub fn partition(&self, index: usize) -> Result<()> {
        ip(&["netns", "exec", &self.namespace(index), "ip", "link", "set", "eth0", "down"])
    }

    /// Brings host `index`'s link back.
    pub fn heal(&self, index: usize) -> Result<()> {
        ip(&["netns", "exec", &self.namespace(index), "ip", "link", "set", "eth0", "up"])
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for index in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.namespace(index)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip").args(args).output().context("running `ip` (Debian's iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {} (network namespaces need root)",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
