//! Choosing a backend for a new flow: a hash of the flow's 5-tuple picks one
//! of the frontend's slots, so every packet of a flow (and a retransmitted
//! SYN) lands on the same backend even before conntrack has it.

use nodeport_common::{Backend, FlowKey, Frontend, flow_hash};

use crate::{error::Error, maps};

/// Picks the backend of a new flow from the frontend's slots.
#[inline(always)]
pub fn pick(fe: &Frontend, flow: &FlowKey) -> Result<(u32, Backend), Error> {
    let count = fe.backend_count;
    if count == 0 {
        return Err(Error::BackendMissing);
    }
    let slot = flow_hash(flow) % count;
    let backend_id = maps::slot(fe.service_id, slot).ok_or(Error::BackendMissing)?;
    let backend = maps::backend(backend_id).ok_or(Error::BackendMissing)?;
    Ok((backend_id, backend))
}
