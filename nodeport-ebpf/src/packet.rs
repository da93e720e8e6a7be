//! Bounds-checked packet access. Every read or write of packet bytes goes
//! through [`Packet::ptr_at`]; after any helper that may move packet data
//! (`bpf_xdp_adjust_*`, skb checksum/store helpers) a new [`Packet`] must be
//! taken from the context, since old pointers are invalid.

use core::mem::size_of;

use crate::error::Error;

/// The packet's data window `[start, end)`.
#[derive(Clone, Copy)]
pub struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// A pointer to a `T` at `offset`, if the whole `T` lies in the packet.
    #[inline(always)]
    pub fn ptr_at<T>(&self, offset: usize) -> Result<*mut T, Error> {
        if self.start + offset + size_of::<T>() > self.end {
            return Err(Error::Truncated);
        }
        Ok((self.start + offset) as *mut T)
    }

    /// Reads a `T` at `offset` (unaligned).
    #[inline(always)]
    pub fn read<T: Copy>(&self, offset: usize) -> Result<T, Error> {
        let p = self.ptr_at::<T>(offset)?;
        // SAFETY: `ptr_at` checked that the bytes lie inside the packet.
        Ok(unsafe { p.read_unaligned() })
    }

    /// Writes a `T` at `offset` (unaligned).
    #[inline(always)]
    pub fn write<T: Copy>(&self, offset: usize, value: T) -> Result<(), Error> {
        let p = self.ptr_at::<T>(offset)?;
        // SAFETY: `ptr_at` checked that the bytes lie inside the packet.
        unsafe { p.write_unaligned(value) };
        Ok(())
    }
}
