//! Guest-like writes into a running VM's disk without a guest OS, through HMP `qemu-io`: on the
//! disk's virtio device (`qemu-io -d`, the guest's own path, above any filter a block job puts
//! on the disk) when the VM has one, else on the disk's format node. Offsets and lengths are
//! bytes.
//!
//! Error reporting of HMP `qemu-io` on QEMU 7.2 is partial: an unknown node comes back as reply
//! text (turned into [`ErrorKind::Hmp`]), but I/O errors and unknown qemu-io commands are printed
//! on QEMU's *stdout* (`qemu.log`) and the reply is empty. [`GuestIo`] therefore checks
//! alignment and bounds against the node's virtual size before every request.

use crate::error::{Error, ErrorKind, Result};
use crate::qmp::Qmp;

/// Writer for one block node of a running VM.
#[derive(Debug, Clone)]
pub struct GuestIo<'a> {
    qmp: &'a Qmp,
    node: &'a str,
    /// `-d <QOM path of the device's block backend>` when the disk has Ferry's virtio device.
    device: Option<String>,
    size: u64,
}

impl<'a> GuestIo<'a> {
    /// Writer for `node` (the disk target, e.g. `vda`); looks up its virtual size.
    pub async fn open(qmp: &'a Qmp, node: &'a str) -> Result<GuestIo<'a>> {
        let nodes = qmp.query_named_block_nodes().await?;
        let n = nodes
            .iter()
            .find(|n| n.node_name == node)
            .ok_or_else(|| Error::new(ErrorKind::Hmp, format!("Block node {node} does not exist")))?;
        let size = n
            .raw
            .pointer("/image/virtual-size")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("Block node {node} reports no virtual size")))?;
        let path = format!("/machine/peripheral/{node}-dev/virtio-backend");
        let device = qmp.execute("qom-list", serde_json::json!({"path": path})).await.ok().map(|_| path);
        Ok(GuestIo { qmp, node, device, size })
    }

    async fn run(&self, cmd: &str) -> Result<()> {
        match &self.device {
            Some(path) => self.qmp.qemu_io_device(path, cmd).await,
            None => self.qmp.qemu_io(self.node, cmd).await,
        }
    }

    /// Virtual size of the node in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn aligned(&self, offset: u64, len: u64) -> Result<()> {
        if offset % 512 != 0 || len % 512 != 0 || len == 0 {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                format!("qemu-io range {offset}+{len} must be non-empty and 512-byte aligned"),
            ));
        }
        if offset.checked_add(len).map_or(true, |end| end > self.size) {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                format!("qemu-io range {offset}+{len} exceeds node {} of {} bytes", self.node, self.size),
            ));
        }
        Ok(())
    }

    /// Fill `[offset, offset+len)` with byte `pattern`.
    pub async fn write_pattern(&self, offset: u64, len: u64, pattern: u8) -> Result<()> {
        self.aligned(offset, len)?;
        self.run(&format!("write -q -P 0x{pattern:02x} {offset} {len}")).await
    }

    /// Write zeroes (`write -z`: becomes zero clusters in qcow2).
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.aligned(offset, len)?;
        self.run(&format!("write -q -z {offset} {len}")).await
    }

    /// Discard (the node has `discard=unmap`).
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.aligned(offset, len)?;
        self.run(&format!("discard -q {offset} {len}")).await
    }

    /// Flush the node.
    pub async fn flush(&self) -> Result<()> {
        self.run("flush").await
    }
}
