//! NBD wire format (newstyle, fixed handshake): constants, the option and request
//! headers as views over bytes with one length check, and reply encoders.

/// `NBDMAGIC`.
pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`.
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(crate) const FLAG_NO_ZEROES: u16 = 2;
pub(crate) const CLIENT_NO_ZEROES: u32 = 2;

pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const OPT_ABORT: u32 = 2;
pub(crate) const OPT_LIST: u32 = 3;
pub(crate) const OPT_INFO: u32 = 6;
pub(crate) const OPT_GO: u32 = 7;

pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_SERVER: u32 = 2;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
pub(crate) const REP_ERR_INVALID: u32 = (1 << 31) | 3;
pub(crate) const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;

pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;

pub(crate) const TFLAG_HAS_FLAGS: u16 = 1;
pub(crate) const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub(crate) const TFLAG_SEND_FUA: u16 = 1 << 3;
pub(crate) const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub(crate) const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
pub(crate) const CMD_WRITE_ZEROES: u16 = 6;

pub(crate) const EPERM: u32 = 1;
pub(crate) const EIO: u32 = 5;
pub(crate) const ENOMEM: u32 = 12;
pub(crate) const EINVAL: u32 = 22;
pub(crate) const ENOSPC: u32 = 28;
pub(crate) const ENOTSUP: u32 = 95;
pub(crate) const ESHUTDOWN: u32 = 108;

/// The largest read or write payload we accept (the NBD spec's customary 32 MiB).
pub(crate) const MAX_PAYLOAD: u32 = 32 << 20;

/// A transmission-phase request header (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) flags: u16,
    pub(crate) kind: u16,
    pub(crate) cookie: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// Why a request header cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The header does not start with the request magic: the stream is out of step.
    #[error("bad request magic {0:#x}: the client is not speaking NBD transmission; the connection is closed")]
    BadMagic(u32),
    /// A write's payload is larger than the server accepts.
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit; split the request")]
    TooLarge(u32),
}

impl Request {
    pub(crate) const LEN: usize = 28;

    /// Parses a header; the caller has exactly [`Request::LEN`] bytes.
    pub(crate) fn parse(b: &[u8; 28]) -> Result<Request, RequestError> {
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != REQUEST_MAGIC {
            return Err(RequestError::BadMagic(magic));
        }
        let req = Request {
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            cookie: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            len: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
        };
        if req.kind == CMD_WRITE && req.len > MAX_PAYLOAD {
            return Err(RequestError::TooLarge(req.len));
        }
        Ok(req)
    }

    #[cfg(test)]
    pub(crate) fn emit(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// A simple reply header (16 bytes) into `out`.
pub(crate) fn simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// An option reply.
pub(crate) fn option_reply(out: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// The export name of an `NBD_OPT_INFO`/`NBD_OPT_GO` payload, or `None` if malformed.
pub(crate) fn info_name(data: &[u8]) -> Option<&str> {
    let n = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4 + n)?;
    let rest = data.get(4 + n..)?;
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    if rest.len() != 2 + 2 * count {
        return None;
    }
    std::str::from_utf8(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn requests_round_trip(flags: u16, kind in 0u16..8, cookie: u64, offset: u64, len in 0u32..MAX_PAYLOAD) {
            let r = Request { flags, kind, cookie, offset, len };
            prop_assert_eq!(Request::parse(&r.emit()), Ok(r));
        }

        #[test]
        fn any_header_parses_or_is_refused(b in prop::array::uniform28(any::<u8>())) {
            let _ = Request::parse(&b);
        }

        #[test]
        fn info_payloads_never_panic(b in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = info_name(&b);
        }
    }

    #[test]
    fn oversized_writes_are_refused() {
        let r = Request {
            flags: 0,
            kind: CMD_WRITE,
            cookie: 1,
            offset: 0,
            len: MAX_PAYLOAD + 1,
        };
        assert_eq!(
            Request::parse(&r.emit()),
            Err(RequestError::TooLarge(MAX_PAYLOAD + 1))
        );
        let mut b = r.emit();
        b[0] = 0;
        assert!(matches!(Request::parse(&b), Err(RequestError::BadMagic(_))));
    }
}
