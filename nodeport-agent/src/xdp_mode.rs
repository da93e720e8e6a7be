//! How the XDP program attaches to a device (`--xdp-mode`), chosen by
//! whether native transmit delivers, not by whether native attach works.
//!
//! The datapath sends frames back out of the device they arrived on
//! (`XDP_TX`, or a redirect to itself). In native mode that only works
//! where the driver transmits XDP frames; a veth does so only while its
//! peer has GRO or an XDP program, and otherwise drops them silently (the
//! host side of a kind node, a container's veth: the kernel's defaults).
//! The kernel says which devices take XDP frames in their XDP features
//! (`NETDEV_XDP_ACT_NDO_XMIT`, kernel 6.3+, following the veth peer's
//! state). `auto` attaches natively only where they say so, and in generic
//! mode (frames stay skbs and go through the normal transmit path)
//! everywhere else, saying why. The run loop asks again while it runs, and
//! moves a device whose native transmits keep failing to generic.

use std::io;

use crate::loader::XdpAttachMode;
use crate::netlink::xdp_act;

/// The mode a device is attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
}

impl Mode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// A mode and why it was chosen (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub mode: Mode,
    pub reason: String,
}

/// Chooses the mode for a device with driver `driver`, whose XDP features
/// the kernel reported as `features`.
#[must_use]
pub fn choose(requested: XdpAttachMode, driver: &str, features: &io::Result<u64>) -> Choice {
    match requested {
        XdpAttachMode::Native => Choice {
            mode: Mode::Native,
            reason: "--xdp-mode native".into(),
        },
        XdpAttachMode::Generic => Choice {
            mode: Mode::Generic,
            reason: "--xdp-mode generic".into(),
        },
        XdpAttachMode::Auto => auto(driver, features),
    }
}

fn auto(driver: &str, features: &io::Result<u64>) -> Choice {
    let needed = xdp_act::BASIC | xdp_act::NDO_XMIT;
    match features {
        Ok(f) if f & needed == needed => Choice {
            mode: Mode::Native,
            reason: "the device transmits XDP frames (xdp-features: basic, ndo-xmit)".into(),
        },
        Ok(f) if f & xdp_act::BASIC == 0 => Choice {
            mode: Mode::Generic,
            reason: "the driver has no native XDP (xdp-features lacks basic)".into(),
        },
        Ok(_) if driver == "veth" => Choice {
            mode: Mode::Generic,
            reason: "native XDP_TX would be dropped: the veth's peer has neither GRO nor an XDP program (xdp-features lacks ndo-xmit); `ethtool -K <peer> gro on` on the peer makes native mode deliver".into(),
        },
        Ok(_) => Choice {
            mode: Mode::Generic,
            reason: "native XDP_TX would not be delivered (xdp-features lacks ndo-xmit)".into(),
        },
        Err(e) if driver == "veth" => Choice {
            mode: Mode::Generic,
            reason: format!(
                "cannot tell whether the veth's peer takes XDP frames (xdp-features unavailable: {e})"
            ),
        },
        Err(e) => Choice {
            mode: Mode::Native,
            reason: format!("xdp-features unavailable ({e}); trying native"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(
        clippy::needless_pass_by_value,
        reason = "the table reads better with values"
    )]
    fn auto_with(driver: &str, features: io::Result<u64>) -> Mode {
        choose(XdpAttachMode::Auto, driver, &features).mode
    }

    #[test]
    fn auto_is_native_only_where_the_device_transmits_xdp_frames() {
        let all = xdp_act::BASIC | xdp_act::REDIRECT | xdp_act::NDO_XMIT;
        // A veth whose peer has GRO: the kernel reports ndo-xmit.
        assert_eq!(auto_with("veth", Ok(all)), Mode::Native);
        // The kernel default: no ndo-xmit on a veth (0x23 on 6.18).
        assert_eq!(auto_with("veth", Ok(0x23)), Mode::Generic);
        assert_eq!(auto_with("mlx5_core", Ok(all)), Mode::Native);
        assert_eq!(auto_with("tun", Ok(0)), Mode::Generic);
        assert_eq!(auto_with("e1000", Ok(xdp_act::BASIC)), Mode::Generic);
        let unknown = || Err(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(auto_with("veth", unknown()), Mode::Generic);
        assert_eq!(auto_with("ixgbe", unknown()), Mode::Native);
    }

    #[test]
    fn explicit_modes_are_kept() {
        let none = Ok(0);
        assert_eq!(
            choose(XdpAttachMode::Native, "veth", &none).mode,
            Mode::Native
        );
        assert_eq!(
            choose(XdpAttachMode::Generic, "ixgbe", &Ok(7)).mode,
            Mode::Generic
        );
    }

    #[test]
    fn the_reason_names_the_fix_for_a_veth() {
        let c = choose(XdpAttachMode::Auto, "veth", &Ok(0x23));
        assert!(c.reason.contains("gro on"), "{}", c.reason);
    }
}
