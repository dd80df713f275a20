//! The newstyle handshake: option haggling up to the export a client chooses.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use super::super::wire::*;
use super::{bump, NbdServer, TFLAGS};
use crate::cache::VolumeId;

impl NbdServer {
    fn find_export(&self, name: &str) -> Option<VolumeId> {
        if name.is_empty() {
            // The default export: the first volume by name.
            let first = self.cache.volumes().into_iter().next()?;
            return self.cache.volume(&first.name).ok();
        }
        self.cache.volume(name).ok()
    }

    /// The newstyle handshake up to the chosen export (`None`: the client aborted).
    pub(super) async fn handshake(
        &self,
        rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> io::Result<Option<VolumeId>> {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        wr.write_all(&hello).await?;
        let client_flags = rd.read_u32().await?;
        let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
        let volume = loop {
            let magic = rd.read_u64().await?;
            let option = rd.read_u32().await?;
            let len = rd.read_u32().await?;
            if magic != IHAVEOPT || len > 64 << 10 {
                bump(
                    &self.stats.protocol_errors,
                    "cache_nbd_protocol_errors_total",
                );
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed option",
                ));
            }
            let mut data = vec![0u8; len as usize];
            rd.read_exact(&mut data).await?;
            let mut out = Vec::new();
            match option {
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data).into_owned();
                    let Some(v) = self.find_export(&name) else {
                        bump(
                            &self.stats.unknown_exports,
                            "cache_nbd_unknown_exports_total",
                        );
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("unknown export {name:?}"),
                        ));
                    };
                    out.extend_from_slice(&self.cache.volume_size(v).to_be_bytes());
                    out.extend_from_slice(&TFLAGS.to_be_bytes());
                    if !no_zeroes {
                        out.extend_from_slice(&[0u8; 124]);
                    }
                    wr.write_all(&out).await?;
                    break v;
                }
                OPT_ABORT => {
                    option_reply(&mut out, option, REP_ACK, &[]);
                    wr.write_all(&out).await?;
                    return Ok(None);
                }
                OPT_LIST => {
                    for v in self.cache.volumes() {
                        let mut d = (v.name.len() as u32).to_be_bytes().to_vec();
                        d.extend_from_slice(v.name.as_bytes());
                        option_reply(&mut out, option, REP_SERVER, &d);
                    }
                    option_reply(&mut out, option, REP_ACK, &[]);
                }
                OPT_INFO | OPT_GO => match info_name(&data) {
                    None => {
                        bump(
                            &self.stats.protocol_errors,
                            "cache_nbd_protocol_errors_total",
                        );
                        option_reply(
                            &mut out,
                            option,
                            REP_ERR_INVALID,
                            b"malformed NBD_OPT_INFO/GO payload",
                        );
                    }
                    Some(name) => match self.find_export(name) {
                        None => {
                            bump(
                                &self.stats.unknown_exports,
                                "cache_nbd_unknown_exports_total",
                            );
                            let msg =
                                format!("unknown export {name:?}; NBD_OPT_LIST shows the exports");
                            option_reply(&mut out, option, REP_ERR_UNKNOWN, msg.as_bytes());
                        }
                        Some(v) => {
                            let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                            d.extend_from_slice(&self.cache.volume_size(v).to_be_bytes());
                            d.extend_from_slice(&TFLAGS.to_be_bytes());
                            option_reply(&mut out, option, REP_INFO, &d);
                            let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                            d.extend_from_slice(&1u32.to_be_bytes());
                            d.extend_from_slice(&self.cache.block_size().to_be_bytes());
                            d.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
                            option_reply(&mut out, option, REP_INFO, &d);
                            option_reply(&mut out, option, REP_ACK, &[]);
                            if option == OPT_GO {
                                wr.write_all(&out).await?;
                                break v;
                            }
                        }
                    },
                },
                _ => {
                    option_reply(&mut out, option, REP_ERR_UNSUP, b"option not supported");
                }
            }
            wr.write_all(&out).await?;
        };
        Ok(Some(volume))
    }
}
