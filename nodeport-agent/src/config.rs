//! Configuration the desired datapath state depends on: which node this agent
//! serves and which of its addresses answer `NodePorts`
//! (`--nodeport-addresses`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A malformed `--nodeport-addresses` value or CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid IPv4 CIDR {input:?}: {reason}")]
    InvalidCidr { input: String, reason: &'static str },
    #[error(
        "--nodeport-addresses must be \"primary\" or a comma-separated list of IPv4 CIDRs, got {0:?}"
    )]
    InvalidNodePortAddresses(String),
}

/// An IPv4 network in CIDR notation (`10.0.0.0/8`).
///
/// As Go's `net.ParseCIDR` (which kube-proxy uses for the same flag), host
/// bits may be set in the input; they are cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    /// The network containing `addr` with `prefix_len` leading bits (0..=32).
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, ConfigError> {
        if prefix_len > 32 {
            return Err(ConfigError::InvalidCidr {
                input: format!("{addr}/{prefix_len}"),
                reason: "prefix length above 32",
            });
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix_len));
        Ok(Self {
            network,
            prefix_len,
        })
    }

    #[must_use]
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` lies in this network.
    #[must_use]
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix_len) == u32::from(self.network)
    }
}

/// The netmask of a prefix length (0..=32) as a host-order integer.
fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

impl FromStr for Ipv4Net {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| ConfigError::InvalidCidr {
            input: s.to_owned(),
            reason,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| invalid("missing /prefix-length"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid("not an IPv4 address"))?;
        // `u8::from_str` accepts a leading '+'; a prefix length is digits only.
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("prefix length is not a number"));
        }
        let len: u8 = len.parse().map_err(|_| invalid("prefix length above 32"))?;
        if len > 32 {
            return Err(invalid("prefix length above 32"));
        }
        Self::new(addr, len)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// An IPv4 address configured on one of the node's interfaces, as the caller
/// found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub addr: Ipv4Addr,
    /// The first address of the interface that holds the default route.
    pub primary: bool,
}

/// Which node addresses serve `NodePorts` (`--nodeport-addresses`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every address of the node except loopback and unspecified ones (the
    /// default, as kube-proxy's empty `--nodeport-addresses`).
    #[default]
    All,
    /// Only the primary address (`primary`).
    Primary,
    /// Addresses within any of these networks (`10.0.0.0/8,192.168.1.0/24`).
    Cidrs(Vec<Ipv4Net>),
}

impl NodePortAddresses {
    /// The addresses of `addrs` that serve `NodePorts`, sorted and without
    /// duplicates. Unspecified (`0.0.0.0`) addresses are never selected;
    /// loopback addresses only when a CIDR names them (XDP on an external
    /// device never sees traffic to them, but the choice is explicit then).
    #[must_use]
    pub fn select(&self, addrs: &[InterfaceAddr]) -> Vec<Ipv4Addr> {
        let mut selected: Vec<Ipv4Addr> = addrs
            .iter()
            .filter(|a| !a.addr.is_unspecified())
            .filter(|a| match self {
                Self::All => !a.addr.is_loopback(),
                Self::Primary => a.primary,
                Self::Cidrs(nets) => nets.iter().any(|n| n.contains(a.addr)),
            })
            .map(|a| a.addr)
            .collect();
        selected.sort_unstable();
        selected.dedup();
        selected
    }
}

impl FromStr for NodePortAddresses {
    type Err = ConfigError;

    /// Parses `primary` or a comma-separated list of IPv4 CIDRs (blanks
    /// around entries are ignored; an empty list is an error).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("primary") {
            return Ok(Self::Primary);
        }
        if s.is_empty() {
            return Err(ConfigError::InvalidNodePortAddresses(s.to_owned()));
        }
        let nets = s
            .split(',')
            .map(|part| {
                let part = part.trim();
                if part.is_empty() {
                    Err(ConfigError::InvalidNodePortAddresses(s.to_owned()))
                } else {
                    part.parse()
                }
            })
            .collect::<Result<Vec<Ipv4Net>, _>>()?;
        Ok(Self::Cidrs(nets))
    }
}

impl fmt::Display for NodePortAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Primary => f.write_str("primary"),
            Self::Cidrs(nets) => {
                for (i, net) in nets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{net}")?;
                }
                Ok(())
            }
        }
    }
}

/// What the desired state of this node depends on besides cluster objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's name: endpoints whose `nodeName` equals it are local.
    pub node_name: String,
    pub node_port_addresses: NodePortAddresses,
}

impl NodeConfig {
    /// The node addresses that serve `NodePorts`, from the node's interfaces.
    #[must_use]
    pub fn node_addrs(&self, addrs: &[InterfaceAddr]) -> Vec<Ipv4Addr> {
        self.node_port_addresses.select(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let cases: &[(&str, Option<(&str, u8)>)] = &[
            ("10.0.0.0/8", Some(("10.0.0.0", 8))),
            ("10.1.2.3/8", Some(("10.0.0.0", 8))),
            ("192.168.1.7/32", Some(("192.168.1.7", 32))),
            ("0.0.0.0/0", Some(("0.0.0.0", 0))),
            ("10.0.0.0/33", None),
            ("10.0.0.0/", None),
            ("10.0.0.0/+8", None),
            ("10.0.0.0", None),
            ("10.0.0/8", None),
            ("fd00::/8", None),
            ("10.0.0.0/999", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<Ipv4Net>();
            match want {
                Some((net, len)) => {
                    let got = got.unwrap_or_else(|e| panic!("{input}: {e}"));
                    assert_eq!(
                        (got.network(), got.prefix_len()),
                        (ip(net), *len),
                        "{input}"
                    );
                }
                None => assert!(got.is_err(), "{input} parsed as {got:?}"),
            }
        }

        let net: Ipv4Net = "192.168.1.0/24".parse().unwrap();
        assert!(net.contains(ip("192.168.1.0")));
        assert!(net.contains(ip("192.168.1.255")));
        assert!(!net.contains(ip("192.168.2.1")));
        let any: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains(ip("203.0.113.9")));
        let host: Ipv4Net = "10.0.0.1/32".parse().unwrap();
        assert!(host.contains(ip("10.0.0.1")));
        assert!(!host.contains(ip("10.0.0.2")));
        assert_eq!(net.to_string(), "192.168.1.0/24");
    }

    #[test]
    fn nodeport_addresses_parse() {
        assert_eq!("primary".parse(), Ok(NodePortAddresses::Primary));
        assert_eq!(
            "10.0.0.0/8, 192.168.1.0/24".parse(),
            Ok(NodePortAddresses::Cidrs(vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.168.1.0/24".parse().unwrap(),
            ]))
        );
        for bad in ["", "10.0.0.0/8,", "all-of-them", "10.0.0.0/8,,10.1.0.0/16"] {
            assert!(bad.parse::<NodePortAddresses>().is_err(), "{bad:?}");
        }
        let v: NodePortAddresses = "10.0.0.0/8,192.168.1.0/24".parse().unwrap();
        assert_eq!(v.to_string(), "10.0.0.0/8,192.168.1.0/24");
    }

    #[test]
    fn select_addresses() {
        let addrs = [
            InterfaceAddr {
                addr: ip("127.0.0.1"),
                primary: false,
            },
            InterfaceAddr {
                addr: ip("192.168.1.10"),
                primary: true,
            },
            InterfaceAddr {
                addr: ip("192.168.1.11"),
                primary: false,
            },
            InterfaceAddr {
                addr: ip("10.244.1.1"),
                primary: false,
            },
            InterfaceAddr {
                addr: ip("10.244.1.1"),
                primary: false,
            },
            InterfaceAddr {
                addr: ip("0.0.0.0"),
                primary: false,
            },
        ];
        let cases: &[(NodePortAddresses, &[&str])] = &[
            (
                NodePortAddresses::All,
                &["10.244.1.1", "192.168.1.10", "192.168.1.11"],
            ),
            (NodePortAddresses::Primary, &["192.168.1.10"]),
            (
                "192.168.1.0/24".parse().unwrap(),
                &["192.168.1.10", "192.168.1.11"],
            ),
            (
                "10.0.0.0/8,192.168.1.11/32".parse().unwrap(),
                &["10.244.1.1", "192.168.1.11"],
            ),
            (
                "0.0.0.0/0".parse().unwrap(),
                &["10.244.1.1", "127.0.0.1", "192.168.1.10", "192.168.1.11"],
            ),
            ("172.16.0.0/12".parse().unwrap(), &[]),
        ];
        for (sel, want) in cases {
            let want: Vec<Ipv4Addr> = want.iter().map(|s| ip(s)).collect();
            assert_eq!(sel.select(&addrs), want, "{sel}");
        }
        let cfg = NodeConfig {
            node_name: "node-a".into(),
            node_port_addresses: NodePortAddresses::Primary,
        };
        assert_eq!(cfg.node_addrs(&addrs), vec![ip("192.168.1.10")]);
    }
}
