//! The devices the datapath is attached to, kept right while the agent
//! runs: each gets XDP in the mode `xdp_mode` chooses, TC egress and TC
//! ingress, and its entry in the `devices` map (transmit method, XDP mode,
//! MAC). Every second the agent
//!
//! - asks the kernel again whether native transmit would deliver (a veth
//!   peer's GRO may have been turned on or off) and, in `auto` mode,
//!   re-attaches the device when the answer changed;
//! - reads the device's transmit counters (`device_tx`, from the kernel's
//!   XDP tracepoints): a device whose frames keep failing to go out is
//!   moved to generic XDP in `auto` mode, and otherwise reported failing
//!   (`/healthz` 503, a log line naming the device and the fix).

use std::net::Ipv4Addr;

use nodeport_common::{DEVICE_F_REDIRECT_TX, DEVICE_F_SKB_MODE, Device, DeviceKey, DeviceTx};
use tracing::{error, info, warn};

use crate::devices;
use crate::loader::{Datapath, LoadError, XdpAttachMode};
use crate::maps::MapError;
use crate::maps::bpf::BpfMaps;
use crate::netlink;
use crate::xdp_mode::{self, Mode};

/// Seconds in a row with transmit failures before a device counts as
/// failing.
const FAILING_AFTER: u32 = 3;

/// One device the datapath is attached to.
#[derive(Debug)]
pub struct AttachedDevice {
    pub iface: String,
    pub ifindex: u32,
    pub driver: String,
    pub mode: Mode,
    /// Native transmits failed on this device: `auto` keeps it generic.
    native_failed: bool,
    last_tx: DeviceTx,
    /// Consecutive checks with new transmit failures.
    failing_for: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("device {iface}: {source}")]
    Device {
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

/// The devices and how they were asked to be attached (`--xdp-mode`).
#[derive(Debug)]
pub struct AttachedDevices {
    requested: XdpAttachMode,
    devices: Vec<AttachedDevice>,
}

impl AttachedDevices {
    /// Attaches the datapath to every device of `ifaces`.
    pub fn attach(
        datapath: &mut Datapath,
        maps: &mut BpfMaps,
        ifaces: &[String],
        requested: XdpAttachMode,
    ) -> Result<Self, AttachError> {
        let mut devices = Vec::with_capacity(ifaces.len());
        for iface in ifaces {
            let dev_err = |source| AttachError::Device {
                iface: iface.clone(),
                source,
            };
            let ifindex = devices::ifindex(iface).map_err(dev_err)?;
            let driver = devices::driver(iface).unwrap_or_default();
            let choice = xdp_mode::choose(requested, &driver, &netlink::xdp_features(ifindex));
            let fallback = requested == XdpAttachMode::Auto;
            let mode = datapath.attach_xdp(iface, choice.mode, fallback)?;
            datapath.attach_tc_egress(iface)?;
            datapath.attach_tc_ingress(iface)?;
            info!(
                iface,
                ifindex,
                driver,
                xdp_mode = mode.as_str(),
                why = choice.reason,
                "attached XDP ingress, TC egress and TC ingress"
            );
            let dev = AttachedDevice {
                iface: iface.clone(),
                ifindex,
                driver,
                mode,
                native_failed: false,
                last_tx: DeviceTx::default(),
                failing_for: 0,
            };
            describe(maps, &dev)?;
            maps.init_device_tx(DeviceKey { ifindex })?;
            devices.push(dev);
        }
        let mut all = Self { requested, devices };
        all.read_tx(maps);
        Ok(all)
    }

    #[must_use]
    pub fn devices(&self) -> &[AttachedDevice] {
        &self.devices
    }

    /// Takes the devices' transmit counters as the new baseline.
    fn read_tx(&mut self, maps: &BpfMaps) {
        if let Ok(tx) = maps.device_tx() {
            for dev in &mut self.devices {
                if let Some((_, t)) = tx.iter().find(|(k, _)| k.ifindex == dev.ifindex) {
                    dev.last_tx = *t;
                }
            }
        }
    }

    /// One check (every second): re-chooses modes in `auto` mode and
    /// follows transmit failures. Returns the devices now failing.
    pub fn check(&mut self, datapath: &mut Datapath, maps: &mut BpfMaps) -> Vec<String> {
        let tx = maps.device_tx().unwrap_or_default();
        let mut failing = Vec::new();
        for dev in &mut self.devices {
            let now = tx
                .iter()
                .find(|(k, _)| k.ifindex == dev.ifindex)
                .map_or(dev.last_tx, |(_, t)| *t);
            let new_failures = now.failed.saturating_sub(dev.last_tx.failed);
            let new_sent = now.sent.saturating_sub(dev.last_tx.sent);
            dev.last_tx = now;
            dev.failing_for = if new_failures > 0 {
                dev.failing_for + 1
            } else {
                0
            };
            if self.requested == XdpAttachMode::Auto {
                let choice = xdp_mode::choose(
                    self.requested,
                    &dev.driver,
                    &netlink::xdp_features(dev.ifindex),
                );
                let mut wanted = choice.mode;
                if dev.mode == Mode::Native && dev.failing_for >= FAILING_AFTER {
                    warn!(
                        iface = dev.iface,
                        failed = new_failures,
                        sent = new_sent,
                        "native XDP transmits keep failing on this device; moving it to generic XDP"
                    );
                    dev.native_failed = true;
                }
                if dev.native_failed {
                    wanted = Mode::Generic;
                }
                if wanted != dev.mode {
                    info!(
                        iface = dev.iface,
                        from = dev.mode.as_str(),
                        to = wanted.as_str(),
                        why = choice.reason,
                        "re-attaching XDP"
                    );
                    match datapath.attach_xdp(&dev.iface, wanted, true) {
                        Ok(mode) => {
                            dev.mode = mode;
                            dev.failing_for = 0;
                            if let Err(e) = describe(maps, dev) {
                                error!(iface = dev.iface, error = %e, "describing the device to the datapath failed");
                            }
                        }
                        Err(e) => error!(iface = dev.iface, error = %e, "re-attaching XDP failed"),
                    }
                    continue;
                }
            }
            if dev.failing_for >= FAILING_AFTER {
                if dev.failing_for == FAILING_AFTER {
                    error!(
                        iface = dev.iface,
                        xdp_mode = dev.mode.as_str(),
                        failed = new_failures,
                        sent = new_sent,
                        "frames the datapath sends out of this device keep failing (remote backends and rejects do not work): for a veth, turn GRO on on its peer (`ethtool -K <peer> gro on`) or run with --xdp-mode generic or auto"
                    );
                }
                failing.push(dev.iface.clone());
            }
        }
        failing
    }
}

/// Writes the device's entry in the `devices` map.
fn describe(maps: &mut BpfMaps, dev: &AttachedDevice) -> Result<(), AttachError> {
    let mut flags = 0;
    if dev.driver == "veth" {
        flags |= DEVICE_F_REDIRECT_TX;
    }
    if dev.mode == Mode::Generic {
        flags |= DEVICE_F_SKB_MODE;
    }
    let mac = devices::mac(&dev.iface).map_err(|source| AttachError::Device {
        iface: dev.iface.clone(),
        source,
    })?;
    // The first IPv4 address of the device: the SNAT source of flows to
    // external frontends (externalIPs, LoadBalancer IPs).
    let addr = crate::node_addrs::local_ipv4()
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.iface == dev.iface)
        .map_or(Ipv4Addr::UNSPECIFIED, |a| a.addr);
    maps.put_device(
        DeviceKey {
            ifindex: dev.ifindex,
        },
        Device {
            flags,
            mac,
            pad: 0,
            addr_be: nodeport_common::addr::to_be(addr),
        },
    )?;
    Ok(())
}
